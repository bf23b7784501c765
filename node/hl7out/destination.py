"""Sending result message files to an HL7 destination (``node.destinations.HL7Destination``).

An ``mllps://`` destination is reached over TLS, trusting ``tls_ca`` and presenting the node's
certificate, as DICOM destinations are with ``tls_destinations``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from node.destinations import HL7Destination
from node.dicom.sender import Delivery
from node.hl7out.client import HL7SendError, send_message


class HL7ResultSender:
    """Sends result message files (one message each, as ``node.hl7out.oru`` wrote them)."""

    def __init__(self, timeout_s: float = 30.0, tls: ssl.SSLContext | None = None) -> None:
        self.timeout_s = timeout_s
        self.tls = tls

    def send(self, destination: HL7Destination, paths: list[Path]) -> list[Delivery]:
        """One ``Delivery`` per file, in order; a refusal or network failure is ``ok=False``
        with the reason, never an exception."""
        results = []
        for path in paths:
            try:
                message = path.read_bytes()
                control_id = control_id_of(message)
                tls = self.tls if destination.tls else None
                if destination.tls and tls is None:
                    raise HL7SendError("an mllps:// destination needs tls_ca (and the node's TLS)")
                send_message(
                    destination.host,
                    destination.port,
                    message,
                    control_id,
                    tls=tls,
                    timeout_s=self.timeout_s,
                )
                results.append(Delivery(path, True))
            except HL7SendError as exc:
                results.append(Delivery(path, False, f"{destination}: {exc.reason}"))
            except (OSError, ValueError) as exc:
                results.append(Delivery(path, False, f"cannot send {path.name}: {exc}"))
        return results


def control_id_of(message: bytes) -> str:
    """MSH-10 of a message the node wrote (``|`` separated, MSH first)."""
    msh = message.split(b"\r", 1)[0].decode("utf-8")
    fields = msh.split("|")
    if not msh.startswith("MSH|") or len(fields) < 10 or not fields[9]:
        raise ValueError("not an HL7 message with a control id (MSH-10)")
    return fields[9]
