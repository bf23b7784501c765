"""Reading multipart/related bodies as STOW-RS clients write them, and as they should not."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.dicomweb.multipart import MAX_PART_HEADER_BYTES, ContentType, MultipartError, parts


def _parts(tmp_path: Path, body: bytes, boundary: bytes = b"xyz") -> list[bytes]:
    path = tmp_path / "body"
    path.write_bytes(body)
    return [p.body for p in parts(path, boundary)]


def test_preamble_padding_and_delimiter_lookalikes_inside_a_part(tmp_path) -> None:
    body = (
        b"a preamble\r\n--xyz  \r\nContent-Type: application/dicom\r\n\r\n"
        b"one --xyz inside, not after a line break\r\n--xyz\r\n\r\ntwo\r\n--xyz--"
    )
    assert _parts(tmp_path, body) == [b"one --xyz inside, not after a line break", b"two"]


def test_a_longer_boundary_sharing_the_prefix_is_not_a_delimiter(tmp_path) -> None:
    body = b"--xyz\r\n\r\none\r\n--xyzzy\r\n\r\ntwo\r\n--xyz--\r\n"
    with pytest.raises(MultipartError, match="not followed by a line end"):
        _parts(tmp_path, body)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "empty"),
        (b"no delimiter at all", "no part delimiter"),
        (b"--xyz\r\n\r\nunterminated part", "not closed"),
        (b"--xyz\r\n" + b"X-Long: " + b"a" * MAX_PART_HEADER_BYTES, "headers do not end"),
    ],
)
def test_broken_bodies_are_refused_with_a_reason(tmp_path, body: bytes, error: str) -> None:
    with pytest.raises(MultipartError, match=error):
        _parts(tmp_path, body)


def test_the_boundary_is_read_quoted_or_not_and_as_long_as_orthanc_sends_it() -> None:
    orthanc = "0af12a47-3a33-41a1-b1b6-2f46d270ac64-0af12a47-3a33-41a1-b1b6-2f46d270ac64"
    parsed = ContentType.parse(f'multipart/related; type="application/dicom"; boundary={orthanc}')
    assert (parsed.boundary, parsed.part_type) == (orthanc.encode(), "application/dicom")
    assert ContentType.parse('Multipart/Related; boundary="a b"').boundary == b"a b"
    with pytest.raises(MultipartError, match="names no boundary"):
        ContentType.parse("multipart/related; type=application/dicom")
