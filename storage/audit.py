"""The audit log: every step the node takes with a study or a message, and its queries.

Events are sealed into a hash chain when their transaction commits (``storage.audit_chain``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from storage import audit_chain
from storage.actions import Action
from storage.identifiers import StudyIds
from storage.schema import AuditEvent, utcnow


class Outcome:
    SUCCESS = "success"
    WARNING = "warning"  # done, with something the admin should know (e.g. skipped instance)
    FAILURE = "failure"
    ALL = (SUCCESS, WARNING, FAILURE)


def record(
    session: Session,
    action: Action,
    outcome: str = Outcome.SUCCESS,
    *,
    ids: StudyIds | None = None,
    actor_ae: str | None = None,
    actor_ip: str | None = None,
    actor_user: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    accession: str | None = None,
    patient_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add one audit event to ``session``; it commits, sealed, with the work it describes.

    Parameters
    ----------
    action:
        What happened (``Action.INSTANCE_RECEIVED``); stored as its name, ``<subject>.<verb>``.
    outcome:
        ``Outcome.SUCCESS``, ``WARNING`` or ``FAILURE``.
    ids:
        The study the event is about; or give ``study_uid``, ``accession`` and ``patient_id``
        one by one (not both ways).
    actor_ae, actor_ip, actor_user:
        Who did it: a peer's AE title and address, or an admin's user name.
    detail:
        JSON-serialisable facts the admin needs (reasons, model, probabilities, timings).

    Raises
    ------
    TypeError
        When ``ids`` and one of the identifiers it holds are both given.
    """
    if ids is not None:
        if study_uid is not None or accession is not None or patient_id is not None:
            raise TypeError("give a study's identifiers as ids or one by one, not both ways")
        study_uid, accession, patient_id = ids.study_uid, ids.accession, ids.patient_id
    event = AuditEvent(
        # The time the step happened, not the commit: sealing may come a moment later.
        time=utcnow(),
        action=str(action),  # the plain name, as it reads back from the database
        outcome=outcome,
        actor_ae=actor_ae,
        actor_ip=actor_ip,
        actor_user=actor_user,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        accession=accession,
        patient_id=patient_id,
        detail=detail,
    )
    session.add(event)
    audit_chain.track(session, event)
    return event


@dataclass(frozen=True)
class AuditFilter:
    """Which events to list; every given field must match.

    ``action`` is an exact name, or a prefix ending in ``.`` (e.g. ``result.``). ``model`` is a
    model package id (``name@version+hash``), or its ``name`` or ``name@version`` part: events
    whose detail names that model (``inference.completed``). ``since`` is inclusive, ``until``
    exclusive. ``limit`` keeps the newest N (None or 0: all).
    """

    study_uid: str | None = None
    accession: str | None = None
    patient_id: str | None = None
    action: str | None = None
    outcome: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = 1000

    def describe(self) -> dict[str, Any]:
        """The filters given, as plain data (for an admin action's audit detail)."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if value is None or name == "limit":
                continue
            out[name] = _utc_iso(value) if isinstance(value, datetime) else value
        return out


def filtered(where: AuditFilter) -> Select:
    """The SELECT of events matching ``where``, unordered and unlimited."""
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
    if where.model:
        model = AuditEvent.detail["model"].as_string()
        stmt = stmt.where(
            or_(
                model == where.model,
                model.startswith(where.model + "@", autoescape=True),
                model.startswith(where.model + "+", autoescape=True),
            )
        )
    if where.since:
        stmt = stmt.where(AuditEvent.time >= where.since)
    if where.until:
        stmt = stmt.where(AuditEvent.time < where.until)
    return stmt


def query(session: Session, where: AuditFilter) -> Sequence[AuditEvent]:
    """Return the events matching every given field of ``where``, oldest first."""
    # Newest N, shown oldest first.
    stmt = filtered(where).order_by(AuditEvent.id.desc())
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
        "actor_user": event.actor_user,
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
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
