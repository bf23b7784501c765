"""The outbox: result objects owed to destinations, kept until each destination confirmed."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.schema import OutboxItem, OutboxState, utcnow


def add(session: Session, job_id: int, destination: str, kind: str, sop_uid: str, path: str):
    item = OutboxItem(job_id=job_id, destination=destination, kind=kind, sop_uid=sop_uid, path=path)
    session.add(item)
    return item


def due(session: Session, now: datetime | None = None) -> list[OutboxItem]:
    """Pending items whose next attempt is due, grouped by destination then job."""
    now = now or utcnow()
    stmt = (
        select(OutboxItem)
        .where(OutboxItem.state == OutboxState.PENDING, OutboxItem.next_attempt_at <= now)
        .order_by(OutboxItem.destination, OutboxItem.job_id, OutboxItem.id)
    )
    return list(session.scalars(stmt))


def mark_sent(item: OutboxItem) -> None:
    item.state = OutboxState.SENT
    item.sent_at = utcnow()
    item.attempts += 1
    item.last_error = None


def mark_attempt_failed(item: OutboxItem, error: str, retry_in: timedelta | None) -> None:
    """Record a failed delivery; ``retry_in`` None means give up on this item."""
    item.attempts += 1
    item.last_error = error
    if retry_in is None:
        item.state = OutboxState.FAILED
    else:
        item.next_attempt_at = utcnow() + retry_in
