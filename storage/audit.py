"""The audit log: every step the node takes with a study or a message, and its queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.schema import AuditEvent


class Outcome:
    SUCCESS = "success"
    WARNING = "warning"  # done, with something the admin should know (e.g. skipped instance)
    FAILURE = "failure"


def record(
    session: Session,
    action: str,
    outcome: str = Outcome.SUCCESS,
    *,
    actor_ae: str | None = None,
    actor_ip: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    accession: str | None = None,
    patient_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to ``session``; it commits with the work it describes."""
    event = AuditEvent(
        action=action,
        outcome=outcome,
        actor_ae=actor_ae,
        actor_ip=actor_ip,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        accession=accession,
        patient_id=patient_id,
        detail=detail,
    )
    session.add(event)
    return event


@dataclass(frozen=True)
class AuditFilter:
    study_uid: str | None = None
    accession: str | None = None
    patient_id: str | None = None
    action: str | None = None  # exact name, or a prefix ending in "." (e.g. "results.")
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = 1000


def query(session: Session, where: AuditFilter) -> Sequence[AuditEvent]:
    """Return the events matching every given field of ``where``, oldest first."""
    stmt = select(AuditEvent)
    if where.study_uid:
        stmt = stmt.where(AuditEvent.study_uid == where.study_uid)
    if where.accession:
        stmt = stmt.where(AuditEvent.accession == where.accession)
    if where.patient_id:
        stmt = stmt.where(AuditEvent.patient_id == where.patient_id)
    if where.action:
        if where.action.endswith("."):
            stmt = stmt.where(AuditEvent.action.startswith(where.action, autoescape=True))
        else:
            stmt = stmt.where(AuditEvent.action == where.action)
    if where.outcome:
        stmt = stmt.where(AuditEvent.outcome == where.outcome)
    if where.since:
        stmt = stmt.where(AuditEvent.time >= where.since)
    if where.until:
        stmt = stmt.where(AuditEvent.time < where.until)
    # Newest N, shown oldest first.
    stmt = stmt.order_by(AuditEvent.id.desc())
    if where.limit:
        stmt = stmt.limit(where.limit)
    return list(reversed(session.scalars(stmt).all()))


def as_dict(event: AuditEvent) -> dict[str, Any]:
    """Return an event as plain JSON-serialisable data."""
    return {
        "id": event.id,
        "time": _utc_iso(event.time),
        "actor_ae": event.actor_ae,
        "actor_ip": event.actor_ip,
        "action": event.action,
        "outcome": event.outcome,
        "study_uid": event.study_uid,
        "series_uid": event.series_uid,
        "sop_uid": event.sop_uid,
        "accession": event.accession,
        "patient_id": event.patient_id,
        "detail": event.detail,
    }


def _utc_iso(value: datetime) -> str:
    # SQLite hands back naive datetimes; every time we store is UTC.
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
