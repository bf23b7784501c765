"""Fixtures for the audit and admin tests: one database per test, on a real SQLite file and on
a real PostgreSQL server (``database_url`` is parametrized over both), and a recorded history of
studies the way the node records them."""

from __future__ import annotations

import pytest
from unit.admin.history import History, record_history

from storage.database import Database
from support.postgres import database_url, postgres_server  # noqa: F401 - fixtures


@pytest.fixture
def db(database_url) -> Database:  # noqa: F811 - the imported fixture
    database = Database(database_url)
    database.create_schema()
    yield database
    database.dispose()


@pytest.fixture
def history(db: Database) -> History:
    """Four studies over two days: A done (effusion), B failed, C done next day with another
    model after one refused send, D skipped; a report for A; an intruder refused."""
    h = History(db)
    record_history(h)
    return h
