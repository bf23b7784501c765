"""Resending a run's results and re-running a study, as an admin asks from the CLI or API."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from node.config import Destination, Settings
from node.reprocess import ReprocessRefused, rerun, resend
from storage import audit, jobs, outbox
from storage.database import Database
from storage.schema import (
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    Study,
    StudyState,
    change_state,
    utcnow,
)
from storage.studies import add_instance
from support.instances import frontal_cr

PACS = Destination("PACS", "pacs.example", 104)
ARCHIVE = Destination("ARCHIVE", "archive.example", 11112)
ADMIN = {"actor_user": "alice"}


@pytest.fixture
def db(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    return db


def _finished_run(db: Database, state: str = JobState.DONE) -> None:
    """Study 1.1 with one run that built an SR and a capture, sent to PACS."""
    with db.transaction() as session:
        add_instance(
            session,
            frontal_cr("1.1", accession="ACC1"),
            relpath="x",
            size=1,
            sha256="0",
            calling_ae="X",
        )
        job = jobs.queue_run(session, session.scalar(select(Study)))
    with db.transaction() as session:
        (job,) = jobs.claim_batch(session, 1)
        change_state(job, JobState.SENDING)
        for kind, uid in (("SR", "9.1"), ("SC", "9.2")):
            row = outbox.add(session, job.id, str(PACS), kind, uid, f"1.1/run-1/{uid}.dcm")
            row.state, row.attempts = OutboxState.SENT, 1
        session.flush()
        if state == JobState.DONE:
            assert jobs.finish_if_delivered(session, job)
        else:
            jobs.fail(session, job, "delivery to PACS abandoned")


def _rows(db: Database) -> list[tuple[str, str, str, int]]:
    with db.reading() as session:
        return [
            (r.destination, r.sop_uid, r.state, r.attempts)
            for r in session.scalars(select(OutboxItem).order_by(OutboxItem.id))
        ]


@pytest.mark.parametrize("ended", [JobState.DONE, JobState.FAILED])
def test_resend_puts_the_results_back_in_the_outbox_and_reopens_the_run(db, ended) -> None:
    _finished_run(db, ended)
    settings = Settings(destinations=(PACS,))
    with db.transaction() as session:
        done = resend(session, settings, "ACC1", actor=ADMIN)
    assert (done.run, done.destinations, done.objects) == (1, (str(PACS),), 2)
    assert _rows(db) == [(str(PACS), "9.1", "pending", 0), (str(PACS), "9.2", "pending", 0)]
    with db.reading() as session:
        job = session.scalar(select(Job))
        assert (job.state, job.study.state) == (JobState.SENDING, StudyState.QUEUED)
        assert outbox.due(session, utcnow())  # the next delivery round sends them
        (event,) = audit.query(session, audit.AuditFilter(action="result.resend_requested"))
    assert event.actor_user == "alice" and event.study_uid == "1.1"
    assert event.detail == {"run": 1, "destinations": [str(PACS)], "objects": 2}


def test_resend_to_a_destination_added_since_owes_it_what_it_receives(db) -> None:
    _finished_run(db)
    settings = Settings(
        destinations=(PACS, ARCHIVE), destination_outputs=(f"{ARCHIVE.ae_title}=SR",)
    )
    with db.transaction() as session:
        done = resend(session, settings, "1.1", destination="ARCHIVE")
    assert done.objects == 1
    assert (str(ARCHIVE), "9.1", "pending", 0) in _rows(db)
    assert (str(PACS), "9.1", "sent", 1) in _rows(db)  # the other destination is left alone


@pytest.mark.parametrize(
    ("key", "destination", "message"),
    [
        ("nope", None, "no study with"),
        ("1.1", "ELSEWHERE", "not a configured destination"),
    ],
)
def test_resend_refuses_what_it_cannot_do(db, key, destination, message) -> None:
    _finished_run(db)
    with db.transaction() as session, pytest.raises(ReprocessRefused, match=message):
        resend(session, Settings(destinations=(PACS,)), key, destination)


def test_resend_refuses_a_run_in_progress_and_purged_results(db) -> None:
    _finished_run(db)
    settings = Settings(destinations=(PACS,))
    with db.transaction() as session:
        session.scalar(select(Job)).results_purged_at = utcnow()
    with db.transaction() as session, pytest.raises(ReprocessRefused, match="were purged"):
        resend(session, settings, "1.1")
    with db.transaction() as session:
        rerun(session, "1.1")
    with db.transaction() as session, pytest.raises(ReprocessRefused, match="still queued"):
        resend(session, settings, "1.1")


def test_rerun_queues_a_new_run_replacing_the_last_and_audits_who_asked(db) -> None:
    _finished_run(db)
    with db.transaction() as session:
        done = rerun(session, "ACC1", actor=ADMIN)
    assert (done.run, done.replaces_run) == (2, 1)
    with db.reading() as session:
        runs = session.scalars(select(Job).order_by(Job.run)).all()
        assert [(j.run, j.state, j.reason) for j in runs] == [
            (1, JobState.DONE, "first"),
            (2, JobState.QUEUED, "admin request"),
        ]
        assert runs[1].replaces_job_id == runs[0].id
        assert runs[1].study.state == StudyState.QUEUED
        (event,) = audit.query(
            session, audit.AuditFilter(action="study.queued", since=runs[1].created_at)
        )
    assert event.actor_user == "alice" and event.detail["reason"] == "admin request"
    with db.transaction() as session, pytest.raises(ReprocessRefused, match="still queued"):
        rerun(session, "ACC1")
