"""Report and order texts from the feeds, stored once per message and waiting for a study."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.schema import Report, ReportState


class ReportOutcome:
    STORED = "stored"
    DUPLICATE = "duplicate"  # same source and message id, same content: already have it
    CONFLICT = "conflict"  # same source and message id, different content: not stored


def _limit(column: str) -> int:
    return Report.__table__.c[column].type.length


# What the schema holds; feeds check these before storing, to say which field is too long.
FIELD_LIMITS: dict[str, int] = {
    name: _limit(name)
    for name in ("message_id", "message_type", "accession", "study_uid", "patient_id", "status")
}
FIELD_LIMITS["sender"] = _limit("sender")

# The fields that make two arrivals of one message the same message.
_CONTENT = ("kind", "accession", "study_uid", "patient_id", "status", "text")


class ReportFieldTooLong(ValueError):
    """A value does not fit its column; ``field`` and ``limit`` say which and how long."""

    def __init__(self, field: str, length: int, limit: int) -> None:
        super().__init__(f"{field} is {length} characters long, at most {limit} fit")
        self.field = field
        self.limit = limit


def store_report(
    session: Session,
    *,
    source: str,
    message_id: str,
    kind: str,
    text: str,
    message_type: str | None = None,
    accession: str | None = None,
    study_uid: str | None = None,
    patient_id: str | None = None,
    status: str | None = None,
    sections: dict[str, str] | None = None,
    observed_at: datetime | None = None,
    sender: str | None = None,
) -> str:
    """Add a report in state ``waiting`` unless this source already delivered this message.

    Parameters
    ----------
    session:
        The caller's transaction; the row commits with it (and with the caller's audit event).
    source, message_id:
        ``"hl7"`` and MSH-10, or ``"csv"`` and ``"<file sha256[:16]>:<row>"``: together they
        identify one delivery of one message.
    kind:
        ``"report"`` or ``"indication"``.
    text:
        The text as received: HL7 escapes decoded by the feed, lines joined, not cleaned.
    sections:
        Section name (``"FINDINGS"``, ``"IMPRESSION"``...: ``models.sections``) to its text, as
        the feed found them; the model selects from these and does not split the text again.

    Returns
    -------
    str
        ``ReportOutcome.STORED``; ``DUPLICATE`` when the message is already stored with the
        same content; ``CONFLICT`` when the id is taken by different content (nothing stored:
        a sender reusing ids must not overwrite a report silently).

    Raises
    ------
    ReportFieldTooLong
        A value is longer than its column.
    ValueError
        ``kind`` is not ``report`` or ``indication``.
    """
    if kind not in ("report", "indication"):
        raise ValueError(f"kind must be 'report' or 'indication', not {kind!r}")
    fields = {
        "message_id": message_id,
        "message_type": message_type,
        "accession": accession,
        "study_uid": study_uid,
        "patient_id": patient_id,
        "status": status,
        "sender": sender,
    }
    for name, value in fields.items():
        if value is not None and len(value) > FIELD_LIMITS[name]:
            raise ReportFieldTooLong(name, len(value), FIELD_LIMITS[name])

    report = Report(
        source=source,
        kind=kind,
        text=text,
        sections=sections or None,
        observed_at=observed_at,
        state=ReportState.WAITING,
        **fields,
    )
    existing = find_report(session, source, message_id)
    if existing is not None:
        return _compare(existing, report)
    try:
        # A savepoint: losing a race to a concurrent insert of the same message must not roll
        # back the caller's other work (its audit event).
        with session.begin_nested():
            session.add(report)
    except IntegrityError:
        existing = find_report(session, source, message_id)
        if existing is None:
            raise
        return _compare(existing, report)
    return ReportOutcome.STORED


def _compare(existing: Report, arriving: Report) -> str:
    same = all(getattr(existing, f) == getattr(arriving, f) for f in _CONTENT)
    return ReportOutcome.DUPLICATE if same else ReportOutcome.CONFLICT


def find_report(session: Session, source: str, message_id: str) -> Report | None:
    """The report a source delivered under a message id, if any."""
    return session.scalar(
        select(Report).where(Report.source == source, Report.message_id == message_id)
    )


def waiting_reports(
    session: Session, accession: str | None = None, study_uid: str | None = None
) -> Sequence[Report]:
    """Reports not yet paired, oldest first.

    Parameters
    ----------
    accession, study_uid:
        When given, only reports with this accession number or (either matching) this Study
        Instance UID; with neither, every waiting report.
    """
    stmt = select(Report).where(Report.state == ReportState.WAITING)
    keys = []
    if accession:
        keys.append(Report.accession == accession)
    if study_uid:
        keys.append(Report.study_uid == study_uid)
    if keys:
        stmt = stmt.where(or_(*keys))
    return session.scalars(stmt.order_by(Report.received_at, Report.id)).all()
