"""A step of the node repeated in a thread of its own: every few seconds, or at once when woken.

One thread per step means a step never overlaps itself and is never skipped with a warning
because the previous round is still running: a wake-up during a round only makes the next round
start as soon as this one ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Loop:
    """Runs ``step`` in a thread until :meth:`stop`.

    Parameters
    ----------
    name:
        The thread's name, and what the log calls the step when it raises.
    step:
        The work of one round. Returning something truthy asks for another round at once
        (more work waits); a step that raises is logged and tried again next round.
    interval_s:
        Seconds between rounds when nothing wakes the loop.
    at_stop:
        Run once in the loop's thread after its last round (e.g. commit what is in flight).
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval_s: float,
        at_stop: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.step = step
        self.interval_s = interval_s
        self.at_stop = at_stop
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, now: bool = True) -> Loop:
        """Start the thread; its first round runs at once, or after ``interval_s``."""
        if now:
            self._wake.set()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Run the next round now, or right after the one running."""
        self._wake.set()

    def stop(self) -> None:
        """Let the running round finish, run ``at_stop`` and end the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=self.interval_s)
            self._wake.clear()
            while not self._stopping.is_set() and self._round():
                pass
        if self.at_stop is not None:
            self._guarded(self.at_stop)

    def _round(self) -> bool:
        return bool(self._guarded(self.step))

    def _guarded(self, call: Callable[[], object]) -> object:
        try:
            return call()
        except Exception:  # the loop outlives a failed round; the next one retries
            log.exception("%s failed; retrying on the next round", self.name)
            return None
