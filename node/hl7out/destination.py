"""Where HL7 result messages go, and sending their files there.

A destination is written ``mllp://host:port`` (``mllps://host:port`` for MLLP over TLS,
trusting ``tls_ca`` and presenting the node's certificate, as DICOM destinations do), optionally
naming the receiving application and facility (MSH-5, MSH-6): ``mllp://RIS^HOSP@host:port``.
Its string form is the outbox's destination key.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from node.dicom.sender import Delivery
from node.errors import ConfigError
from node.hl7out.client import HL7SendError, send_message

_DESTINATION = re.compile(
    r"^(?P<scheme>mllps?)://(?:(?P<app>[^\^@/]{1,180})(?:\^(?P<facility>[^@/]{1,180}))?@)?"
    r"(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$"
)
SCHEMES = ("mllp://", "mllps://")


def is_hl7_destination(text: str) -> bool:
    return text.strip().lower().startswith(SCHEMES)


@dataclass(frozen=True)
class HL7Destination:
    host: str
    port: int
    tls: bool = False
    receiving_application: str = ""
    receiving_facility: str = ""

    @classmethod
    def parse(cls, text: str) -> HL7Destination:
        """Raises ``ConfigError`` for anything but ``mllp[s]://[APP[^FACILITY]@]host:port``."""
        match = _DESTINATION.match(text.strip())
        if not match:
            raise ConfigError(
                f"HL7 destination {text!r} is not of the form mllp://[APP[^FACILITY]@]host:port"
            )
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"HL7 destination {text!r}: port out of range")
        return cls(
            match["host"].strip("[]"),
            port,
            tls=match["scheme"] == "mllps",
            receiving_application=match["app"] or "",
            receiving_facility=match["facility"] or "",
        )

    def __str__(self) -> str:
        receiver = self.receiving_application
        if self.receiving_facility:
            receiver += f"^{self.receiving_facility}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "mllps" if self.tls else "mllp"
        return f"{scheme}://{receiver + '@' if receiver else ''}{host}:{self.port}"


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
