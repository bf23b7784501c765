"""Engine and sessions: SQLite (a file under the data dir, WAL) by default, any SQLAlchemy URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.schema import Base


def sqlite_url(path: Path) -> str:
    """Return the SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path}"


class Database:
    """Owns the engine; hands out short transactions.

    Parameters
    ----------
    url:
        SQLAlchemy database URL. A SQLite file is created with mode 0600 and put in WAL mode,
        so the SCP, scheduler and worker threads read while one of them writes.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._create_private_sqlite_file(url)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # pysqlite opens transactions lazily; emit BEGIN ourselves so a read-then-write
            # transaction takes the write lock up front instead of failing to upgrade later.
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create missing tables (idempotent)."""
        Base.metadata.create_all(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session whose work commits on exit, or rolls back on an exception."""
        with self._sessions.begin() as session:
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


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # pysqlite's own transaction handling is turned off; the "begin" listener issues BEGIN.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
