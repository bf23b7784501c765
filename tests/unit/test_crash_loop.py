"""The crash-loop breaker on a real SQLite file: a run the node keeps dying under is failed
after ``max_job_attempts`` starts, and the studies claimed in its batch get their runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from node.recovery import recover_interrupted_runs
from storage import audit, jobs
from storage.database import Database
from storage.schema import Job, JobState, Study, StudyState
from storage.studies import add_instance
from support.instances import frontal_cr


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    return database


def queue_studies(db: Database, uids: list[str], images: int = 1) -> None:
    for uid in uids:
        with db.transaction() as session:
            for n in range(images):
                header = frontal_cr(uid, f"{uid}.{n + 1}")
                add_instance(
                    session, header, relpath=f"{uid}.{n}", size=1, sha256="0", calling_ae="X"
                )
        with db.transaction() as session:
            jobs.queue_run(session, session.scalar(select(Study).where(Study.study_uid == uid)))


def claim(db: Database, limit: int = 8, max_images: int | None = None) -> list[str]:
    with db.transaction() as session:
        return [j.study.study_uid for j in jobs.claim_batch(session, limit, max_images)]


def node_dies_and_restarts(db: Database, max_attempts: int = 3):
    """What a restart after a kill does: the claimed runs are still 'running'."""
    with db.transaction() as session:
        return recover_interrupted_runs(session, max_attempts)


def test_a_run_the_node_keeps_dying_under_is_failed_and_its_batch_mates_run(db):
    queue_studies(db, ["1.1", "1.2", "1.3"])  # 1.1 is the one that kills the node
    assert claim(db) == ["1.1", "1.2", "1.3"]
    assert node_dies_and_restarts(db).requeued == (1, 2, 3)
    # Each run interrupted once is claimed alone from now on: 1.1 takes only itself down.
    assert claim(db) == ["1.1"]
    node_dies_and_restarts(db)
    assert claim(db) == ["1.1"]
    recovered = node_dies_and_restarts(db)
    assert recovered.failed == (1,) and recovered.requeued == ()
    assert claim(db, limit=1) == ["1.2"]
    assert claim(db, limit=1) == ["1.3"]
    with db.transaction() as session:
        bad = session.get(Job, 1)
        assert bad.state == JobState.FAILED and bad.study.state == StudyState.FAILED
        assert bad.error == "the node died while running it, 3 times"
        events = audit.query(session, audit.AuditFilter(action="job."))
        actions = [(e.action, e.study_uid, e.outcome) for e in events]
    assert ("job.failed", "1.1", "failure") in actions
    assert actions.count(("job.requeued", "1.1", "warning")) == 2


def test_restarts_without_limit_requeue_until_the_setting(db):
    queue_studies(db, ["2.1"])
    for _ in range(4):
        claim(db)
        assert node_dies_and_restarts(db, max_attempts=5).failed == ()
    claim(db)
    assert node_dies_and_restarts(db, max_attempts=5).failed == (1,)


def test_a_batch_stops_at_the_image_budget_beyond_its_first_study(db):
    queue_studies(db, ["3.1", "3.2"], images=3)
    queue_studies(db, ["3.3"], images=1)
    # 3.1 leaves room for 1 more image: 3.2 (3 images) waits, 3.3 (1 image) joins.
    assert claim(db, max_images=4) == ["3.1", "3.3"]
    assert claim(db, max_images=4) == ["3.2"]
