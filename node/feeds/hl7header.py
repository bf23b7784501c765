"""What the node keeps of a message's MSH segment: enough to answer it.

A module of its own because both sides of a message's handling need it: the parser fills it
in (:mod:`node.feeds.hl7message`), the errors carry it so that even a refused message gets an
ACK that echoes its header (:mod:`node.feeds.errors`), and the ACK is built from it
(:mod:`node.feeds.hl7ack`). It depends only on the codec's delimiters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from node.feeds.hl7codec import EncodingChars


@dataclass(frozen=True)
class MessageHeader:
    """What the ACK needs from MSH; application and facility fields are kept as sent."""

    message_id: str
    message_type: str  # "ORU^R01": MSH-9 code and trigger event
    version: str
    processing_id: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    charset: str  # MSH-18 as sent
    codec: str  # the Python codec the message was decoded with
    encoding: EncodingChars
    sent_at: datetime | None = None
