"""The parts of a ``multipart/related`` body (RFC 2387) spooled to a file.

A STOW-RS request carries a whole study: it is written to disk as it arrives and read back
here through a memory map, one part at a time, so no request is ever held in memory whole.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_PART_HEADER_BYTES = 8 * 1024
# RFC 2046 allows 70 characters; Orthanc's DICOMweb client sends 73. Be liberal.
_BOUNDARY = re.compile(r'boundary=(?:"(?P<quoted>[^"]{1,200})"|(?P<token>[^;\s"]{1,200}))', re.I)
_TYPE = re.compile(r'(?:^|;)\s*type="?(?P<type>[^";\s]+)"?', re.I)


class MultipartError(ValueError):
    """The body is not the multipart/related it says it is."""


@dataclass(frozen=True)
class ContentType:
    """A request's ``multipart/related`` Content-Type: its boundary and its parts' type."""

    boundary: bytes
    part_type: str | None

    @classmethod
    def parse(cls, header: str) -> ContentType:
        """Raises ``MultipartError`` for another media type or one without a boundary."""
        media, _, parameters = header.partition(";")
        if media.strip().lower() != "multipart/related":
            raise MultipartError(f"Content-Type {media.strip()!r} is not multipart/related")
        boundary = _BOUNDARY.search(parameters)
        if boundary is None:
            raise MultipartError("the multipart/related Content-Type names no boundary")
        part_type = _TYPE.search(parameters)
        value = boundary["quoted"] or boundary["token"]
        return cls(
            value.encode("ascii", "replace"), part_type["type"].lower() if part_type else None
        )


@dataclass(frozen=True)
class Part:
    content_type: str | None
    body: bytes


def parts(path: Path, boundary: bytes) -> Iterator[Part]:
    """Each part of the body in ``path``, in order.

    Raises
    ------
    MultipartError
        No opening delimiter, a part without its closing delimiter, or part headers over
        ``MAX_PART_HEADER_BYTES``. Parts read before the error have been yielded.
    """
    if path.stat().st_size == 0:
        raise MultipartError("the body is empty")
    delimiter = b"--" + boundary
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as body:
        at = body.find(delimiter)
        if at < 0:
            raise MultipartError("the body holds no part delimiter")
        while True:
            at += len(delimiter)
            if body[at : at + 2] == b"--":
                return  # the close delimiter
            line_end = body.find(b"\r\n", at)
            if line_end < 0 or body[at:line_end].strip(b" \t"):  # only padding may follow
                raise MultipartError("a part delimiter is not followed by a line end")
            start = line_end + 2
            if body[start : start + 2] == b"\r\n":  # a part without headers
                headers, content = b"", start + 2
            else:
                headers_end = body.find(b"\r\n\r\n", start, start + MAX_PART_HEADER_BYTES + 4)
                if headers_end < 0:
                    raise MultipartError("a part's headers do not end (or are too long)")
                headers, content = body[start:headers_end], headers_end + 4
            end = body.find(b"\r\n" + delimiter, content)
            if end < 0:
                raise MultipartError("the last part is not closed by a delimiter")
            yield Part(_content_type(headers), body[content:end])
            at = end + 2


def _content_type(headers: bytes) -> str | None:
    for line in headers.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            return value.split(";")[0].strip().lower()
    return None
