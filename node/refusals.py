"""Audit events for refused connections and requests, one per peer and window with a count.

A peer that is refused (a failed TLS handshake, a connection over its cap, a wrong admin
token) can be refused thousands of times a second. One audit row per refusal would turn the
audit log into the attacker's write amplifier: every row is a committed, hash-chained
transaction competing with the C-STOREs. So each (action, peer address) gets its first refusal
recorded at once (``count`` 1), the next ones within ``window_s`` are only counted, and the
count is written with the first refusal after the window, or by ``flush`` (called when the
listener stops). Every refusal is counted in some row; none gets a row of its own. A caller
with several kinds of refusal under one action (an unknown calling AE, a full disk) passes a
``group`` so that each kind has windows of its own and its first refusal is recorded at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.logsafe import describe
from storage import audit
from storage.actions import Action
from storage.audit import Outcome
from storage.database import Database

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 60.0
# Peers tracked at once; past this, windows that counted nothing more are forgotten first.
MAX_TRACKED_PEERS = 10_000


@dataclass
class _Window:
    started: float
    suppressed: int = 0  # refusals since the last row
    detail: dict[str, Any] = field(default_factory=dict)  # of the latest of them
    actor_ae: str | None = None


class RefusalAudit:
    """Writes refusal events, at most one per (action, peer address) and window.

    Parameters
    ----------
    db:
        Where the events go.
    window_s:
        Length of a window; ``0`` records every refusal (each with ``count`` 1).
    clock:
        Monotonic seconds; tests pass their own.
    """

    def __init__(
        self,
        db: Database,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s < 0:
            raise ValueError("window_s must be 0 or more")
        self.db = db
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._lock = threading.Lock()

    def record(
        self,
        action: Action,
        address: str | None,
        detail: dict[str, Any] | None = None,
        *,
        actor_ae: str | None = None,
        group: str = "",
    ) -> bool:
        """Count one refusal of ``address``; write its event unless its window already has one.

        Parameters
        ----------
        group:
            The kind of refusal within ``action`` (e.g. its reason): each (action, address,
            group) has windows of its own.

        Returns
        -------
        bool
            Whether an event was written now (the first refusal of a window).
        """
        key = (action, address or "", group)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started < self.window_s:
                window.suppressed += 1
                window.detail = dict(detail or {})
                window.actor_ae = actor_ae
                return False
            count = 1 + (window.suppressed if window else 0)
            self._forget_quiet_peers(now)
            self._windows[key] = _Window(started=now)
        self._write(action, address, detail or {}, count, actor_ae)
        return True

    def flush(self) -> int:
        """Write the counts not written yet (e.g. when the listener stops); return how many
        events were written."""
        with self._lock:
            pending = []
            for (action, address, _), window in self._windows.items():
                if window.suppressed:
                    pending.append((action, address, window.suppressed, window))
                    window.suppressed = 0
        for action, address, count, window in pending:
            self._write(action, address or None, window.detail, count, window.actor_ae)
        return len(pending)

    def _forget_quiet_peers(self, now: float) -> None:
        if len(self._windows) < MAX_TRACKED_PEERS:
            return
        for key in [
            k
            for k, w in self._windows.items()
            if not w.suppressed and now - w.started >= self.window_s
        ]:
            del self._windows[key]
        if len(self._windows) >= MAX_TRACKED_PEERS:
            # Still full of peers refused within their window: the oldest half goes. Their
            # counts are lost to the log, which is better than growing without bound.
            oldest = sorted(self._windows, key=lambda k: self._windows[k].started)
            for key in oldest[: len(oldest) // 2]:
                del self._windows[key]

    def _write(
        self,
        action: Action,
        address: str | None,
        detail: dict[str, Any],
        count: int,
        actor_ae: str | None,
    ) -> None:
        try:
            with self.db.transaction() as session:
                audit.record(
                    session,
                    action,
                    Outcome.FAILURE,
                    actor_ae=actor_ae,
                    actor_ip=address,
                    detail=detail | {"count": count, "window_s": self.window_s},
                )
        except Exception as exc:  # the refusal stands even when it cannot be recorded
            # Type only: the error's text quotes the detail (an admin path names a study).
            log.error("could not audit %s from %s: %s", action, address, describe(exc))
