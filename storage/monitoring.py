"""What the node's monitoring reads of the database: the backlog as it is now, and the audit
events that move its counters, read from where the previous read stopped.

Every figure comes from rows that all node processes share (a receiver and its workers, see
``role``), so each process serving ``/metrics`` reports the same totals, and a restart loses no
count: the counters are sums over the audit log, which is only ever appended to. The events are
read by their ``chain_seq``, which numbers them in commit order without gaps
(``storage.audit_chain``): once event N is seen, no event numbered below N can still appear, so
a reader that remembers the last number it read never misses or double-counts one, on SQLite
or PostgreSQL, whatever the order of the ids.

Plain data, no Prometheus here: ``node.metrics`` turns it into metric families.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.actions import Action
from storage.schema import (
    AuditChainHead,
    AuditEvent,
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    Study,
    as_utc,
)

RECEIVED, QUEUED, DONE = Action.INSTANCE_RECEIVED, Action.STUDY_QUEUED, Action.STUDY_DONE
INFERENCE = Action.INFERENCE_COMPLETED
# Refused connections are written one row per peer and window, with the count it stands for
# (``node.refusals``).
REFUSED_CONNECTIONS = (
    Action.ASSOCIATION_REJECTED,
    Action.ASSOCIATION_TLS_FAILED,
    Action.ASSOCIATION_PDU_TOO_LARGE,
    Action.ASSOCIATION_PDU_TIMEOUT,
    Action.ASSOCIATION_MESSAGE_TIMEOUT,
)
DELIVERY = (Action.RESULT_SENT, Action.RESULT_SEND_FAILED, Action.RESULT_ABANDONED)
# The events counters count by a label of their detail (every event is counted by action).
LABELLED = (Action.INSTANCE_REFUSED, *DELIVERY, *REFUSED_CONNECTIONS)
_CHUNK = 500  # identifiers in one IN (...)
# The action, as an expression no index serves: filtering on the column itself lets SQLite's
# planner take the action's index and scan every row of that action ever written, where the
# range of chain_seq (or the study's UID) picks out the few new ones.
_ACTION = AuditEvent.action.concat("")


@dataclass(frozen=True)
class Backlog:
    """The node's state now: what is waiting, and for how long. No identifiers."""

    studies: dict[str, int]  # by state
    jobs: dict[str, int]  # unfinished runs by state (JobState.UNFINISHED)
    oldest_queued_at: datetime | None  # the oldest run waiting for a worker
    results_pending: dict[str, int]  # by destination
    oldest_pending_result_at: dict[str, datetime]  # by destination


def backlog(session: Session) -> Backlog:
    """Studies by state, unfinished runs by state, results owed to each destination, and the
    age of the oldest of each; indexed counts, whose cost grows with the backlog, not the
    history (but for the count of studies by state, one pass over its index)."""
    studies = session.execute(select(Study.state, func.count()).group_by(Study.state)).all()
    jobs = dict(
        session.execute(
            select(Job.state, func.count())
            .where(Job.state.in_(JobState.UNFINISHED))
            .group_by(Job.state)
        ).all()
    )
    oldest_queued = session.scalar(
        select(func.min(Job.created_at)).where(Job.state == JobState.QUEUED)
    )
    pending = session.execute(
        select(OutboxItem.destination, func.count(), func.min(OutboxItem.created_at))
        .where(OutboxItem.state == OutboxState.PENDING)
        .group_by(OutboxItem.destination)
    ).all()
    return Backlog(
        studies={state: int(n) for state, n in studies},
        jobs={state: int(jobs.get(state, 0)) for state in JobState.UNFINISHED},
        oldest_queued_at=as_utc(oldest_queued) if oldest_queued else None,
        results_pending={destination: int(n) for destination, n, _ in pending},
        oldest_pending_result_at={destination: as_utc(t) for destination, _, t in pending},
    )


# The audit log, read on from a sequence number -------------------------------------------


def last_sealed(session: Session) -> int:
    """The number of the last audit event committed (0 for an empty log)."""
    head = session.get(AuditChainHead, 1)
    return int(head.last_seq) if head else 0


def action_counts(session: Session, after: int, upto: int) -> dict[tuple[str, str], int]:
    """Events numbered in ``(after, upto]``, counted by (action, outcome)."""
    rows = session.execute(
        select(AuditEvent.action, AuditEvent.outcome, func.count())
        .where(AuditEvent.chain_seq > after, AuditEvent.chain_seq <= upto)
        .group_by(AuditEvent.action, AuditEvent.outcome)
    )
    return {(action, outcome): int(n) for action, outcome, n in rows}


@dataclass(frozen=True)
class LabelledCount:
    """How many events of one action carried the same label values, added up in the database
    (a row per result sent is never read)."""

    action: str
    destination: str | None  # result.*
    status: str | None  # instance.refused: the DICOM status returned
    refusals: int  # refused connections: how many refusals the rows stand for
    events: int


def labelled_counts(session: Session, after: int, upto: int) -> list[LabelledCount]:
    """The events numbered in ``(after, upto]`` that counters read by label, counted by
    action, destination and status."""
    detail = AuditEvent.detail
    destination = detail["destination"].as_string()
    status = detail["status"].as_string()
    count = detail["count"].as_string()  # text: a row of an older version may hold anything
    rows = session.execute(
        select(AuditEvent.action, destination, status, count, func.count())
        .where(
            AuditEvent.chain_seq > after,
            AuditEvent.chain_seq <= upto,
            _ACTION.in_(LABELLED),
        )
        .group_by(AuditEvent.action, destination, status, count)
    )
    return [
        LabelledCount(action, dest, stat, (_integer(n, default=1) or 0) * events, events)
        for action, dest, stat, n, events in rows
    ]


@dataclass(frozen=True)
class RunEvent:
    """An ``inference.completed`` event: which run, which model, and its stage timings."""

    seq: int
    study_uid: str | None
    run: int | None
    model: str | None
    timings: dict[str, float]  # seconds per stage


def completed_runs(session: Session, after: int, upto: int) -> list[RunEvent]:
    """The runs whose inference completed in ``(after, upto]``, oldest first (their
    probabilities stay in the database)."""
    detail = AuditEvent.detail
    rows = session.execute(
        select(
            AuditEvent.chain_seq,
            AuditEvent.study_uid,
            detail["run"].as_string(),
            detail["model"].as_string(),
            detail["timings"],
        )
        .where(
            AuditEvent.chain_seq > after,
            AuditEvent.chain_seq <= upto,
            _ACTION == INFERENCE,
        )
        .order_by(AuditEvent.chain_seq)
    )
    return [
        RunEvent(int(seq), uid, _integer(run, default=None), model, _seconds(timings))
        for seq, uid, run, model, timings in rows
    ]


def studies_done(session: Session, after: int, upto: int) -> list[tuple[str, datetime]]:
    """(Study UID, time) of each ``study.done`` event in ``(after, upto]``."""
    rows = session.execute(
        select(AuditEvent.study_uid, AuditEvent.time).where(
            AuditEvent.chain_seq > after,
            AuditEvent.chain_seq <= upto,
            _ACTION == DONE,
            AuditEvent.study_uid.is_not(None),
        )
    )
    return [(uid, as_utc(time)) for uid, time in rows]


def _integer(value: Any, default: int | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _seconds(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):  # older rows, or a detail without timings
        return {}
    out = {}
    for stage, seconds in value.items():
        try:
            out[str(stage)] = float(seconds)
        except (TypeError, ValueError):
            continue
    return out


@dataclass(frozen=True)
class Turnaround:
    """A study done: seconds from its last image received, and from its run queued, to every
    result confirmed (None when the log lacks the start)."""

    end_to_end_s: float | None
    processing_s: float | None


def turnarounds(session: Session, done: Iterable[tuple[str, datetime]]) -> list[Turnaround]:
    """The turnaround of each (Study UID, time) of :func:`studies_done`, measured as ``cxrnode
    audit stats`` does: from the latest ``instance.received`` and ``study.queued`` of the
    study before it."""
    done = list(done)
    starts: dict[str, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
    uids = sorted({uid for uid, _ in done})
    for chunk in range(0, len(uids), _CHUNK):
        rows = session.execute(
            select(AuditEvent.study_uid, AuditEvent.action, AuditEvent.time).where(
                AuditEvent.study_uid.in_(uids[chunk : chunk + _CHUNK]),
                _ACTION.in_((RECEIVED, QUEUED)),
            )
        )
        for uid, action, time in rows:
            starts[uid][action].append(as_utc(time))
    out = []
    for uid, finished in done:
        seconds = []
        for action in (RECEIVED, QUEUED):
            before = [t for t in starts[uid][action] if t <= finished]
            seconds.append((finished - max(before)).total_seconds() if before else None)
        out.append(Turnaround(*seconds))
    return out


def run_nodes(session: Session, runs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """The node (``node_name``) that claimed each (Study UID, run); runs claimed before node
    names were recorded read as ``""``."""
    wanted = set(runs)
    uids = sorted({uid for uid, _ in wanted})
    out = {}
    for chunk in range(0, len(uids), _CHUNK):
        rows = session.execute(
            select(Study.study_uid, Job.run, Job.claimed_by)
            .join(Job, Job.study_id == Study.id)
            .where(Study.study_uid.in_(uids[chunk : chunk + _CHUNK]))
        )
        for uid, run, node in rows:
            if (uid, run) in wanted:
                out[(uid, run)] = node or ""
    return out
