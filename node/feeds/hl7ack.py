"""HL7 v2 original-mode acknowledgements: AA, AE with an ERR segment, AR.

The ACK mirrors the message: same delimiters, version and processing id, sender and
receiver swapped, MSA-2 = the message's MSH-10, encoded in the character set the message
declared. ERR is written the way the message's version reads it: ERR-1 (segment^sequence^
field^code) up to v2.4, ERR-2/3/4/8 (location, code, severity, user message) from v2.5.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from node.feeds.errors import ErrorCode
from node.feeds.hl7codec import CHARSETS, EncodingChars, escape
from node.feeds.hl7header import MessageHeader

AA = "AA"  # application accept: stored (or already stored)
AE = "AE"  # application error: the content cannot be used; resending it unchanged won't help
AR = "AR"  # application reject: not an HL7 message we can read, or the node failed

DEFAULT_VERSION = "2.5.1"  # for an ACK to bytes whose MSH could not be read
_LOCATION = re.compile(r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:-(?P<field>\d+))?")


@dataclass(frozen=True)
class AckError:
    """What goes into the ERR segment."""

    code: int  # HL7 table 0357
    reason: str  # ERR-8 user message (MSA-3 before v2.5)
    location: str | None = None  # "OBR-3", "MSH-9"...
    severity: str = "E"  # HL7 table 0516: E error, W warning, I information


def build_ack(
    header: MessageHeader | None,
    ack_code: str,
    error: AckError | None = None,
    *,
    application: str = "CXRNODE",
    facility: str = "",
    now: datetime | None = None,
) -> bytes:
    """Build the ACK for a message (or for bytes without a readable MSH).

    Parameters
    ----------
    header:
        The message's MSH as far as it could be read; None for garbage.
    ack_code:
        ``AA``, ``AE`` or ``AR`` (MSA-1).
    error:
        For AE/AR, the ERR segment's content.
    application, facility:
        The node's own name, used in MSH-3/4 when the message did not name its receiver.

    Returns
    -------
    bytes
        The ACK message (segments ending in CR), without MLLP framing.
    """
    enc = header.encoding if header else EncodingChars()
    version = (header.version if header else "") or DEFAULT_VERSION
    f = enc.field
    delimiters = enc.component + enc.repetition + enc.escape + enc.subcomponent
    if enc.truncation and version_at_least(version, (2, 7)):
        delimiters += enc.truncation
    trigger = header.message_type.partition("^")[2] if header else ""
    message_type = "ACK"
    if trigger:
        message_type += f"{enc.component}{trigger}"
        if version_at_least(version, (2, 3, 1)):
            message_type += f"{enc.component}ACK"
    timestamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    msh = [
        "MSH",
        delimiters,
        (header.receiving_application if header else "") or escape(application, enc),
        (header.receiving_facility if header else "") or escape(facility, enc),
        header.sending_application if header else "",
        header.sending_facility if header else "",
        timestamp,
        "",
        message_type,
        uuid.uuid4().hex[:20].upper(),  # MSH-10 is at most 20 characters before v2.7
        (header.processing_id if header else "") or "P",
        version,
    ]
    if header and header.charset:
        msh += [""] * 5 + [header.charset]  # MSH-13..17 empty, MSH-18
    msa = ["MSA", ack_code, escape(header.message_id, enc) if header else ""]
    segments = [f.join(msh)]
    if error is not None and not version_at_least(version, (2, 5)):
        msa.append(escape(error.reason, enc)[:80])  # MSA-3, the text message, until v2.4
    segments.append(f.join(msa))
    if error is not None:
        segments.append(_err(error, enc, version))
    return ("\r".join(segments) + "\r").encode(_ack_codec(header), errors="replace")


def _err(error: AckError, enc: EncodingChars, version: str) -> str:
    c, s, f = enc.component, enc.subcomponent, enc.field
    text = ErrorCode.TEXT.get(error.code, "")
    match = _LOCATION.match(error.location or "")
    location = [match["segment"], "1", match["field"] or ""] if match else []
    if not version_at_least(version, (2, 5)):
        code = s.join([str(error.code), text, "HL70357"])
        return f"ERR{f}" + c.join((location or ["", "", ""]) + [code])
    return f.join(
        [
            "ERR",
            "",
            c.join(location).rstrip(c),
            c.join([str(error.code), text, "HL70357"]),
            error.severity,
            "",
            "",
            "",
            escape(error.reason, enc),
        ]
    )


def _ack_codec(header: MessageHeader | None) -> str:
    if header is None:
        return "ascii"
    # The sender reads the ACK in the character set it declared, even when its own message
    # turned out to be in another one.
    return CHARSETS.get(header.charset.upper(), header.codec) if header.charset else header.codec


def version_at_least(version: str, minimum: tuple[int, ...]) -> bool:
    """Whether an HL7 version ("2.5.1") is ``minimum`` or later; an unreadable one counts as
    current."""
    try:
        parts = tuple(int(p) for p in version.split("."))
    except ValueError:
        return True
    return parts >= minimum
