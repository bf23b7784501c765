"""Purging spooled instances of finished studies after the retention period."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.schema import Instance, Study, StudyState, utcnow

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
