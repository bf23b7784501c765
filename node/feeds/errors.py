"""Why a feed could not take a message or a file.

The split follows what the sender must do: an ``HL7ParseError`` is garbage (the ACK is AR,
fix the interface), an ``HL7Unusable`` parsed but cannot serve the node (the ACK is AE with
an ERR segment naming the field), a ``CsvFileRejected`` sends the whole file to ``rejected/``.
"""

from __future__ import annotations

from node.errors import CxrNodeError
from node.feeds.hl7header import MessageHeader


class ErrorCode:
    """HL7 table 0357 (message error condition codes) values the feeds answer with."""

    SEGMENT_SEQUENCE = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE = 102
    TABLE_VALUE_NOT_FOUND = 103
    VALUE_TOO_LONG = 104
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_VERSION = 203
    DUPLICATE_KEY = 205
    INTERNAL_ERROR = 207

    TEXT = {
        100: "Segment sequence error",
        101: "Required field missing",
        102: "Data type error",
        103: "Table value not found",
        104: "Value too long",
        200: "Unsupported message type",
        201: "Unsupported event code",
        203: "Unsupported version id",
        205: "Duplicate key identifier",
        207: "Application internal error",
    }


class FeedError(CxrNodeError):
    """Root of the report-feed errors."""


class HL7ParseError(FeedError):
    """The bytes are not an HL7 v2 message we can read: no MSH, undecodable characters.

    Parameters
    ----------
    reason:
        What is wrong, for the sender's interface analyst.
    header:
        Whatever of MSH could be read, so the AR can still echo it; None when there is no MSH.
    code:
        HL7 table 0357 code for the ERR segment of the AR.
    quoted:
        What of the message shows it (e.g. its first characters): in ``reason`` for the AR
        and the audit log, left out of ``unquoted``, which is what the application log gets.
    """

    def __init__(
        self,
        reason: str,
        header: MessageHeader | None = None,
        code: int = ErrorCode.SEGMENT_SEQUENCE,
        quoted: str = "",
    ) -> None:
        full = f"{reason} ({quoted})" if quoted else reason
        super().__init__(full)
        self.reason = full
        self.unquoted = reason
        self.header = header
        self.code = code


class HL7Unusable(FeedError):
    """A well-formed message the node cannot use (wrong type, no key, no text...).

    Parameters
    ----------
    reason:
        What is wrong; becomes ERR-8 (user message) of the AE.
    error_location:
        Where, as ``SEG-n`` (e.g. ``"OBR-3"``, ``"MSH-9"``); becomes ERR-2.
    code:
        HL7 table 0357 code for ERR-3 (see ``ErrorCode``).
    header:
        The message's MSH, for the ACK; the parser fills it in.
    """

    def __init__(
        self,
        reason: str,
        error_location: str | None = None,
        code: int = ErrorCode.INTERNAL_ERROR,
        header: MessageHeader | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_location = error_location
        self.code = code
        self.header = header


class CsvFileRejected(FeedError):
    """A dropped CSV file that cannot be read as a report table at all.

    Parameters
    ----------
    reason:
        What is wrong, quoting nothing of the file: what the application log gets.
    quoted:
        What of the file shows it (e.g. the header read), for the audit log and the reason
        file only: a headerless file's first row is a patient's data.
    """

    def __init__(self, reason: str, quoted: str = "") -> None:
        super().__init__(f"{reason} ({quoted})" if quoted else reason)
        self.reason = reason
        self.quoted = quoted
