"""A corpus of malformed inputs made by mutating real files: truncation, bit flips, deleted
tags, wrong VRs, giant lengths, absurd sizes (DICOM) and their HL7 counterparts.

Deterministic for a given seed, so a failure names the same input on every run.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.uid import generate_uid


@dataclass(frozen=True)
class Mutant:
    kind: str
    source: str
    data: bytes  # a whole DICOM file (meta intact) or an HL7 message
    sop_uid: str = ""


def _with_new_uids(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.StudyInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def _encode(ds: pydicom.Dataset) -> tuple[bytes, int]:
    """The file's bytes and where the dataset after the file meta starts."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    meta_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) group length value
    return data, 144 + meta_length


def dicom_mutants(sources: list[Path], per_source: int, seed: int = 7) -> Iterator[Mutant]:
    rng = random.Random(seed)
    kinds = ["truncate", "bitflip", "delete", "wrong_vr", "giant_length", "absurd_size"]
    for path in sources:
        for n in range(per_source):
            kind = kinds[n % len(kinds)]
            ds = _with_new_uids(path)
            sop_uid = str(ds.SOPInstanceUID)  # the file meta keeps it whatever the mutation
            yield Mutant(kind, path.name, _MUTATE[kind](ds, rng), sop_uid)


def _truncate(ds, rng) -> bytes:
    data, start = _encode(ds)
    return data[: rng.randint(start + 1, len(data) - 1)]


def _bitflip(ds, rng) -> bytes:
    data, start = _encode(ds)
    buf = bytearray(data)
    # Mostly in the header, where flips change tags, VRs and lengths rather than pixels.
    end = min(len(buf), start + 4096)
    for _ in range(rng.randint(1, 40)):
        buf[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
    return bytes(buf)


_DELETABLE = [
    "StudyInstanceUID",
    "SOPInstanceUID",
    "PixelData",
    "Rows",
    "Columns",
    "BitsAllocated",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "Modality",
    "SOPClassUID",
]


def _delete(ds, rng) -> bytes:
    for keyword in rng.sample(_DELETABLE, rng.randint(1, 3)):
        if keyword in ds:
            delattr(ds, keyword)
    return _encode(ds)[0]


def _wrong_vr(ds, rng) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        ds[0x00280010] = DataElement(0x00280010, "LO", "not a number")  # Rows as text
    elif choice == 1:
        ds[0x00281050] = DataElement(0x00281050, "LO", "centre")  # WindowCenter as text
    elif choice == 2:
        ds[0x00100010] = DataElement(0x00100010, "OB", bytes(rng.randrange(256) for _ in range(33)))
    else:
        ds[0x00185101] = DataElement(0x00185101, "US", 7)  # ViewPosition as a number
    return _encode(ds)[0]


def _giant_length(ds, rng) -> bytes:
    data, start = _encode(ds)
    buf = bytearray(data)
    # Overwrite the length of the first element after the meta with an enormous value.
    explicit = ds.file_meta.TransferSyntaxUID != pydicom.uid.ImplicitVRLittleEndian
    offset = start + (6 if explicit else 4)
    size = 2 if explicit and bytes(buf[start + 4 : start + 6]).isalpha() else 4
    giant = rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0x40000000])
    buf[offset : offset + size] = giant.to_bytes(4, "little")[:size] if size == 4 else b"\xff\xff"
    return bytes(buf)


def _absurd_size(ds, rng) -> bytes:
    ds.Rows, ds.Columns = rng.choice([(65535, 65535), (0, 0), (1, 70000 % 65536)])
    ds.BitsAllocated = rng.choice([16, 64, 8])
    return _encode(ds)[0]


_MUTATE = {
    "truncate": _truncate,
    "bitflip": _bitflip,
    "delete": _delete,
    "wrong_vr": _wrong_vr,
    "giant_length": _giant_length,
    "absurd_size": _absurd_size,
}


def hl7_mutants(messages: list[bytes], count: int, seed: int = 11) -> Iterator[bytes]:
    """Truncated, bit-flipped, segment-shuffled, emptied, oversized and garbage messages."""
    rng = random.Random(seed)
    for n in range(count):
        base = messages[n % len(messages)]
        kind = n % 6
        if kind == 0:
            yield base[: rng.randint(0, len(base) - 1)]
        elif kind == 1:
            buf = bytearray(base)
            for _ in range(rng.randint(1, 20)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            yield bytes(buf.replace(b"\x1c", b"?").replace(b"\x0b", b"?"))
        elif kind == 2:
            segments = base.split(b"\r")
            rng.shuffle(segments)
            yield b"\r".join(segments)
        elif kind == 3:
            yield bytes(rng.randrange(32, 127) for _ in range(rng.randint(1, 400)))
        elif kind == 4:
            yield base.replace(b"|", b"|" + b"X" * rng.randint(1000, 70000), 3)
        else:
            yield base.replace(b"^~\\&", bytes(rng.randrange(1, 32) for _ in range(4)), 1)
