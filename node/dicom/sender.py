"""The storage SCU: deliver result objects to a destination in one association."""

from __future__ import annotations

import logging
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pynetdicom
from pydicom import dcmread
from pynetdicom import AE, evt

from node.config import Destination
from node.dicom.tcp import no_delay

log = logging.getLogger(__name__)

# C-STORE statuses that mean the peer kept the object (0xB000-class warnings included,
# e.g. "coercion of data elements").
_KEPT = {0x0000, 0xB000, 0xB006, 0xB007}

# The pynetdicom releases (major, minor) whose reactor ``_pause_reactor`` was written against and
# tested on: 3.0.x (3.0.4 when written). pyproject.toml bounds the dependency to them; the
# guard is for an environment that installed another release anyway.
REACTOR_WORKAROUND_RELEASES = frozenset({(3, 0)})


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
        self.parks_reactor = reactor_workaround_applies(pynetdicom.__version__)
        if not self.parks_reactor:
            log.warning(
                "pynetdicom %s is not a release the C-STORE reactor workaround is tested on "
                "(3.0.x); sending with pynetdicom's own pause, which can wait out the DIMSE "
                "timeout on a fast peer (pynetdicom issue #875)",
                pynetdicom.__version__,
            )

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

    def _store_one(self, assoc, path: Path) -> Delivery:
        try:
            if self.parks_reactor:
                _pause_reactor(assoc)
            status = assoc.send_c_store(path)
        except (ValueError, RuntimeError, OSError) as exc:
            return Delivery(path, False, f"cannot send: {exc}")
        if not status or "Status" not in status:
            return Delivery(path, False, "no response (timeout or abort)")
        code = int(status.Status)
        if code in _KEPT:
            return Delivery(path, True)
        return Delivery(path, False, f"refused with status 0x{code:04X}")


def reactor_workaround_applies(version: str) -> bool:
    """Whether :func:`_pause_reactor` may be used with this pynetdicom version.

    The workaround reaches into two private attributes of ``pynetdicom.association.Association``
    (``_reactor_checkpoint``, ``_is_paused``) and relies on how the 3.0 reactor loop uses them.
    Another release may keep the names with other meanings (a checkpoint left cleared would
    stall the association), so it is used only on the releases it was tested on; elsewhere the
    sender relies on pynetdicom's own pause.

    Parameters
    ----------
    version : str
        A pynetdicom version string (``pynetdicom.__version__``), e.g. ``"3.0.4"``.

    Returns
    -------
    bool
        True when the version's major and minor release is in
        :data:`REACTOR_WORKAROUND_RELEASES`.
    """
    match = re.match(r"(\d+)\.(\d+)", version)
    return bool(match) and (int(match[1]), int(match[2])) in REACTOR_WORKAROUND_RELEASES


def _pause_reactor(assoc) -> None:
    """Make sure the association's reactor thread is parked before a request is sent.

    pynetdicom (3.0.4) pauses its reactor for ``send_c_store`` by clearing a checkpoint and
    waiting for a flag the reactor sets just before it waits on that checkpoint; but the flag
    is still set for a moment after the wait returned, so the sender may go ahead while the
    reactor is about to poll for DIMSE messages. When the peer answers fast (TCP_NODELAY on
    both ends), the reactor then takes the C-STORE response for itself ("Received unexpected
    C-STORE service message", pynetdicom issue #875) and the sender waits out the DIMSE timeout:
    30 s here, a few times per thousand objects. So: clear the checkpoint, see the reactor run
    on (flag down), then see it park (flag up again, now blocked on the cleared checkpoint).
    pynetdicom's own pause in ``send_c_store`` then finds it parked.
    """
    assoc._reactor_checkpoint.clear()
    _wait_until(lambda: not assoc._is_paused, 0.02)  # stays up only if already parked
    _wait_until(lambda: assoc._is_paused, 1.0)


def _wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.0001)
