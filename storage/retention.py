"""Purging spooled instances of finished studies, and result files of finished runs, after
the retention period."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.schema import Instance, Job, JobState, Study, StudyState, utcnow

FINISHED = (StudyState.DONE, StudyState.SKIPPED, StudyState.FAILED)


def purgeable(session: Session, received_before: datetime, limit: int = 500) -> list[Instance]:
    """Spooled instances of finished studies whose last instance arrived before the cutoff."""
    stmt = (
        select(Instance)
        .join(Study)
        .where(
            Instance.purged_at.is_(None),
            Study.state.in_(FINISHED),
            Study.last_received_at < received_before,
        )
        .order_by(Instance.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def mark_purged(instance: Instance) -> None:
    instance.purged_at = utcnow()


def purgeable_results(session: Session, finished_before: datetime, limit: int = 200) -> list[Job]:
    """Finished runs (delivered, or failed) whose result files are still kept and whose last
    change is older than the cutoff."""
    stmt = (
        select(Job)
        .where(
            Job.results_purged_at.is_(None),
            Job.state.in_((JobState.DONE, JobState.FAILED)),
            Job.updated_at < finished_before,
        )
        .order_by(Job.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))
