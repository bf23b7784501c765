"""Job claims with several workers sharing one queue (threads standing in for processes, each
with its own connection), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter

from storage import jobs
from storage.database import Database
from storage.schema import Job, JobState, Study


def queue(db: Database, n: int) -> None:
    with db.transaction() as session:
        for i in range(n):
            study = Study(study_uid=f"1.2.{i}", instance_count=1, runs=0)
            session.add(study)
            jobs.queue_run(session, study)


def test_each_job_is_claimed_by_exactly_one_worker(database_url):
    main = Database(database_url)
    main.create_schema()
    queue(main, 30)
    claims: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        db = Database(database_url, node_name=name)
        while True:
            with db.transaction() as session:
                job = jobs.claim_next(session)
                if job is None:
                    return
                with lock:
                    claims.append((name, job.id))
        db.dispose()

    threads = [threading.Thread(target=worker, args=(f"worker-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(Counter(job_id for _, job_id in claims).values()) == [1] * 30
    with main.transaction() as session:
        rows = session.query(Job).all()
        assert {j.state for j in rows} == {JobState.RUNNING}
        assert {j.attempts for j in rows} == {1}
        assert {(j.claimed_by, j.id) for j in rows} == set(claims)


def test_a_restarting_node_requeues_only_its_own_interrupted_jobs(database_url):
    Database(database_url).create_schema()
    a = Database(database_url, node_name="receiver")
    b = Database(database_url, node_name="gpu-1")
    queue(a, 2)
    with a.transaction() as session:
        mine = jobs.claim_next(session).id
    with b.transaction() as session:
        theirs = jobs.claim_next(session).id
    with a.transaction() as session:
        assert [j.id for j in jobs.requeue_interrupted(session)] == [mine]
    with a.transaction() as session:
        assert session.get(Job, theirs).state == JobState.RUNNING
