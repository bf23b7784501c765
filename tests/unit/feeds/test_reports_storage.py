"""storage.reports on a real SQLite file: once per message, waiting for its study."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from storage import reports as reports_module
from storage.reports import (
    ReportFieldTooLong,
    ReportOutcome,
    store_report,
    waiting_reports,
)
from storage.schema import Report, ReportState


def store(session, message_id="M1", text="Clear lungs.", **fields):
    values = {"source": "hl7", "kind": "report", "accession": "A1", "patient_id": "P1"}
    return store_report(session, message_id=message_id, text=text, **(values | fields))


def count(db) -> int:
    with db.transaction() as session:
        return session.scalar(select(func.count()).select_from(Report))


def test_second_delivery_of_a_message_is_a_duplicate(db):
    with db.transaction() as session:
        assert store(session) == ReportOutcome.STORED
    with db.transaction() as session:
        assert store(session) == ReportOutcome.DUPLICATE
    assert count(db) == 1


def test_same_id_from_another_source_is_another_message(db):
    with db.transaction() as session:
        store(session)
        assert store(session, source="csv") == ReportOutcome.STORED
    assert count(db) == 2


def test_same_id_with_other_content_is_a_conflict_and_the_first_is_kept(db):
    with db.transaction() as session:
        store(session)
        assert store(session, text="Pneumonia.") == ReportOutcome.CONFLICT
    with db.transaction() as session:
        assert [r.text for r in session.scalars(select(Report))] == ["Clear lungs."]


def test_losing_an_insert_race_is_a_duplicate_not_an_error(db, monkeypatch):
    with db.transaction() as session:
        store(session)
    # As if another writer committed the same message between our check and our insert.
    real_find = reports_module.find_report
    calls = []

    def find_missing_the_first_time(*args):
        calls.append(args)
        return None if len(calls) == 1 else real_find(*args)

    monkeypatch.setattr(reports_module, "find_report", find_missing_the_first_time)
    with db.transaction() as session:
        assert store(session) == ReportOutcome.DUPLICATE
    assert len(calls) == 2  # looked again after the unique constraint refused the insert
    assert count(db) == 1


def test_values_longer_than_their_column_are_refused(db):
    with db.transaction() as session, pytest.raises(ReportFieldTooLong) as caught:
        store(session, accession="9" * 65)
    assert (caught.value.field, caught.value.limit) == ("accession", 64)


def test_waiting_reports_by_accession_or_study_uid(db):
    with db.transaction() as session:
        store(session, "M1", accession="A1")
        store(session, "M2", accession="A2", study_uid="1.2.3")
        store(session, "M3", accession="A3")
        session.scalar(select(Report).where(Report.message_id == "M3")).state = ReportState.PAIRED
    with db.transaction() as session:
        assert [r.message_id for r in waiting_reports(session)] == ["M1", "M2"]
        assert [r.message_id for r in waiting_reports(session, accession="A1")] == ["M1"]
        assert [r.message_id for r in waiting_reports(session, study_uid="1.2.3")] == ["M2"]
        both = waiting_reports(session, accession="A1", study_uid="1.2.3")
        assert [r.message_id for r in both] == ["M1", "M2"]
        assert waiting_reports(session, accession="A3") == []
