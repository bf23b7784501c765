"""Refusal events: one row per peer and window, with the count of what it stands for."""

from __future__ import annotations

import pytest

from node.refusals import RefusalAudit
from storage import audit
from storage.database import Database


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    yield database
    database.dispose()


def events(db, action: str) -> list[dict]:
    with db.transaction() as session:
        found = audit.query(session, audit.AuditFilter(action=action, limit=None))
        return sorted((audit.as_dict(e) for e in found), key=lambda e: e["id"])


def test_a_flood_from_one_peer_is_one_row_per_window_with_its_count(db):
    clock = Clock()
    refusals = RefusalAudit(db, window_s=60, clock=clock)
    written = [refusals.record("admin.auth_failed", "10.0.0.9", {"path": "/"}) for _ in range(500)]
    assert written.count(True) == 1
    clock.now += 61
    refusals.record("admin.auth_failed", "10.0.0.9", {"path": "/api/audit"})
    rows = events(db, "admin.auth_failed")
    assert [r["detail"]["count"] for r in rows] == [1, 500]  # 499 suppressed + this one
    assert all(r["actor_ip"] == "10.0.0.9" and r["outcome"] == "failure" for r in rows)
    assert rows[1]["detail"] == {"path": "/api/audit", "count": 500, "window_s": 60}


def test_peers_and_actions_have_windows_of_their_own(db):
    refusals = RefusalAudit(db, window_s=60, clock=Clock())
    for address in ("10.0.0.1", "10.0.0.2"):
        for _ in range(3):
            refusals.record("association.tls_failed", address)
    refusals.record("mllp.refused", "10.0.0.1")
    assert [r["actor_ip"] for r in events(db, "association.tls_failed")] == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert len(events(db, "mllp.refused")) == 1


def test_flush_writes_the_counts_of_open_windows_once(db):
    refusals = RefusalAudit(db, window_s=60, clock=Clock())
    for _ in range(7):
        refusals.record("admin.auth_failed", "10.0.0.9", {"path": "/"})
    assert refusals.flush() == 1
    assert refusals.flush() == 0
    assert [r["detail"]["count"] for r in events(db, "admin.auth_failed")] == [1, 6]


def test_window_zero_records_every_refusal(db):
    refusals = RefusalAudit(db, window_s=0, clock=Clock())
    for _ in range(3):
        assert refusals.record("admin.auth_failed", "10.0.0.9")
    assert [r["detail"]["count"] for r in events(db, "admin.auth_failed")] == [1, 1, 1]
