"""The audit hash chain: sealed on commit by any number of concurrent writers, and ``verify``
names the first edited, deleted or inserted row (SQLite file and PostgreSQL server)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from storage import audit
from storage.audit_chain import GENESIS, Damage, row_hash, verify
from storage.schema import AuditEvent, utcnow


def write(db, n: int, prefix: str = "test.event") -> None:
    for i in range(n):
        with db.transaction() as session:
            audit.record(session, prefix, study_uid=f"1.2.{i}", detail={"i": i, "p": 0.25})


def chain(db) -> list[AuditEvent]:
    with db.transaction() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.chain_seq)))


def check(db, **kwargs):
    with db.transaction() as session:
        return verify(session, **kwargs)


def test_every_event_is_sealed_in_one_gapless_chain(db):
    write(db, 5)
    with db.transaction() as session:  # several events in one transaction keep their order
        for action in ("a.first", "a.second", "a.third"):
            audit.record(session, action, detail={"tuple": (1, 2), "nested": {"b": 1, "a": None}})
    events = chain(db)
    assert [e.chain_seq for e in events] == list(range(1, 9))
    assert [e.action for e in events][-3:] == ["a.first", "a.second", "a.third"]
    assert events[0].prev_hash == GENESIS
    for before, after in zip(events, events[1:], strict=False):
        assert after.prev_hash == before.row_hash
    report = check(db)
    assert report.ok and report.checked == 8 and report.head_seq == 8
    assert report.head_hash == events[-1].row_hash


def test_an_event_is_visible_in_its_own_transaction_before_commit(db):
    with db.transaction() as session:
        audit.record(session, "x.seen", study_uid="1.2.3")
        (event,) = audit.query(session, audit.AuditFilter(study_uid="1.2.3"))
        assert event.chain_seq is None  # sealed only at commit
    assert chain(db)[0].chain_seq == 1 and check(db).ok


def test_events_added_without_record_are_sealed_too(db):
    with db.transaction() as session:
        session.add(AuditEvent(time=utcnow(), action="raw.add", outcome="success"))
        audit.record(session, "x.recorded")
    assert {e.action for e in chain(db)} == {"raw.add", "x.recorded"}
    assert check(db).ok


def test_rolled_back_work_leaves_no_gap(db):
    write(db, 1)
    with pytest.raises(RuntimeError), db.transaction() as session:
        audit.record(session, "x.lost")
        raise RuntimeError("the work failed")
    with db.transaction() as session:
        audit.record(session, "x.kept")
        with pytest.raises(RuntimeError), session.begin_nested():
            audit.record(session, "x.savepoint_lost")
            session.flush()
            raise RuntimeError("savepoint rolled back")
    assert [(e.chain_seq, e.action) for e in chain(db)] == [(1, "test.event"), (2, "x.kept")]
    assert check(db).ok


def test_concurrent_writers_never_fork_the_chain(db):
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for i in range(15):
                with db.transaction() as session:
                    audit.record(session, f"thread.{name}", detail={"i": i})
                    audit.record(session, f"thread.{name}", detail={"i": i, "second": True})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(str(n),)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    events = chain(db)
    assert [e.chain_seq for e in events] == list(range(1, 121))
    assert len({e.prev_hash for e in events}) == 120  # no two rows share a predecessor
    assert check(db).ok


def test_verify_catches_a_row_changed_in_the_database(db):
    write(db, 6)
    target = chain(db)[3]
    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_events SET patient_id = 'SOMEONE-ELSE' WHERE id = :id"),
            {"id": target.id},
        )
    report = check(db)
    assert not report.ok
    assert (report.first.kind, report.first.event_id) == (Damage.EDITED, target.id)
    assert "changed after it was written" in report.first.message
    assert len(report.problems) == 1  # the rest of the chain still links


def test_verify_catches_an_edited_detail(db):
    write(db, 3)
    target = chain(db)[0]
    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_events SET detail = :d WHERE id = :id"),
            {"d": '{"i": 0, "p": 0.95}', "id": target.id},
        )
    assert (check(db).first.kind, check(db).first.event_id) == (Damage.EDITED, target.id)


def test_verify_catches_a_row_rewritten_with_a_recomputed_hash(db):
    write(db, 4)
    events = chain(db)
    target = events[1]
    fields = {
        "time": target.time,
        "action": "test.event",
        "outcome": "success",
        "study_uid": "1.2.1",
        "detail": {"i": 1, "p": 0.01},
    }
    forged = row_hash(fields, target.chain_seq, target.prev_hash)
    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_events SET detail = :d, row_hash = :h WHERE id = :id"),
            {"d": '{"i": 1, "p": 0.01}', "h": forged, "id": target.id},
        )
    report = check(db)
    assert (report.first.kind, report.first.event_id) == (Damage.EDITED, target.id)
    assert f"does not follow event {target.id}" in report.first.message


def test_verify_catches_a_deleted_row(db):
    write(db, 5)
    events = chain(db)
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": events[2].id})
    report = check(db)
    assert report.first.kind == Damage.DELETED
    assert report.first.event_id == events[3].id
    assert "seq 3 missing" in report.first.message


def test_verify_catches_rows_deleted_from_the_end(db):
    write(db, 5)
    events = chain(db)
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": events[-1].id})
    report = check(db)
    assert report.first.kind == Damage.DELETED and "at the end" in report.first.message


def test_verify_catches_an_inserted_row(db):
    write(db, 3)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_events (time, action, outcome) "
                "VALUES (CURRENT_TIMESTAMP, 'study.done', 'success')"
            )
        )
        inserted = conn.execute(text("SELECT max(id) FROM audit_events")).scalar()
    report = check(db)
    assert (report.first.kind, report.first.event_id) == (Damage.INSERTED, inserted)


def test_anchor_catches_a_chain_recomputed_wholesale(db):
    write(db, 3)
    anchor = (check(db).head_seq, check(db).head_hash)
    events = chain(db)
    # Someone rewrites the last row and fixes its hash and the head: the chain links again.
    last = events[-1]
    fields = {"time": last.time, "action": "test.event", "outcome": "success", "detail": {}}
    forged = row_hash(fields, last.chain_seq, last.prev_hash)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE audit_events SET study_uid = NULL, detail = '{}', row_hash = :h "
                "WHERE id = :id"
            ),
            {"h": forged, "id": last.id},
        )
        conn.execute(text("UPDATE audit_chain_head SET last_hash = :h"), {"h": forged})
    assert check(db).ok
    report = check(db, anchor=anchor)
    assert (report.first.kind, report.first.event_id) == (Damage.EDITED, last.id)
