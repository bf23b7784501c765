"""Study assembly, job claims and the outbox on a real SQLite file."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from storage import jobs, outbox
from storage.database import Database
from storage.schema import Job, JobState, OutboxState, StudyState, utcnow
from storage.studies import add_instance, complete_studies, stable_studies
from support.instances import frontal_cr


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    return database


def receive(db: Database, study_uid: str, sop_uid: str) -> None:
    header = frontal_cr(study_uid, sop_uid, series_uid="1.2.3", accession="A1")
    with db.transaction() as session:
        add_instance(session, header, relpath=f"{sop_uid}.dcm", size=1, sha256="0", calling_ae="X")


def test_database_file_is_private(tmp_path: Path, db: Database):
    assert ((tmp_path / "node.db").stat().st_mode & 0o777) == 0o600


def test_a_study_is_stable_only_after_its_last_instance_aged(db: Database):
    receive(db, "1.1", "1.1.1")
    with db.transaction() as session:
        assert stable_studies(session, utcnow() - timedelta(seconds=5)) == []
        assert [s.study_uid for s in stable_studies(session, utcnow())] == ["1.1"]


def test_a_job_is_claimed_once(db: Database):
    receive(db, "1.1", "1.1.1")
    with db.transaction() as session:
        jobs.queue_run(session, stable_studies(session, utcnow())[0])
    with db.transaction() as session:
        first = jobs.claim_next(session)
        assert first is not None and first.state == JobState.RUNNING and first.attempts == 1
    with db.transaction() as session:
        assert jobs.claim_next(session) is None


def test_interrupted_job_is_requeued_and_claimed_again(db: Database):
    receive(db, "1.1", "1.1.1")
    with db.transaction() as session:
        jobs.queue_run(session, stable_studies(session, utcnow())[0])
    with db.transaction() as session:
        jobs.claim_next(session)
    with db.transaction() as session:
        assert len(jobs.requeue_interrupted(session)) == 1
    with db.transaction() as session:
        job = jobs.claim_next(session)
        assert job.attempts == 2


def test_job_is_done_only_when_every_outbox_item_was_confirmed(db: Database):
    receive(db, "1.1", "1.1.1")
    with db.transaction() as session:
        job = jobs.queue_run(session, stable_studies(session, utcnow())[0])
        session.flush()
        job.state = JobState.SENDING
        outbox.add(session, job.id, "PACS@h:1", "SR", "9.1", "a.dcm")
        outbox.add(session, job.id, "PACS@h:1", "SC", "9.2", "b.dcm")
    with db.transaction() as session:
        first, second = outbox.due(session)
        outbox.mark_sent(first)
        outbox.mark_attempt_failed(second, "refused", timedelta(seconds=60))
        job = session.get(Job, first.job_id)
        assert not jobs.finish_if_delivered(session, job)
        assert outbox.due(session) == []  # the failed one waits for its backoff
    with db.transaction() as session:
        (second,) = outbox.due(session, now=utcnow() + timedelta(seconds=61))
        outbox.mark_sent(second)
        job = session.get(Job, second.job_id)
        assert jobs.finish_if_delivered(session, job)
        assert job.state == JobState.DONE and job.study.state == StudyState.DONE
        assert second.state == OutboxState.SENT


def test_new_instance_after_processing_reopens_the_study(db: Database):
    receive(db, "1.1", "1.1.1")
    with db.transaction() as session:
        study = stable_studies(session, utcnow())[0]
        job = jobs.queue_run(session, study)
        job.state = JobState.SENDING
        session.flush()
        jobs.finish_if_delivered(session, job)
        assert study.state == StudyState.DONE
    receive(db, "1.1", "1.1.2")
    with db.transaction() as session:
        (study,) = stable_studies(session, utcnow())
        assert study.state == StudyState.RECEIVING and study.instance_count == 2


def test_a_completed_study_is_stable_before_its_stable_age(db: Database):
    receive(db, "1.1", "1.1.1")
    receive(db, "2.2", "2.2.1")
    long_ago = utcnow() - timedelta(hours=1)
    with db.transaction() as session:
        assert [s.study_uid for s in complete_studies(session, ["1.1"])] == ["1.1"]
    with db.transaction() as session:
        assert [s.study_uid for s in stable_studies(session, long_ago)] == ["1.1"]
    # A new instance makes the study incomplete again, until its own association ends.
    receive(db, "1.1", "1.1.2")
    with db.transaction() as session:
        assert stable_studies(session, long_ago) == []


def test_a_study_that_grew_while_its_run_was_queued_is_received_again(db: Database):
    receive(db, "1.1", "1.1.1")
    with db.transaction() as session:
        job = jobs.queue_run(session, stable_studies(session, utcnow())[0])
        job.state = JobState.SENDING
    receive(db, "1.1", "1.1.2")  # after the run was queued: that run never read it
    with db.transaction() as session:
        job = session.get(Job, job.id)
        assert jobs.finish_if_delivered(session, job)
        assert job.state == JobState.DONE
        assert job.study.state == StudyState.RECEIVING
