"""The questions admins ask of the database: a study's timeline, recent studies with their
findings, counts and turnaround per day, and the node's health.

Every answer is plain data (``to_json`` turns it into JSON-ready values); the same functions
serve ``cxrnode audit`` and the admin HTTP API, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, distinct, func, literal_column, or_, select
from sqlalchemy.orm import Session, selectinload

from storage.actions import Action
from storage.audit import Outcome
from storage.run_summary import Finding, RunSummary
from storage.schema import (
    AuditChainHead,
    AuditEvent,
    Instance,
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    Report,
    Study,
    as_utc,
)

# Where the turnaround clock starts and stops (see ``stats``).
_RECEIVED, _QUEUED, _DONE = Action.INSTANCE_RECEIVED, Action.STUDY_QUEUED, Action.STUDY_DONE


@dataclass(frozen=True)
class RunOverview:
    """A run as the admin sees it: the job's row, the findings of its stored
    :class:`~storage.run_summary.RunSummary`, and its results' delivery."""

    run: int
    state: str
    reason: str
    text_source: str
    model_id: str | None
    claimed_by: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    error: str | None
    images: int
    findings: list[Finding]  # highest probability first
    results: dict[str, int]  # outbox items by state

    @property
    def present(self) -> list[Finding]:
        return [f for f in self.findings if f.present]


@dataclass(frozen=True)
class ReportSummary:
    id: int
    source: str
    message_type: str | None
    kind: str
    status: str | None
    state: str
    received_at: datetime
    sender: str | None


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    patient_id: str | None
    accession: str | None
    state: str
    first_received_at: datetime
    last_received_at: datetime
    instances: int
    processable: int
    runs: list[RunOverview]
    reports: list[ReportSummary] = field(default_factory=list)

    @property
    def latest(self) -> RunOverview | None:
        return self.runs[-1] if self.runs else None

    @property
    def turnaround_s(self) -> float | None:
        """Last instance received to the latest run done, when it is done."""
        run = self.latest
        if run is None or run.state != JobState.DONE:
            return None
        return (as_utc(run.updated_at) - as_utc(self.last_received_at)).total_seconds()


@dataclass(frozen=True)
class StudyTimeline:
    """Everything known about one study, and every audit event about it, oldest first."""

    study: StudySummary
    events: list[AuditEvent]


# Studies ------------------------------------------------------------------------------------


def find_study(session: Session, key: str) -> Study | None:
    """The study with this Study Instance UID, or else the latest with this accession."""
    study = session.scalar(select(Study).where(Study.study_uid == key))
    if study is None:
        study = session.scalar(
            select(Study).where(Study.accession == key).order_by(Study.id.desc()).limit(1)
        )
    return study


def study_timeline(session: Session, key: str) -> StudyTimeline | None:
    """What happened to a study: its state, runs, findings, reports and audit events.

    Parameters
    ----------
    key:
        A Study Instance UID or an accession number.

    Returns
    -------
    StudyTimeline | None
        None when no study has this UID or accession. The events include those of reports
        and orders carrying the study's accession before they were paired (no study UID yet).
    """
    study = find_study(session, key)
    if study is None:
        return None
    match = AuditEvent.study_uid == study.study_uid
    if study.accession:
        # Reports and orders name the accession before they are paired with the study.
        unpaired = (AuditEvent.accession == study.accession) & AuditEvent.study_uid.is_(None)
        match = or_(match, unpaired)
    events = session.scalars(select(AuditEvent).where(match).order_by(AuditEvent.id)).all()
    reports = session.scalars(
        select(Report).where(Report.study_id == study.id).order_by(Report.id)
    ).all()
    summary = summarize_study(session, study)
    summary = StudySummary(
        **{f.name: getattr(summary, f.name) for f in fields(summary) if f.name != "reports"},
        reports=[_report_summary(r) for r in reports],
    )
    return StudyTimeline(summary, list(events))


def recent_studies(session: Session, limit: int = 50, key: str | None = None) -> list[StudySummary]:
    """The studies that received an instance most recently, newest first.

    Parameters
    ----------
    key:
        When given, only studies with this Study Instance UID, accession or patient ID.
    """
    stmt = select(Study).options(selectinload(Study.jobs).selectinload(Job.outbox))
    if key:
        stmt = stmt.where(
            or_(Study.study_uid == key, Study.accession == key, Study.patient_id == key)
        )
    stmt = stmt.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
    studies = session.scalars(stmt).all()
    counts = _instance_counts(session, [s.id for s in studies])
    return [summarize_study(session, s, counts.get(s.id, (0, 0))) for s in studies]


def summarize_study(
    session: Session, study: Study, counts: tuple[int, int] | None = None
) -> StudySummary:
    """A study's state and runs, each run with its findings and delivery state."""
    if counts is None:
        counts = _instance_counts(session, [study.id]).get(study.id, (0, 0))
    return StudySummary(
        study_uid=study.study_uid,
        patient_id=study.patient_id,
        accession=study.accession,
        state=study.state,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        instances=counts[0],
        processable=counts[1],
        runs=[_run_overview(job) for job in study.jobs],
    )


def _instance_counts(session: Session, study_ids: list[int]) -> dict[int, tuple[int, int]]:
    if not study_ids:
        return {}
    rows = session.execute(
        select(
            Instance.study_id,
            func.count(Instance.id),
            func.sum(case((Instance.processable, 1), else_=0)),
        )
        .where(Instance.study_id.in_(study_ids))
        .group_by(Instance.study_id)
    )
    return {study_id: (total, int(processable or 0)) for study_id, total, processable in rows}


def _run_overview(job: Job) -> RunOverview:
    results: dict[str, int] = defaultdict(int)
    for item in job.outbox:
        results[item.state] += 1
    summary = RunSummary.from_json(job.result)
    return RunOverview(
        run=job.run,
        state=job.state,
        reason=job.reason,
        text_source=job.text_source,
        model_id=job.model_id,
        claimed_by=job.claimed_by,
        attempts=job.attempts,
        created_at=job.created_at,
        updated_at=job.updated_at,
        error=job.error,
        images=len(summary.images),
        findings=summary.findings,
        results=dict(results),
    )


def _report_summary(report: Report) -> ReportSummary:
    return ReportSummary(
        id=report.id,
        source=report.source,
        message_type=report.message_type,
        kind=report.kind,
        status=report.status,
        state=report.state,
        received_at=report.received_at,
        sender=report.sender,
    )


# Statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayCounts:
    day: str  # YYYY-MM-DD, UTC
    success: int
    warning: int
    failure: int
    studies_received: int
    studies_done: int
    jobs_failed: int
    sends_failed: int

    @property
    def total(self) -> int:
        return self.success + self.warning + self.failure


@dataclass(frozen=True)
class Percentiles:
    """Seconds: count, then the 50th, 90th, 95th percentile and the maximum."""

    count: int
    p50: float | None
    p90: float | None
    p95: float | None
    max: float | None

    @classmethod
    def of(cls, values: list[float]) -> Percentiles:
        ordered = sorted(values)
        if not ordered:
            return cls(0, None, None, None, None)
        return cls(
            len(ordered),
            percentile(ordered, 50),
            percentile(ordered, 90),
            percentile(ordered, 95),
            ordered[-1],
        )


@dataclass(frozen=True)
class Stats:
    since: datetime | None
    until: datetime | None
    days: list[DayCounts]
    failures_by_action: dict[str, int]
    # Last instance received -> study done (what the radiologist waits, stable age and pairing
    # window included), and study queued -> study done (the node's own work).
    turnaround_s: Percentiles
    processing_s: Percentiles


def stats(session: Session, since: datetime | None, until: datetime | None) -> Stats:
    """Events per outcome per day, study counts per day, failures per action, and turnaround
    percentiles of the studies done in ``[since, until)`` (either open)."""
    day = _day_expression(session)
    in_range = []
    if since is not None:
        in_range.append(AuditEvent.time >= since)
    if until is not None:
        in_range.append(AuditEvent.time < until)

    def count_action(action: Action):
        return func.count(case((AuditEvent.action == action, 1)))

    rows = session.execute(
        select(
            day.label("day"),
            func.count(case((AuditEvent.outcome == Outcome.SUCCESS, 1))),
            func.count(case((AuditEvent.outcome == Outcome.WARNING, 1))),
            func.count(case((AuditEvent.outcome == Outcome.FAILURE, 1))),
            func.count(distinct(case((AuditEvent.action == _RECEIVED, AuditEvent.study_uid)))),
            count_action(_DONE),
            count_action(Action.JOB_FAILED),
            count_action(Action.RESULT_SEND_FAILED),
        )
        .where(*in_range)
        .group_by(day)
        .order_by(day)
    ).all()
    days = [DayCounts(str(r[0]), *(int(v) for v in r[1:])) for r in rows]
    failures = session.execute(
        select(AuditEvent.action, func.count())
        .where(*in_range, AuditEvent.outcome == Outcome.FAILURE)
        .group_by(AuditEvent.action)
        .order_by(func.count().desc(), AuditEvent.action)
    ).all()
    turnaround, processing = _turnarounds(session, in_range)
    return Stats(
        since=since,
        until=until,
        days=days,
        failures_by_action={action: int(n) for action, n in failures},
        turnaround_s=Percentiles.of(turnaround),
        processing_s=Percentiles.of(processing),
    )


def _day_expression(session: Session):
    """The UTC calendar day of an event's time, as ``YYYY-MM-DD`` text, in SQL."""
    # Literals, not bound parameters: GROUP BY must repeat the very expression of the SELECT.
    if session.get_bind().dialect.name == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), AuditEvent.time)
        return func.to_char(utc, literal_column("'YYYY-MM-DD'"))
    return func.strftime(literal_column("'%Y-%m-%d'"), AuditEvent.time)  # naive UTC text


def _turnarounds(session: Session, in_range: list) -> tuple[list[float], list[float]]:
    done = session.execute(
        select(AuditEvent.study_uid, AuditEvent.time)
        .where(*in_range, AuditEvent.action == _DONE, AuditEvent.study_uid.is_not(None))
        .order_by(AuditEvent.id)
    ).all()
    if not done:
        return [], []
    starts: dict[str, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
    uids = sorted({uid for uid, _ in done})
    for chunk in range(0, len(uids), 500):
        rows = session.execute(
            select(AuditEvent.study_uid, AuditEvent.action, AuditEvent.time).where(
                AuditEvent.study_uid.in_(uids[chunk : chunk + 500]),
                AuditEvent.action.in_((_RECEIVED, _QUEUED)),
            )
        )
        for uid, action, time in rows:
            starts[uid][action].append(as_utc(time))
    turnaround, processing = [], []
    for uid, time in done:
        finished = as_utc(time)
        for action, out in ((_RECEIVED, turnaround), (_QUEUED, processing)):
            before = [t for t in starts[uid][action] if t <= finished]
            if before:
                out.append((finished - max(before)).total_seconds())
    return turnaround, processing


def percentile(ordered: list[float], pct: float) -> float:
    """Linear-interpolated percentile of already sorted values (``pct`` in 0..100)."""
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# Health -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueHealth:
    """The node's backlog, without identifiers (safe to show without a token)."""

    jobs: dict[str, int]  # unfinished jobs by state
    jobs_failed: int
    outbox_pending: int
    outbox_failed: int
    oldest_pending_result_at: datetime | None
    studies: dict[str, int]  # by state
    last_study_received_at: datetime | None
    last_study_state: str | None
    last_event_at: datetime | None
    audit_chain_seq: int


def queue_health(session: Session) -> QueueHealth:
    """Queue depth, delivery backlog, the last study's arrival and state, the chain length."""
    unfinished = Job.state.in_(JobState.UNFINISHED)
    jobs = dict(
        session.execute(select(Job.state, func.count()).where(unfinished).group_by(Job.state)).all()
    )
    jobs_failed = session.scalar(select(func.count()).where(Job.state == JobState.FAILED))
    outbox = dict(
        session.execute(
            select(OutboxItem.state, func.count())
            .where(OutboxItem.state != OutboxState.SENT)
            .group_by(OutboxItem.state)
        ).all()
    )
    oldest = session.scalar(
        select(func.min(OutboxItem.created_at)).where(OutboxItem.state == OutboxState.PENDING)
    )
    studies = dict(session.execute(select(Study.state, func.count()).group_by(Study.state)).all())
    last = session.execute(
        select(Study.last_received_at, Study.state)
        .order_by(Study.last_received_at.desc(), Study.id.desc())
        .limit(1)
    ).first()
    head = session.get(AuditChainHead, 1)
    return QueueHealth(
        jobs={state: int(jobs.get(state, 0)) for state in JobState.UNFINISHED},
        jobs_failed=int(jobs_failed or 0),
        outbox_pending=int(outbox.get(OutboxState.PENDING, 0)),
        outbox_failed=int(outbox.get(OutboxState.FAILED, 0)),
        oldest_pending_result_at=oldest,
        studies={state: int(n) for state, n in studies.items()},
        last_study_received_at=last[0] if last else None,
        last_study_state=last[1] if last else None,
        last_event_at=session.scalar(select(func.max(AuditEvent.time))),
        audit_chain_seq=head.last_seq if head else 0,
    )


# JSON ---------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """Dataclasses, events, datetimes (as UTC ISO ``...Z``) and containers as JSON-ready data."""
    from storage.audit import as_dict

    if isinstance(value, AuditEvent):
        return as_dict(value)
    if is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
        for extra in ("present", "turnaround_s", "total"):
            if hasattr(type(value), extra):
                out[extra] = to_json(getattr(value, extra))
        return out
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def iso_utc(value: datetime) -> str:
    """``2026-05-01T12:00:00.000Z`` (naive values are UTC, as SQLite returns them)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
