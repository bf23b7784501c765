"""Engine and sessions: SQLite (a file under the data dir, WAL) by default, any SQLAlchemy URL."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage import migrations
from storage.audit_chain import SEALED_HEAD
from storage.head_journal import HeadJournal

log = logging.getLogger(__name__)


def sqlite_url(path: Path) -> str:
    """Return the SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path}"


class Database:
    """Owns the engine; hands out short transactions.

    Parameters
    ----------
    url:
        SQLAlchemy database URL. A SQLite file is created with mode 0600 and put in WAL mode,
        so the SCP, scheduler and worker threads read while one of them writes. PostgreSQL
        (``postgresql+psycopg://user:password@host/db``) lets several node processes share
        the queue and the audit log.
    node_name:
        Which node process this is, when several share the database: the jobs its worker
        claims carry the name (``session.info["node_name"]``).
    """

    def __init__(self, url: str, node_name: str | None = None) -> None:
        self.url = url
        self.node_name = node_name
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._create_private_sqlite_file(url)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite opens transactions lazily; emit BEGIN ourselves so a read-then-write
            # transaction takes the write lock up front instead of failing to upgrade later.
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._writers = threading.RLock() if self.is_sqlite else nullcontext()
        info = {"node_name": node_name}
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, info=info)
        # SQLite: the chain head is also written beside the file (storage.head_journal).
        self.journal = HeadJournal(Path(self.path)) if self.is_sqlite and self.path else None
        if self.journal is not None:
            event.listen(self._sessions, "after_commit", self._journal_head)
        self._readers = sessionmaker(
            self.engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False, info=info
        )

    @property
    def path(self) -> str | None:
        """The SQLite file, or None (PostgreSQL, or an in-memory database)."""
        if not self.is_sqlite:
            return None
        path = self.url.removeprefix("sqlite:///")
        return None if not path or path == ":memory:" else path

    def recorded_head(self) -> tuple[int, str] | None:
        """(seq, hash) of the audit head last committed, from the journal beside a SQLite
        file, for ``audit_chain.verify(journal=...)``; None without one."""
        head = self.journal.read() if self.journal is not None else None
        return (head.seq, head.hash) if head is not None else None

    def _journal_head(self, session: Session) -> None:
        head = session.info.pop(SEALED_HEAD, None)
        if head is not None:
            try:
                self.journal.write(*head)
            except OSError:  # the commit stands; the next start's check says what it can
                log.warning("could not write the audit head journal", exc_info=True)

    def create_schema(self) -> None:
        """Bring the schema to the current revision with the Alembic migrations (idempotent;
        one query when it is already there). Several nodes may call it at once."""
        migrations.upgrade(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session whose work commits on exit, or rolls back on an exception.

        On SQLite the process's writers take turns on a lock first: SQLite makes a writer that
        finds the file locked sleep and retry (1 ms, 2 ms, ... 100 ms), which with a few
        receiving associations at once wastes more time asleep than writing.
        """
        with self._writers, self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Yield a session for reads only (admin queries, the chain check).

        On SQLite its transaction is a plain deferred ``BEGIN``: in WAL mode it reads a snapshot
        without the write lock, so a long query never stalls the receivers and the worker.
        Writing in it may fail to upgrade the lock; use :meth:`transaction` for writes.
        """
        with self._readers.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _create_private_sqlite_file(url: str) -> None:
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)


_READ_ONLY = "cxrnode_read_only"


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql(
        "BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE"
    )


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # pysqlite's own transaction handling is turned off; the "begin" listener issues BEGIN.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor, attempts: int = 100) -> None:
    """Put the file in WAL mode (once per file; a no-op after). Two connections switching a new
    file at once can get "database is locked" at once: SQLite skips the busy handler where
    waiting could deadlock, so the loser waits here for the winner instead."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02)
