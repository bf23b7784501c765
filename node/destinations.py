"""Where results go: a DICOM peer is ``node.config.Destination`` (``AE@host:port``); these are
the other two transports, parsed from the same ``destinations`` setting.

- ``https://[user:password@]host[:port]/dicom-web`` (or ``http://``): a STOW-RS destination
  (``node.dicomweb.stow``); the credentials, if any, go into an HTTP Basic header and never
  into the destination's name (the outbox key, the log and the audit use ``str``).
- ``mllp://[APP[^FACILITY]@]host:port`` (``mllps://`` for MLLP over TLS): an HL7 v2 receiver of
  result messages (``node.hl7out``), MSH-5 and MSH-6 naming its application and facility.

This module imports nothing of the node but its errors, so the settings can parse them.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from node.errors import ConfigError

_STUDIES = re.compile(r"/studies(?:/[0-9.]+)?$")  # the studies resource, or one study's


@dataclass(frozen=True)
class StowTarget:
    """A STOW-RS destination: where ``/studies`` is, and how to authenticate."""

    scheme: str
    host: str
    port: int
    path: str  # ends in /studies (or /studies/{StudyInstanceUID})
    authorization: str | None = None  # "Basic ..." from user:password in the URL

    @classmethod
    def parse(cls, url: str) -> StowTarget:
        """Read ``http(s)://[user:password@]host[:port]/base[/studies[/{StudyInstanceUID}]]``.

        Raises
        ------
        ConfigError
            Not an http(s) URL with a host, or it carries a query or fragment.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"STOW-RS destination {url!r} is not an http(s) URL with a host")
        if parts.query or parts.fragment:
            raise ConfigError(f"STOW-RS destination {url!r} must not carry a query or fragment")
        path = parts.path.rstrip("/")
        if not _STUDIES.search(path):  # a DICOMweb root: its studies resource
            path += "/studies"
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, path, authorization)

    def __str__(self) -> str:  # never the credentials: this goes into logs and the audit
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


_HL7_DESTINATION = re.compile(
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
        match = _HL7_DESTINATION.match(text.strip())
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


def hl7_version_problem(version: str) -> str | None:
    """Why ``version`` is not an HL7 v2 version the node writes (2.3 to 2.8), or None."""
    match = re.fullmatch(r"2\.(\d)(?:\.(\d))?", version)
    if not match or not 3 <= int(match[1]) <= 8:
        return f"{version!r} is not one of 2.3 ... 2.8 (e.g. 2.5.1)"
    return None
