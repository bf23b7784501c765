"""The job queue: one job per processing run of a study, claimed by a worker."""

from __future__ import annotations

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from storage.schema import (
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    Report,
    Study,
    StudyState,
    as_utc,
    utcnow,
)


def queue_run(
    session: Session,
    study: Study,
    *,
    report: Report | None = None,
    reason: str = "first",
    replaces: Job | None = None,
) -> Job:
    """Open the next processing run of ``study``, reading ``report`` (or no text)."""
    study.runs += 1
    study.state = StudyState.QUEUED
    job = Job(
        study=study,
        run=study.runs,
        state=JobState.QUEUED,
        report=report,
        text_source=report.kind if report is not None else "none",
        reason=reason,
        replaces=replaces,
    )
    session.add(job)
    return job


def claim_next(session: Session) -> Job | None:
    """Take the oldest queued job for this worker, or return None.

    Safe with several workers, in threads or in processes sharing a PostgreSQL database: the
    candidates are row-locked with ``FOR UPDATE SKIP LOCKED`` (a row another worker is claiming
    is skipped, not waited for), and the conditional UPDATE takes a row only while it is still
    queued (SQLite, which ignores the lock clause, serialises writers instead). The job records
    the claiming node (``session.info["node_name"]``).
    """
    candidates = session.scalars(
        select(Job.id)
        .where(Job.state == JobState.QUEUED)
        .order_by(Job.id)
        .limit(5)
        .with_for_update(skip_locked=True)
    ).all()
    for job_id in candidates:
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING,
                attempts=Job.attempts + 1,
                updated_at=utcnow(),
                claimed_by=session.info.get("node_name"),
            )
        )
        if claimed.rowcount == 1:
            return session.get(Job, job_id)
    return None


def requeue_interrupted(session: Session) -> list[Job]:
    """Put jobs that were running when the node stopped back in the queue.

    With a ``node_name`` (several nodes share the queue), only the jobs this node claimed and
    those claimed before names were recorded: a job another node is running was not
    interrupted.
    """
    stmt = select(Job).where(Job.state == JobState.RUNNING)
    node_name = session.info.get("node_name")
    if node_name:
        stmt = stmt.where(or_(Job.claimed_by == node_name, Job.claimed_by.is_(None)))
    jobs = list(session.scalars(stmt))
    for job in jobs:
        requeue(session, job)
    return jobs


def requeue(session: Session, job: Job) -> None:
    """Put a job whose run was interrupted back in the queue, to be claimed again."""
    job.state = JobState.QUEUED
    job.updated_at = utcnow()


def finish_if_delivered(session: Session, job: Job) -> bool:
    """Mark ``job`` and its study done once every outbox item of the job was confirmed."""
    if job.state != JobState.SENDING:
        return False
    owed = session.scalar(
        select(OutboxItem.id)
        .where(OutboxItem.job_id == job.id, OutboxItem.state != OutboxState.SENT)
        .limit(1)
    )
    if owed is not None:
        return False
    job.state = JobState.DONE
    job.updated_at = utcnow()
    _close_study(job, StudyState.DONE)
    return True


def fail(session: Session, job: Job, error: str) -> None:
    """Mark ``job`` failed for good; its study is failed unless newer work exists."""
    job.state = JobState.FAILED
    job.error = error
    job.updated_at = utcnow()
    _close_study(job, StudyState.FAILED)


def _close_study(job: Job, state: str) -> None:
    """Give the study of its latest run ``state``; a study that received instances after the
    run was queued goes back to receiving instead, so a new run reads every image."""
    study = job.study
    if study.state != StudyState.QUEUED or job.run != study.runs:
        return
    grew = as_utc(study.last_received_at) > as_utc(job.created_at)
    study.state = StudyState.RECEIVING if grew else state
