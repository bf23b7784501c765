"""The storage SCU: deliver result objects to a destination in one association."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, evt

from node.config import Destination
from node.dicom.tcp import no_delay

log = logging.getLogger(__name__)

# C-STORE statuses that mean the peer kept the object (0xB000-class warnings included,
# e.g. "coercion of data elements").
_KEPT = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Delivery:
    path: Path
    ok: bool
    error: str | None = None


class DicomSender:
    """Sends files with C-STORE as ``ae_title``."""

    def __init__(
        self, ae_title: str, timeout_s: float = 30.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.ae_title = ae_title
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context

    def send(self, destination: Destination, paths: list[Path]) -> list[Delivery]:
        """Send every file in ``paths`` to ``destination`` over one association.

        Returns one ``Delivery`` per path, in order; nothing raises for a refusal or a network
        failure, which become ``ok=False`` with the reason.
        """
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        contexts = set()
        for path in paths:
            meta = dcmread(path, stop_before_pixels=True)
            contexts.add((str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID)))
        for sop_class, transfer_syntax in sorted(contexts):
            ae.add_requested_context(sop_class, transfer_syntax)
        tls_args = (self.ssl_context, destination.host) if self.ssl_context else None
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],
        )
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "destination unreachable"
            return [Delivery(p, False, f"{destination}: {reason}") for p in paths]
        results = []
        try:
            for path in paths:
                results.append(self._store_one(assoc, path))
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        lost = paths[len(results) :]
        results += [Delivery(p, False, f"{destination}: association lost") for p in lost]
        return results

    @staticmethod
    def _store_one(assoc, path: Path) -> Delivery:
        try:
            status = assoc.send_c_store(path)
        except (ValueError, RuntimeError, OSError) as exc:
            return Delivery(path, False, f"cannot send: {exc}")
        if not status or "Status" not in status:
            return Delivery(path, False, "no response (timeout or abort)")
        code = int(status.Status)
        if code in _KEPT:
            return Delivery(path, True)
        return Delivery(path, False, f"refused with status 0x{code:04X}")
