"""The audit chain's head, also written beside the SQLite file after every commit that moved it.

SQLite keeps committed transactions in its write-ahead log (``-wal``) until a checkpoint
copies them into the main file. Delete that log after a crash and the database silently goes
back to the last checkpoint: acknowledged instances and audit rows vanish, and the chain still
verifies, since its head row went back with them. The journal is outside the database: at the
next start a head behind the journal's is loss, reported and audited
(``node.integrity.check_database``). It is one fixed-size record overwritten in place, no
fsync: what it guards against is the loss of a file, not of power.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_RECORD = "{seq:020d} {hash}\n"
_PARSE = re.compile(r"^(\d{20}) ([0-9a-f]{64})\n$")


@dataclass(frozen=True)
class JournalHead:
    seq: int
    hash: str


class HeadJournal:
    """The file ``<database>.head``: the last chain head this process committed."""

    def __init__(self, database_path: Path) -> None:
        self.path = Path(f"{database_path}.head")
        self._high: int | None = None  # the highest head recorded, once read

    def write(self, seq: int, row_hash: str, *, force: bool = False) -> None:
        """Record a newly committed head. A head below the one recorded is not written (only
        a database that lost rows commits one): the evidence stays for the start-up check,
        which alone sets a lower one (``force``) once it has reported the loss."""
        if not force:
            if self._high is None:
                recorded = self.read()
                self._high = recorded.seq if recorded is not None else 0
            if seq <= self._high:
                return
        record = _RECORD.format(seq=seq, hash=row_hash).encode("ascii")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, record, 0)
        finally:
            os.close(fd)
        self._high = seq

    def read(self) -> JournalHead | None:
        """The recorded head, or None when there is none (a new node) or it is unreadable."""
        try:
            text = self.path.read_text("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        match = _PARSE.match(text)
        return JournalHead(int(match[1]), match[2]) if match else None
