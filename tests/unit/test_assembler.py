"""Study assembly on a real SQLite file: each study in a savepoint of its own, so a study whose
assembly raises is rolled back, failed and audited alone, and the others get their jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from node.assembler import Assembler
from node.config import Settings
from storage import audit, audit_chain
from storage.database import Database
from storage.reports import store_report
from storage.schema import Job, JobState, Report, ReportState, Study, StudyState
from storage.studies import add_instance
from support.instances import frontal_cr


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    return database


def receive(db: Database, study_uid: str) -> None:
    with db.transaction() as session:
        header = frontal_cr(study_uid)
        add_instance(
            session, header, relpath=f"{study_uid}.dcm", size=1, sha256="0", calling_ae="X"
        )


def actions(db: Database, study_uid: str) -> list[tuple[str, str]]:
    with db.transaction() as session:
        events = audit.query(session, audit.AuditFilter(study_uid=study_uid))
        return sorted((e.action, e.outcome) for e in events if e.action != "instance.received")


def test_a_study_whose_assembly_raises_fails_alone_and_the_others_get_their_jobs(db):
    assembler = Assembler(Settings(stable_age_s=0, pairing_window_s=0), db)
    for uid in ("1.1", "1.2", "1.3"):
        receive(db, uid)
    schedule = assembler.pairing.schedule

    def schedule_then_break_on_the_second(session, study, now):
        job = schedule(session, study, now)  # its job and audit rows are written first...
        if study.study_uid == "1.2":
            raise RuntimeError("a bug in the pairing rules")  # ...then rolled back
        return job

    assembler.pairing.schedule = schedule_then_break_on_the_second
    assert assembler.assemble() == 2
    with db.transaction() as session:
        runs = {job.study.study_uid: job.run for job in session.scalars(select(Job))}
        states = {s.study_uid: s.state for s in session.scalars(select(Study))}
        (failed,) = audit.query(session, audit.AuditFilter(action="study.assembly_failed"))
        assert audit_chain.verify(session).ok  # the rolled-back audit rows left no hole
    assert runs == {"1.1": 1, "1.3": 1}
    assert states == {"1.1": StudyState.QUEUED, "1.2": StudyState.FAILED, "1.3": StudyState.QUEUED}
    assert failed.study_uid == "1.2" and failed.outcome == "failure"
    assert failed.detail["reason"] == "RuntimeError: a bug in the pairing rules"
    # Nothing of what 1.2's assembly wrote before it raised is left.
    assert actions(db, "1.2") == [("study.assembly_failed", "failure")]
    queued = [("pairing.window_expired", "warning"), ("study.queued", "success")]
    assert actions(db, "1.1") == actions(db, "1.3") == queued
    # A failed study is not tried again on every tick; a new instance opens it again.
    assert assembler.assemble() == 0
    assert actions(db, "1.2") == [("study.assembly_failed", "failure")]
    assembler.pairing.schedule = schedule
    with db.transaction() as session:
        add_instance(
            session, frontal_cr("1.2", "1.2.2"), relpath="b", size=1, sha256="0", calling_ae="X"
        )
    assert assembler.assemble() == 1


def test_a_study_without_a_frontal_chest_image_is_skipped_and_audited(db):
    assembler = Assembler(Settings(stable_age_s=0, pairing_window_s=0), db)
    with db.transaction() as session:
        header = frontal_cr("2.1", processable=False, skip_reason="lateral view")
        add_instance(session, header, relpath="x", size=1, sha256="0", calling_ae="X")
    assert assembler.assemble() == 0
    with db.transaction() as session:
        assert session.scalar(select(Study)).state == StudyState.SKIPPED
    assert actions(db, "2.1") == [("study.skipped", "warning")]


def test_a_late_report_whose_rerun_raises_is_audited_once_and_the_study_keeps_its_results(db):
    assembler = Assembler(Settings(stable_age_s=0, pairing_window_s=0), db)
    receive(db, "3.1")
    assert assembler.assemble() == 1  # image only: no report yet
    with db.transaction() as session:
        study = session.scalar(select(Study))
        study.jobs[-1].state, study.state = JobState.DONE, StudyState.DONE
        store_report(
            session,
            source="hl7",
            message_id="m1",
            kind="report",
            text="late",
            patient_id="P1",
            study_uid="3.1",
            status="F",
        )

    def rerun_breaks(session, study, report):
        raise RuntimeError("a bug in the re-run rules")

    assembler.pairing.rerun_for_late_report = rerun_breaks
    assert assembler.assemble() == 0
    assert assembler.assemble() == 0  # not tried again on every tick
    with db.transaction() as session:
        assert session.scalar(select(Study)).state == StudyState.DONE  # its run still stands
        assert session.scalar(select(Report)).state == ReportState.WAITING
        (failed,) = audit.query(session, audit.AuditFilter(action="study.assembly_failed"))
    assert failed.detail == {"reason": "RuntimeError: a bug in the re-run rules", "state": "done"}
