"""Tamper evidence for the audit log: every event is sealed into one SHA-256 hash chain.

A sealed row carries ``chain_seq`` (1, 2, 3, ... without gaps), ``prev_hash`` (the ``row_hash``
of the row numbered one less, or 64 zeros for the first) and ``row_hash``, the SHA-256 of a
canonical JSON (sorted keys, ASCII, UTC time to the microsecond) of all its other fields and
``prev_hash``. The single ``audit_chain_head`` row holds the last number and hash.

Why the chain cannot fork
-------------------------
Events are sealed when their transaction commits (a ``before_commit`` hook on every session),
after the transaction's other changes are flushed: the hook locks the head row (``SELECT ...
FOR UPDATE`` on PostgreSQL; on SQLite every node transaction is ``BEGIN IMMEDIATE`` and so
already holds the database's single write lock), reads the last number and hash, numbers and
hashes the new events, moves the head on and commits. A second writer in any thread or process
blocks on the head row until the first commits and then reads the *moved* head (PostgreSQL
re-reads a row it waited to lock, even under READ COMMITTED), so no two rows ever get the same
predecessor; a rolled-back transaction rolls back its head move too, so numbers have no gaps.
A unique index on ``chain_seq`` turns any fork that slipped through into a failed commit rather
than a stored fork. The head lock is the last lock a transaction takes, and its holder waits on
nothing else before committing, so it cannot deadlock with the row locks of the node's work.

``verify`` walks the chain in order and names the first row that was edited (its content no
longer hashes to ``row_hash``), deleted (a gap in ``chain_seq``, or the head ahead of the last
row), inserted (a row without a seal, a repeated number, or a row whose ``prev_hash`` does not
match the row before it) or rewritten. A chain recomputed wholesale by someone with write access
to the database is detectable only against a head recorded elsewhere: ``verify`` prints the head
and checks an ``anchor`` (``seq:hash``) written down earlier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session

from storage.schema import AuditChainHead, AuditEvent, utcnow

GENESIS = "0" * 64
HEAD_ID = 1
CHAIN_VERSION = 1
# The row fields each hash covers, besides the chain fields: everything an event says.
SEALED_FIELDS = (
    "time",
    "actor_ae",
    "actor_ip",
    "actor_user",
    "action",
    "outcome",
    "study_uid",
    "series_uid",
    "sop_uid",
    "accession",
    "patient_id",
    "detail",
)
_UNSEALED = "cxrnode.audit.unsealed"
# (seq, hash) of the head a session's transaction moved to, set when it seals events.
SEALED_HEAD = "cxrnode.audit.sealed_head"


def canonical_time(value: datetime) -> str:
    """A stored time as the chain hashes it: UTC, microseconds, ``Z`` (naive means UTC)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_hash(row: Mapping[str, Any], seq: int, prev_hash: str) -> str:
    """SHA-256 (hex) of one event's canonical JSON.

    Parameters
    ----------
    row:
        The event's fields by name (``SEALED_FIELDS``); an ``AuditEvent`` works through
        :func:`event_fields`.
    seq, prev_hash:
        The event's place in the chain.
    """
    body = {name: row.get(name) for name in SEALED_FIELDS}
    body["time"] = canonical_time(row["time"])
    # The detail as the database hands it back: JSON-decoded, so tuples are lists and keys
    # are strings before and after the round trip.
    body["detail"] = json.loads(json.dumps(row.get("detail")))
    body.update(v=CHAIN_VERSION, seq=seq, prev=prev_hash)
    # ASCII with escapes: any string hashes, even one with a lone surrogate from a bad header.
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def event_fields(audit_event: AuditEvent) -> dict[str, Any]:
    """The sealed fields of an ORM event, by name."""
    return {name: getattr(audit_event, name) for name in SEALED_FIELDS}


# Sealing ------------------------------------------------------------------------------------


def track(session: Session, audit_event: AuditEvent) -> None:
    """Remember ``audit_event`` for sealing when ``session`` commits, in recording order."""
    session.info.setdefault(_UNSEALED, []).append(audit_event)


@event.listens_for(Session, "before_commit")
def _seal_on_commit(session: Session) -> None:
    events = _unsealed_events(session)
    if not events:
        return
    # Flush the transaction's own work first, without the new events, so that every row lock
    # it needs is taken before the head lock: the head is then always the last lock taken.
    pending = [e for e in events if inspect(e).pending]
    for audit_event in pending:
        session.expunge(audit_event)
    session.flush()
    seal(session, events)
    session.add_all(pending)


def _unsealed_events(session: Session) -> list[AuditEvent]:
    tracked = session.info.pop(_UNSEALED, [])
    # Events added without ``audit.record`` are sealed too, after the tracked ones.
    extra = [o for o in session.new if isinstance(o, AuditEvent) and o not in tracked]
    events = []
    for audit_event in [*tracked, *extra]:
        state = inspect(audit_event)
        # An event added inside a savepoint that rolled back is no longer in the session.
        if state.session_id != session.hash_key or state.deleted or state.detached:
            continue
        if audit_event.chain_seq is None and audit_event not in events:
            events.append(audit_event)
    return events


def seal(session: Session, events: Iterable[AuditEvent]) -> None:
    """Number and hash ``events`` after the current head and move the head on.

    The caller's transaction must commit right after; the head row stays locked until then.
    """
    head = lock_head(session)
    seq, prev = head.last_seq, head.last_hash
    for audit_event in events:
        if audit_event.time is None:
            audit_event.time = utcnow()
        seq += 1
        audit_event.chain_seq = seq
        audit_event.prev_hash = prev
        audit_event.row_hash = prev = row_hash(event_fields(audit_event), seq, prev)
    head.last_seq, head.last_hash, head.updated_at = seq, prev, utcnow()
    session.info[SEALED_HEAD] = (seq, prev)  # for the head journal, once committed


def lock_head(session: Session) -> AuditChainHead:
    """The chain head, locked for this transaction; created on a database that lacks it."""
    stmt = select(AuditChainHead).where(AuditChainHead.id == HEAD_ID).with_for_update()
    head = session.scalar(stmt)
    if head is None:
        # Only a schema made without the migrations lacks the row (the migration inserts it).
        head = AuditChainHead(id=HEAD_ID, last_seq=0, last_hash=GENESIS, updated_at=utcnow())
        session.add(head)
        session.flush()
    return head


# Verification -------------------------------------------------------------------------------


class Damage:
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"


@dataclass(frozen=True)
class ChainProblem:
    """One place where the chain is broken."""

    kind: str  # Damage.*
    event_id: int | None  # the row at fault, or the first row after a deletion
    seq: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "event_id": self.event_id,
            "seq": self.seq,
            "message": self.message,
        }


@dataclass
class ChainReport:
    """What ``verify`` found: rows checked, the head, and the problems in chain order."""

    checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[ChainProblem] = field(default_factory=list)
    truncated: bool = False  # more problems than ``max_problems`` were found

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> ChainProblem | None:
        return self.problems[0] if self.problems else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "first_problem": self.first.as_dict() if self.first else None,
            "problems": [p.as_dict() for p in self.problems],
            "truncated": self.truncated,
        }


class _Findings:
    def __init__(self, report: ChainReport, limit: int) -> None:
        self.report = report
        self.limit = limit

    def add(self, kind: str, event_id: int | None, seq: int | None, message: str) -> None:
        if len(self.report.problems) >= self.limit:
            self.report.truncated = True
            return
        self.report.problems.append(ChainProblem(kind, event_id, seq, message))


def verify(
    session: Session,
    *,
    anchor: tuple[int, str] | None = None,
    journal: tuple[int, str] | None = None,
    max_problems: int = 50,
) -> ChainReport:
    """Walk the whole chain and report where it is broken.

    Parameters
    ----------
    session:
        Any session on the node's database (only reads).
    anchor:
        ``(seq, hash)`` of a head recorded earlier outside the database: the row with that
        number must still carry that hash (catches a chain recomputed wholesale).
    journal:
        ``(seq, hash)`` of the head last committed, from the journal beside a SQLite file
        (``storage.head_journal``): a log that ends before it lost committed rows (catches
        a database gone back to an earlier state, its write-ahead log deleted).
    max_problems:
        Stop listing problems after this many (the walk itself always completes).

    Returns
    -------
    ChainReport
        ``ok`` when every row is intact; otherwise ``first`` is the earliest problem.
    """
    head = session.get(AuditChainHead, HEAD_ID)
    report = ChainReport()
    if head is not None:
        report.head_seq, report.head_hash = head.last_seq, head.last_hash
    found = _Findings(report, max_problems)
    columns = [AuditEvent.id, AuditEvent.chain_seq, AuditEvent.prev_hash, AuditEvent.row_hash]
    columns += [getattr(AuditEvent, name) for name in SEALED_FIELDS]
    stmt = (
        select(*columns)
        .where(AuditEvent.chain_seq.is_not(None))
        .order_by(AuditEvent.chain_seq, AuditEvent.id)
        .execution_options(yield_per=2000)
    )
    last_seq, last_hash, last_id = 0, GENESIS, None
    for row in session.execute(stmt):
        report.checked += 1
        values = row._mapping
        seq = row.chain_seq
        if anchor is not None and seq == anchor[0] and row.row_hash != anchor[1]:
            found.add(
                Damage.EDITED,
                row.id,
                seq,
                f"event {row.id} (seq {seq}) does not carry the anchored hash "
                f"{anchor[1][:16]}…: the chain was rewritten up to here or later",
            )
        if seq == last_seq:
            found.add(
                Damage.INSERTED,
                row.id,
                seq,
                f"event {row.id} repeats seq {seq} of event {last_id}: a row was inserted",
            )
            continue
        gap = seq > last_seq + 1
        if gap:
            missing = f"seq {last_seq + 1}" + (f"–{seq - 1}" if seq - 1 > last_seq + 1 else "")
            found.add(
                Damage.DELETED,
                row.id,
                seq,
                f"{missing} missing before event {row.id}: "
                f"{seq - last_seq - 1} row(s) were deleted",
            )
        if row.row_hash != row_hash(values, seq, row.prev_hash or ""):
            found.add(
                Damage.EDITED,
                row.id,
                seq,
                f"event {row.id} (seq {seq}, {row.action}) was changed after it was written: "
                "its content no longer matches its hash",
            )
        elif not gap and row.prev_hash != last_hash:
            found.add(
                Damage.EDITED if last_id is not None else Damage.INSERTED,
                last_id if last_id is not None else row.id,
                last_seq if last_id is not None else seq,
                f"event {row.id} (seq {seq}) does not follow event {last_id} (seq {last_seq}): "
                f"event {last_id} was rewritten with a new hash, or {row.id} was inserted",
            )
        last_seq, last_hash, last_id = seq, row.row_hash, row.id

    unsealed = session.execute(
        select(AuditEvent.id, AuditEvent.action)
        .where(AuditEvent.chain_seq.is_(None))
        .order_by(AuditEvent.id)
        .limit(max_problems + 1)
    ).all()
    for row in unsealed:
        found.add(
            Damage.INSERTED,
            row.id,
            None,
            f"event {row.id} ({row.action}) carries no seal: it was inserted outside the node",
        )
    _check_head(report, found, last_seq, last_hash, last_id, head is not None)
    if journal is not None:
        _check_journal(found, journal, last_seq, last_hash, last_id)
    return report


def _check_journal(found, journal, last_seq, last_hash, last_id) -> None:
    seq, recorded = journal
    if seq > last_seq:
        found.add(
            Damage.DELETED,
            None,
            last_seq + 1,
            f"seq {last_seq + 1}–{seq} were committed (the head journal beside the database "
            f"is at seq {seq}) and are gone: the database went back to an earlier state "
            "(its write-ahead log deleted?)",
        )
    elif seq == last_seq and recorded != last_hash:
        found.add(
            Damage.EDITED,
            last_id,
            last_seq,
            f"the last event {last_id} (seq {last_seq}) is not the one the head journal "
            "recorded: the log was rewritten or replaced",
        )


def _check_head(report, found, last_seq, last_hash, last_id, has_head) -> None:
    if not has_head:
        if last_seq:
            found.add(Damage.DELETED, None, None, "the chain head row was deleted")
        return
    if report.head_seq > last_seq:
        found.add(
            Damage.DELETED,
            None,
            last_seq + 1,
            f"seq {last_seq + 1}–{report.head_seq} missing at the end of the log "
            f"(after event {last_id}): the last row(s) were deleted",
        )
    elif report.head_seq < last_seq:
        found.add(
            Damage.INSERTED,
            last_id,
            last_seq,
            f"rows after seq {report.head_seq} are not in the chain head: they were inserted",
        )
    elif report.head_hash != last_hash:
        found.add(
            Damage.EDITED,
            last_id,
            last_seq,
            f"the last event {last_id} (seq {last_seq}) does not match the chain head: "
            "it was rewritten",
        )
