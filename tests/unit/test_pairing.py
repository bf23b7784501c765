"""The pairing rules on a real SQLite file: right report, right study, and no other."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from node.config import Settings
from node.pairing import ReportPairing
from storage import audit
from storage.database import Database
from storage.reports import store_report
from storage.schema import Job, JobState, Report, ReportState, Study, StudyState, utcnow
from storage.studies import add_instance, complete_studies
from support.instances import frontal_cr

WINDOW_S = 300.0


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    return database


@pytest.fixture
def pairing() -> ReportPairing:
    return ReportPairing(Settings(stable_age_s=0, pairing_window_s=WINDOW_S))


def receive(db: Database, *, accession="ACC1", patient="P1", study_uid="1.2.3") -> None:
    header = frontal_cr(study_uid, patient_id=patient, accession=accession)
    with db.transaction() as session:
        add_instance(session, header, relpath="x.dcm", size=1, sha256="0", calling_ae="PACS")


def report(db: Database, msg: str, *, accession="ACC1", patient="P1", kind="report", status="F"):
    with db.transaction() as session:
        store_report(
            session,
            source="hl7",
            message_id=msg,
            kind=kind,
            text=f"{kind} text {msg}",
            accession=accession,
            patient_id=patient,
            status=status,
        )


def schedule(db: Database, pairing: ReportPairing, after_s: float = 0.0) -> Job | None:
    with db.transaction() as session:
        study = session.query(Study).one()
        job = pairing.schedule(session, study, utcnow() + timedelta(seconds=after_s))
        return (job.text_source, job.reason) if job else None


def actions(db: Database) -> list[str]:
    with db.transaction() as session:
        return [e.action for e in audit.query(session, audit.AuditFilter())]


def finish_latest_run(db: Database) -> None:
    with db.transaction() as session:
        study = session.query(Study).one()
        study.jobs[-1].state = JobState.DONE
        study.state = StudyState.DONE


def test_report_first_then_study_runs_with_the_report(db, pairing):
    report(db, "m1")
    receive(db)
    assert schedule(db, pairing) == ("report", "first")
    assert "pairing.paired" in actions(db)


def test_study_first_waits_then_runs_when_the_report_arrives(db, pairing):
    receive(db)
    assert schedule(db, pairing) is None
    report(db, "m1")
    with db.transaction() as session:
        (job,) = pairing.schedule_waiting(session, utcnow())
        assert job.text_source == "report"


def test_window_expiry_runs_image_only_or_with_the_indication(db, pairing):
    receive(db)
    assert schedule(db, pairing) is None
    assert schedule(db, pairing, after_s=WINDOW_S + 1) == ("none", "first")
    assert "pairing.window_expired" in actions(db)


def test_indication_alone_waits_for_the_report_then_is_used(db, pairing):
    report(db, "o1", kind="indication")
    receive(db)
    assert schedule(db, pairing) is None
    assert schedule(db, pairing, after_s=WINDOW_S + 1) == ("indication", "first")


def test_report_of_another_patient_is_refused_and_audited(db, pairing):
    report(db, "m1", patient="SOMEONE-ELSE")
    receive(db)
    assert schedule(db, pairing) is None
    with db.transaction() as session:
        refused = audit.query(session, audit.AuditFilter(action="pairing.refused"))
        assert refused[0].outcome == "failure"
        assert refused[0].detail["report_patient_id"] == "SOMEONE-ELSE"
        assert session.query(Job).count() == 0
        assert session.query(Report).one().state == ReportState.REFUSED


def test_report_without_patient_id_is_refused(db, pairing):
    report(db, "m1", patient=None)
    receive(db)
    assert schedule(db, pairing) is None
    assert "pairing.refused" in actions(db)


def test_late_report_after_image_only_run_triggers_a_rerun_that_replaces_it(db, pairing):
    receive(db)
    assert schedule(db, pairing, after_s=WINDOW_S + 1) == ("none", "first")
    finish_latest_run(db)
    report(db, "m1")
    with db.transaction() as session:
        (job,) = pairing.rerun_for_late_reports(session)
        assert (job.run, job.reason, job.text_source) == (2, "late report", "report")
        assert job.replaces.run == 1


def test_corrected_report_triggers_a_rerun_and_a_repeat_final_does_not(db, pairing):
    report(db, "m1", status="F")
    receive(db)
    assert schedule(db, pairing) == ("report", "first")
    finish_latest_run(db)
    report(db, "m2", status="F")
    with db.transaction() as session:
        assert pairing.rerun_for_late_reports(session) == []
    report(db, "m3", status="C")
    with db.transaction() as session:
        (job,) = pairing.rerun_for_late_reports(session)
        assert job.reason == "corrected report" and job.replaces.run == 1


def test_pairing_by_study_uid_when_the_accession_differs(db, pairing):
    with db.transaction() as session:
        store_report(
            session,
            source="csv",
            message_id="f:1",
            kind="report",
            text="t",
            accession="OTHER",
            study_uid="1.2.3",
            patient_id="P1",
        )
    receive(db)
    assert schedule(db, pairing) == ("report", "first")


def test_window_of_a_completed_study_starts_when_its_association_ended(db):
    # A long stable age: the window runs from the release, not from the stable age.
    pairing = ReportPairing(Settings(stable_age_s=3600, pairing_window_s=WINDOW_S))
    receive(db)
    with db.transaction() as session:
        complete_studies(session, ["1.2.3"])
    assert schedule(db, pairing, after_s=WINDOW_S - 5) is None
    assert schedule(db, pairing, after_s=WINDOW_S + 5) == ("none", "first")
