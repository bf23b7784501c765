"""Whether the result destinations answer: a DICOM C-ECHO to each, remembered for a while so a
health check polled every few seconds does not open an association every time."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.config import Destination


@dataclass(frozen=True)
class Reachability:
    destination: str  # AE@host:port
    reachable: bool
    checked_at: datetime
    error: str | None = None


class DestinationProbe:
    """C-ECHO the destinations as ``ae_title``; answers are cached for ``max_age_s``.

    Parameters
    ----------
    destinations:
        The node's result destinations.
    ssl_context:
        The client TLS context results are sent with, if any.
    """

    def __init__(
        self,
        ae_title: str,
        destinations: tuple[Destination, ...],
        ssl_context: ssl.SSLContext | None = None,
        max_age_s: float = 30.0,
        timeout_s: float = 3.0,
    ) -> None:
        self.ae_title = ae_title
        self.destinations = destinations
        self.ssl_context = ssl_context
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Reachability]] | None = None

    def check(self) -> list[Reachability]:
        """Each destination's reachability, at most ``max_age_s`` old."""
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.max_age_s:
                return self._cached[1]
            answers = [self._echo(d) for d in self.destinations]
            self._cached = (time.monotonic(), answers)
            return answers

    def _echo(self, destination: Destination) -> Reachability:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(Verification)
        tls_args = (self.ssl_context, destination.host) if self.ssl_context else None
        now = datetime.now(UTC)
        try:
            assoc = ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                tls_args=tls_args,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            return Reachability(str(destination), False, now, f"cannot connect: {exc}")
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "no answer"
            return Reachability(str(destination), False, now, reason)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if status and status.get("Status") == 0:
            return Reachability(str(destination), True, now)
        return Reachability(str(destination), False, now, "C-ECHO failed")
