"""The job queue: one job per processing run of a study, claimed by a worker."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from storage.schema import (
    Instance,
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    Report,
    Study,
    StudyState,
    as_utc,
    change_state,
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
    change_state(study, StudyState.QUEUED)
    study.runs += 1
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


def claim_batch(session: Session, limit: int, max_images: int | None = None) -> list[Job]:
    """Claim up to ``limit`` queued jobs to run together, oldest first.

    A job claimed before (its run was interrupted: the node or a builder died under it) is
    claimed alone, and never joins another's batch: if it is what kills the node, it takes
    only itself down each time, and its batch-mates of the first crash run without it. With
    ``max_images``, jobs join the first one only while the batch's model images (each job
    counted at most ``max_images``) stay within it.
    """
    first = claim_next(session)
    if first is None:
        return []
    claimed = [first]
    if first.attempts > 1:
        return claimed
    room = (
        None if max_images is None else max_images - min(model_images(session, first), max_images)
    )
    while len(claimed) < limit and (room is None or room > 0):
        job = claim_next(session, fresh_only=True, max_images=room)
        if job is None:
            break
        claimed.append(job)
        if room is not None:
            room -= model_images(session, job)
    return claimed


def model_images(session: Session, job: Job | int) -> int:
    """How many model inputs (processable instances) the study of ``job`` holds."""
    job_id = job if isinstance(job, int) else job.id
    return session.scalar(
        select(func.count(Instance.id))
        .join(Job, Job.study_id == Instance.study_id)
        .where(Job.id == job_id, Instance.processable.is_(True))
    )


def claim_next(
    session: Session, *, fresh_only: bool = False, max_images: int | None = None
) -> Job | None:
    """Take the oldest queued job for this worker, or return None.

    Safe with several workers, in threads or in processes sharing a PostgreSQL database: the
    candidates are row-locked with ``FOR UPDATE SKIP LOCKED`` (a row another worker is claiming
    is skipped, not waited for), and the conditional UPDATE takes a row only while it is still
    queued (SQLite, which ignores the lock clause, serialises writers instead). The job records
    the claiming node (``session.info["node_name"]``). A job deferred until ``not_before``
    waits until then; with ``fresh_only``, only jobs never claimed before are taken; with
    ``max_images``, only jobs of at most that many model images.
    """
    now = utcnow()
    stmt = select(Job.id).where(
        Job.state == JobState.QUEUED, or_(Job.not_before.is_(None), Job.not_before <= now)
    )
    if fresh_only:
        stmt = stmt.where(Job.attempts == 0)
    # The QUEUED -> RUNNING move of storage.schema.JOB_TRANSITIONS, as one conditional UPDATE.
    candidates = session.scalars(
        stmt.order_by(Job.id).limit(5).with_for_update(skip_locked=True)
    ).all()
    for job_id in candidates:
        if max_images is not None and model_images(session, job_id) > max_images:
            continue
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING,
                attempts=Job.attempts + 1,
                updated_at=now,
                not_before=None,
                claimed_by=session.info.get("node_name"),
            )
        )
        if claimed.rowcount == 1:
            return session.get(Job, job_id)
    return None


def interrupted(session: Session) -> list[Job]:
    """Jobs that were running when this node stopped.

    With a ``node_name`` (several nodes share the queue), only the jobs this node claimed and
    those claimed before names were recorded: a job another node is running was not
    interrupted.
    """
    stmt = select(Job).where(Job.state == JobState.RUNNING).order_by(Job.id)
    node_name = session.info.get("node_name")
    if node_name:
        stmt = stmt.where(or_(Job.claimed_by == node_name, Job.claimed_by.is_(None)))
    return list(session.scalars(stmt))


def requeue_interrupted(session: Session) -> list[Job]:
    """Put jobs that were running when the node stopped (:func:`interrupted`) back in the
    queue; return them."""
    jobs = interrupted(session)
    for job in jobs:
        requeue(session, job)
    return jobs


def fail_crash_looping(session: Session, max_attempts: int) -> list[Job]:
    """Fail the interrupted jobs (:func:`interrupted`) already claimed ``max_attempts`` times:
    a run the node died under that often is what kills it (a decompression bomb, an image too
    large for the memory), and re-queueing it again would be a crash loop. Return them."""
    looping = [job for job in interrupted(session) if job.attempts >= max_attempts]
    for job in looping:
        fail(session, job, f"the node died while running it, {job.attempts} times")
    return looping


def requeue(session: Session, job: Job, not_before: datetime | None = None) -> None:
    """Put a job whose run was interrupted back in the queue, to be claimed again (not before
    ``not_before``, when given)."""
    change_state(job, JobState.QUEUED)
    job.updated_at = utcnow()
    job.not_before = not_before


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
    change_state(job, JobState.DONE)
    job.updated_at = utcnow()
    _close_study(job, StudyState.DONE)
    return True


def fail(session: Session, job: Job, error: str) -> None:
    """Mark ``job`` failed for good; its study is failed unless newer work exists."""
    change_state(job, JobState.FAILED)
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
    change_state(study, StudyState.RECEIVING if grew else state)
