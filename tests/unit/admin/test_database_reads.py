"""Admin reads never stall the node's writers on SQLite."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from storage import audit
from storage.database import Database
from storage.schema import AuditEvent


def test_an_open_read_does_not_hold_the_sqlite_write_lock(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    admin, node = Database(url), Database(url)
    admin.create_schema()
    with node.transaction() as session:
        audit.record(session, "instance.received")
    with admin.reading() as session:
        before = session.scalar(select(func.count(AuditEvent.id)))
        started = time.monotonic()
        with node.transaction() as writing:  # the SCP storing while an admin query runs
            audit.record(writing, "instance.received")
        assert time.monotonic() - started < 5  # not the 30 s busy timeout
        assert session.scalar(select(func.count(AuditEvent.id))) == before  # its snapshot
    with admin.reading() as session:
        assert session.scalar(select(func.count(AuditEvent.id))) == before + 1
