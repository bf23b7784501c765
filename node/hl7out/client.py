"""Send one HL7 v2 message over MLLP and read the receiver's acknowledgement.

The receiver is a peer the node does not control: its answer is read with a deadline for
the whole exchange and a size bound, and only an AA (or CA) that echoes the message's
control id counts as accepted. AE and AR are failures carrying the peer's reason (ERR-8 from
v2.5, MSA-3 before), which the delivery audits; so are a closed connection, a timeout and an
answer that is not an ACK of this message.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from node.errors import CxrNodeError
from node.feeds.errors import HL7ParseError
from node.feeds.hl7codec import UndecodableMessage, decode_message
from node.feeds.hl7segments import HL7Structure
from node.feeds.mllp import CR, EB, SB

ACCEPTED = ("AA", "CA")  # application accept; commit accept (enhanced mode)
MAX_ACK_BYTES = 64 * 1024  # an ACK is a few hundred bytes; more is not an answer


class HL7SendError(CxrNodeError):
    """The message was not accepted; ``reason`` says why, in words fit for the audit log.

    ``transient`` is False when the receiver answered that it will not take the message
    (AR/AE/CR/CE): sending it again unchanged is unlikely to help, though the delivery may
    still retry it on its usual schedule."""

    def __init__(self, reason: str, *, transient: bool = True, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.code = code


@dataclass(frozen=True)
class Ack:
    """The receiver's answer: MSA-1, MSA-2 and its reason text, if any."""

    code: str
    control_id: str
    text: str


def send_message(
    host: str,
    port: int,
    message: bytes,
    control_id: str,
    *,
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 30.0,
) -> Ack:
    """Send ``message`` (CR-terminated segments) and return the receiver's ACK.

    Parameters
    ----------
    control_id:
        The message's MSH-10; the ACK must echo it in MSA-2.
    tls:
        A client context for MLLP over TLS; None for plain TCP.
    timeout_s:
        Deadline for connecting, sending and reading the whole answer.

    Raises
    ------
    HL7SendError
        The connection failed, the answer was late, oversized or unreadable, echoed another
        message, or was not an accept.
    """
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            sock = tls.wrap_socket(raw, server_hostname=host) if tls else raw
            with sock:
                sock.sendall(SB + message + EB + CR)
                answer = _read_frame(sock, deadline)
    except HL7SendError:
        raise
    except ssl.SSLError as exc:
        raise HL7SendError(f"TLS with {host}:{port} failed: {exc.reason or exc}") from exc
    except TimeoutError as exc:
        raise HL7SendError(f"{host}:{port} did not answer within {timeout_s:g} s") from exc
    except OSError as exc:
        raise HL7SendError(f"cannot reach {host}:{port}: {exc.strerror or exc}") from exc
    ack = read_ack(answer)
    if ack.control_id != control_id:
        raise HL7SendError(
            f"the ACK answers message {ack.control_id!r}, not {control_id!r}", code=ack.code
        )
    if ack.code not in ACCEPTED:
        reason = f"{ack.code}: {ack.text}" if ack.text else ack.code
        raise HL7SendError(f"the receiver answered {reason}", transient=False, code=ack.code)
    return ack


def read_ack(payload: bytes) -> Ack:
    """Read MSA-1, MSA-2 and the reason (ERR-8, else ERR-1/ERR-3 text, else MSA-3).

    Raises
    ------
    HL7SendError
        The payload is not an HL7 message with an MSA segment.
    """
    try:
        msg = HL7Structure(decode_message(payload))
    except (UndecodableMessage, HL7ParseError) as exc:
        raise HL7SendError(f"the answer is not an HL7 message: {exc}") from exc
    msa = msg.first("MSA")
    if msa is None:
        raise HL7SendError("the answer has no MSA segment")
    code, control_id = msg.value(msa, 1).upper(), msg.value(msa, 2)
    err = msg.first("ERR")
    reasons = [
        msg.value(err, 8),  # v2.5+: the user message
        msg.value(err, 3, component=2),  # v2.5+: the error code's text
        msg.value(err, 1, component=4, subcomponent=2),  # before v2.5: code&text&table
        msg.value(msa, 3),  # before v2.5: the text message
    ]
    text = next((r.strip() for r in reasons if r and r.strip()), "")
    return Ack(code, control_id, text[:300])


def _read_frame(sock: socket.socket, deadline: float) -> bytes:
    """Read one MLLP frame's payload; the receiver may send nothing before SB but whitespace."""
    buffer = bytearray()
    while True:
        end = buffer.find(EB + CR)
        if end >= 0:
            start = buffer.find(SB)
            if start < 0 or start > end:
                raise HL7SendError("the answer is not an MLLP frame")
            return bytes(buffer[start + 1 : end])
        if len(buffer) > MAX_ACK_BYTES:
            raise HL7SendError(f"the answer exceeds {MAX_ACK_BYTES} bytes without ending")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise HL7SendError("the receiver closed the connection without an ACK")
        buffer += chunk
