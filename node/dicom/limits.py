"""What the storage SCP refuses for its size, before pydicom reads it: decompression bombs,
Pixel Data that lies about its length, studies with more instances than a study can have.

Each check reads only headers (the dataset is parsed with large values deferred) or inflates
with a bounded output; nothing is decoded. A refusal carries a DICOM status and a short
ErrorComment for the peer's log; the SCP audits it as ``instance.refused``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from sqlalchemy import func, select

from models.errors import PreprocessingError
from models.pixel_limits import PixelLimitError, check_decodable, inflated_size_at_most
from storage.database import Database
from storage.schema import Instance, Study

# 0xCxxx "cannot understand", low bytes apart from the receiver's own checks (0xC001-...).
TOO_LARGE_DECODED = 0xC010
TOO_LARGE_INFLATED = 0xC011
PIXEL_DATA_TRUNCATED = 0xC012
# 0xA7xx "out of resources": the node could store it, but will not hold more of this study.
STUDY_INSTANCE_CAP = 0xA710
_STATUS_OF_KIND = {
    "decoded": TOO_LARGE_DECODED,
    "inflated": TOO_LARGE_INFLATED,
    "truncated": PIXEL_DATA_TRUNCATED,
}
_COMMENT_OF_STATUS = {
    TOO_LARGE_DECODED: "image too large to decode (max_decoded_mb)",
    TOO_LARGE_INFLATED: "deflated dataset inflates past max_decoded_mb",
    PIXEL_DATA_TRUNCATED: "Pixel Data shorter than its header declares",
    STUDY_INSTANCE_CAP: "study has max_study_instances already",
}
# Values larger than this are not read while checking: only their lengths matter here.
_DEFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class LimitRefusal:
    """Why an instance is refused: its status, the audit's reason and the peer's comment."""

    status: int
    reason: str

    @property
    def comment(self) -> str:
        """ErrorComment (LO, at most 64 characters): which limit, not the figures."""
        return _COMMENT_OF_STATUS[self.status][:64]

    def status_dataset(self) -> Dataset:
        """The C-STORE response status with its ErrorComment (PS3.7 C.4.2.1.4)."""
        status = Dataset()
        status.Status = self.status
        status.ErrorComment = self.comment
        return status


class IngestLimits:
    """The size limits of one storage SCP.

    Parameters
    ----------
    max_decoded_bytes:
        The most an instance's pixel data may decode to, and a deflated dataset inflate to.
    max_study_instances:
        The most instances one study may hold.
    """

    def __init__(self, max_decoded_bytes: int, max_study_instances: int) -> None:
        self.max_decoded_bytes = max_decoded_bytes
        self.max_study_instances = max_study_instances

    def check_dataset(self, stream: bytes, transfer_syntax: str) -> LimitRefusal | None:
        """Check an encoded dataset (without File Meta) as received, before it is parsed.

        A deflated one is inflated with a bounded output first: a bomb stops at the limit.
        Then its headers are read with every large value left unread.
        """
        syntax = UID(str(transfer_syntax))
        try:
            if syntax == DeflatedExplicitVRLittleEndian:
                inflated_size_at_most(stream, self.max_decoded_bytes)
                stream = _inflate(stream)
            ds = read_dataset(
                BytesIO(stream),
                is_implicit_VR=syntax.is_implicit_VR,
                is_little_endian=syntax.is_little_endian,
                defer_size=_DEFER_BYTES,
            )
            check_decodable(ds, self.max_decoded_bytes, syntax)
            _check_present(ds, len(stream))
        except PixelLimitError as exc:
            return LimitRefusal(_STATUS_OF_KIND[exc.kind], str(exc))
        except PreprocessingError:
            return None  # not a size problem: parsing it reports what is wrong
        return None

    def check_study(self, db: Database, study_uid: str, sop_uid: str) -> LimitRefusal | None:
        """Refuse a new instance of a study that already holds ``max_study_instances`` (an
        instance it holds already is a duplicate, and is answered as one)."""
        with db.reading() as session:
            known = session.scalar(select(Instance.id).where(Instance.sop_uid == sop_uid))
            if known is not None:
                return None
            held = session.scalar(
                select(func.count(Instance.id)).join(Study).where(Study.study_uid == study_uid)
            )
        if held < self.max_study_instances:
            return None
        return LimitRefusal(
            STUDY_INSTANCE_CAP,
            f"study already holds {held} instances, the most one study may "
            f"(max_study_instances {self.max_study_instances})",
        )


def _check_present(ds: Dataset, stream_length: int) -> None:
    """A deferred Pixel Data element must end within the stream: its length field may not
    declare bytes that never came."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword not in ds:
            continue
        element = ds.get_item(keyword, keep_deferred=True)
        tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
        if tell is None or length is None or length == 0xFFFFFFFF:
            continue
        if tell + length > stream_length:
            raise PixelLimitError(
                "truncated",
                f"{keyword} declares {length} bytes, {max(stream_length - tell, 0)} present",
            )


def _inflate(stream: bytes) -> bytes:
    """A deflated dataset (raw deflate) inflated; call only once its size is known bounded."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    return inflater.decompress(stream) + inflater.flush()
