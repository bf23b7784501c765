"""How much memory an image would take once decoded, read from its headers before decoding.

A few kilobytes of JPEG-LS can declare a 20000 x 20000 image, a 2 MB deflated dataset can
inflate to gigabytes, and a Pixel Data element can declare far more bytes than it holds. Each
is caught here from what the file says about itself, without decoding it: the image header
(rows x columns x frames x samples x bytes per sample), the first frame's codestream header
(JPEG, JPEG-LS, JPEG 2000), the native Pixel Data length, and a deflated stream inflated with
a bounded output. Nothing here imports torch: the storage SCP checks the same limits at
C-STORE that :func:`models.preprocess.decode_pixels` checks before it decodes.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from models.errors import PreprocessingError

_INFLATE_CHUNK = 1024 * 1024
# Bytes per stored sample of Float Pixel Data and Double Float Pixel Data.
_FLOAT_BYTES = {"FloatPixelData": 4, "DoubleFloatPixelData": 8}
_UNDEFINED_LENGTH = 0xFFFFFFFF


class PixelLimitError(PreprocessingError):
    """An image exceeds a decoding limit or contradicts its own header; ``kind`` says which:
    ``"decoded"`` (too large once decoded), ``"inflated"`` (a deflated dataset too large once
    inflated) or ``"truncated"`` (Pixel Data shorter than its header declares)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def declared_decoded_bytes(ds: Dataset) -> int:
    """Bytes the pixel data of ``ds`` decodes to, by its image header: rows x columns x frames x
    samples per pixel x bytes per sample (0 when the header names no image size)."""
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    samples = max(_int(ds, "SamplesPerPixel", 1), 1)
    bits = _int(ds, "BitsAllocated", 16)
    for keyword, size in _FLOAT_BYTES.items():
        if keyword in ds:
            bits = size * 8
    return rows * columns * frames * samples * max((bits + 7) // 8, 1)


def check_decodable(ds: Dataset, max_bytes: int, transfer_syntax: str | None = None) -> None:
    """Raise :class:`PixelLimitError` unless the pixel data of ``ds`` can be decoded within
    ``max_bytes`` and holds what its header declares.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance; its Pixel Data may be a deferred (not yet read) element.
    max_bytes : int
        The most its pixels may take once decoded.
    transfer_syntax : str, optional
        The syntax its pixel data is encoded in (the File Meta's, by default).

    Raises
    ------
    PixelLimitError
        When the header or the first frame's codestream declares more than ``max_bytes``, or
        native Pixel Data is shorter than the header declares.
    """
    declared = declared_decoded_bytes(ds)
    if declared > max_bytes:
        raise PixelLimitError(
            "decoded",
            f"pixel data would decode to {_mib(declared)} "
            f"({_int(ds, 'Rows')} x {_int(ds, 'Columns')} x "
            f"{max(_int(ds, 'NumberOfFrames', 1), 1)} frames), over the {_mib(max_bytes)} limit",
        )
    keyword = next((k for k in ("PixelData", *_FLOAT_BYTES) if k in ds), None)
    if keyword is None:
        return
    element = ds.get_item(keyword, keep_deferred=True)
    length = element.length if hasattr(element, "length") else len(element.value or b"")
    if length == _UNDEFINED_LENGTH or _is_encapsulated(ds, transfer_syntax):
        _check_codestream(ds, element.value, max_bytes)
        return
    if length < _native_bytes(ds):
        raise PixelLimitError(
            "truncated",
            f"Pixel Data holds {length} bytes where the header declares {_native_bytes(ds)}",
        )


def inflated_size_at_most(stream: bytes, max_bytes: int) -> int:
    """Inflate a deflated dataset stream (raw deflate, PS3.5 A.5) without keeping its output,
    and return its inflated size.

    Raises
    ------
    PixelLimitError
        As soon as the output passes ``max_bytes``: nothing more is inflated.
    PreprocessingError
        If the stream is not valid deflate data.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending = 0, stream
    try:
        while pending:
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            if total > max_bytes:
                raise PixelLimitError(
                    "inflated",
                    f"deflated dataset of {len(stream)} bytes inflates past the "
                    f"{_mib(max_bytes)} limit",
                )
            pending = inflater.unconsumed_tail
        total += len(inflater.flush())
    except zlib.error as exc:
        raise PreprocessingError(f"deflated dataset cannot be inflated: {exc}") from exc
    if total > max_bytes:
        raise PixelLimitError("inflated", f"deflated dataset inflates past {_mib(max_bytes)}")
    return total


def check_deflated_file(path: str | Path, max_bytes: int) -> None:
    """Before a DICOM file is read: if it is deflated, check that it inflates within
    ``max_bytes`` (pydicom inflates the whole dataset in memory as it opens it).

    Raises
    ------
    PixelLimitError
        If it inflates past ``max_bytes``.
    PreprocessingError
        If its deflated part cannot be found or inflated.
    """
    try:
        meta = read_file_meta_info(path)
    except InvalidDicomError:
        return  # no File Meta: not a deflated DICOM file, read as it can be
    if UID(str(meta.get("TransferSyntaxUID", ""))) != DeflatedExplicitVRLittleEndian:
        return
    if "FileMetaInformationGroupLength" not in meta:
        raise PreprocessingError("deflated file without a File Meta group length")
    # Preamble and prefix, the group length element (12 bytes), then the rest of the meta.
    offset = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    with open(path, "rb") as fh:
        fh.seek(offset)
        inflated_size_at_most(fh.read(), max_bytes)


def check_deflated_bytes(data: bytes, max_bytes: int) -> None:
    """:func:`check_deflated_file` for a DICOM file held in memory (an upload).

    Raises
    ------
    PixelLimitError
        If it inflates past ``max_bytes``.
    PreprocessingError
        If its File Meta cannot be read, or its deflated part inflated.
    """
    if data[128:132] != b"DICM":
        return  # no File Meta: not a deflated DICOM file, read as it can be
    # The File Meta is explicit VR little endian; its first element, the group length
    # (12 bytes), says where the dataset starts.
    try:
        group = read_dataset(BytesIO(data[132:144]), is_implicit_VR=False, is_little_endian=True)
        start = 144 + int(group.FileMetaInformationGroupLength)
        meta = read_dataset(BytesIO(data[144:start]), is_implicit_VR=False, is_little_endian=True)
    except Exception as exc:  # whatever a malformed header raises means the same here
        raise PreprocessingError(f"the File Meta cannot be read: {exc}") from exc
    if UID(str(meta.get("TransferSyntaxUID", ""))) == DeflatedExplicitVRLittleEndian:
        inflated_size_at_most(data[start:], max_bytes)


def codestream_shape(fragment: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, bits per sample) that a JPEG, JPEG-LS or JPEG 2000 codestream
    declares in its frame header, or None when it names none that can be read."""
    if fragment[:2] == b"\xff\xd8":
        return _jpeg_shape(fragment)
    if fragment[:4] == b"\xff\x4f\xff\x51":
        return _j2k_shape(fragment)
    return None


def _check_codestream(ds: Dataset, value: bytes | None, max_bytes: int) -> None:
    if not value:
        return
    try:
        buffer = BytesIO(value)
        parse_basic_offsets(buffer)
        first = next(generate_fragments(buffer), b"")
    except (ValueError, StopIteration):
        return  # malformed encapsulation: the decoder reports it, nothing is allocated here
    shape = codestream_shape(first)
    if shape is None:
        return
    rows, columns, components, bits = shape
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    decoded = rows * columns * components * max((bits + 7) // 8, 1) * frames
    if decoded > max_bytes:
        raise PixelLimitError(
            "decoded",
            f"the codestream declares {rows} x {columns} x {components} "
            f"({_mib(decoded)} decoded), over the {_mib(max_bytes)} limit",
        )


def _jpeg_shape(data: bytes) -> tuple[int, int, int, int] | None:
    """The SOFn (or JPEG-LS SOF55) frame header: P, Y, X, Nf (ITU T.81 B.2.2)."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            header = data[offset + 4 : offset + 10]
            if len(header) < 6:
                return None
            bits, rows, columns, components = struct.unpack(">BHHB", header)
            return rows, columns, components, bits
        if marker == 0xDA:  # start of scan before any frame header
            return None
        offset += 2 + length
    return None


def _j2k_shape(data: bytes) -> tuple[int, int, int, int] | None:
    """The SIZ marker segment (ITU T.800 A.5.1): Xsiz, Ysiz, XOsiz, YOsiz, Csiz, Ssiz."""
    siz = data[4:]
    if len(siz) < 40:
        return None
    x, y, x0, y0 = struct.unpack(">IIII", siz[4:20])
    (components,) = struct.unpack(">H", siz[36:38])
    bits = (siz[38] & 0x7F) + 1
    return max(y - y0, 0), max(x - x0, 0), components, bits


def _native_bytes(ds: Dataset) -> int:
    """The bytes native (uncompressed) pixel data must hold by its header."""
    samples = (
        _int(ds, "Rows")
        * _int(ds, "Columns")
        * max(_int(ds, "NumberOfFrames", 1), 1)
        * max(_int(ds, "SamplesPerPixel", 1), 1)
    )
    bits = _int(ds, "BitsAllocated", 16)
    for keyword, size in _FLOAT_BYTES.items():
        if keyword in ds:
            bits = size * 8
    return (samples * bits + 7) // 8


def _is_encapsulated(ds: Dataset, transfer_syntax: str | None) -> bool:
    syntax = transfer_syntax or ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
    return bool(syntax) and UID(str(syntax)).is_encapsulated


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    """An integer header value, or ``default`` when absent, empty or malformed."""
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"
