"""SQLAlchemy tables: one row per received instance, study, processing run (job), result object
to deliver (outbox), processed image's embedding and audit event."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back naive ones; all are UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


UID = String(64)


class StudyState:
    """Where a study is on its way from its first instance to delivered results.

    ::

        first instance
              |
              v         no frontal chest radiograph
          RECEIVING ---------------------------------------------> SKIPPED
              |   |      its report not there yet
              |   +--------------------------------> AWAITING_REPORT
              |   report there, or no window             |
              |                                          | report arrived, or window over
              v                                          v
            QUEUED <-------------------------------------+
            |    |
            |    +-- latest run failed ------> FAILED
            +------- latest run delivered ---> DONE

        DONE, FAILED ---------- a late or corrected report (a new run) ---------> QUEUED
        any state but QUEUED -- an instance arrives ----------------------------> RECEIVING
        QUEUED ---------------- its run ended, but instances arrived meanwhile -> RECEIVING
        RECEIVING, AWAITING_REPORT -- its assembly raised (study.assembly_failed) -> FAILED

    "Stable" (the arrows out of RECEIVING): its sender released the association, or no
    instance arrived for ``stable_age_s``.

    The allowed moves are :data:`STUDY_TRANSITIONS`; code changes a study's state only through
    :func:`change_state`, which refuses any other. Who moves it: ``storage.studies.add_instance``
    (an instance arrives), ``node.assembler`` and ``node.pairing`` (stable, awaiting, queued,
    skipped) and ``storage.jobs`` (a run's end, through ``Job``'s own states below).
    """

    RECEIVING = "receiving"  # instances still arriving; not yet stable
    AWAITING_REPORT = "awaiting_report"  # stable; waiting for its report up to the pairing window
    QUEUED = "queued"  # a job for the current run is waiting or running
    DONE = "done"  # the latest run delivered its results
    SKIPPED = "skipped"  # nothing processable (no frontal chest image)
    FAILED = "failed"  # the latest run failed for good (or the study's assembly raised)


class JobState:
    """Where one processing run of a study (a ``Job``) is.

    ::

        queued by assembly (a study's new run)
              |
              v       claimed by a worker
           QUEUED ----------------------------> RUNNING
              ^                                 |  |  |
              +-- interrupted (the node or a ---+  |  |  cannot produce results
                  builder died), or deferred       |  +---------------------------> FAILED
                  for a full disk                  |                                 ^
                                                   | results built, in the outbox    |
                                                   v                                 |
                                                SENDING -- a delivery abandoned -----+
                                                 ^  |
                                                 |  +-- every object confirmed --> DONE
                                                 |
                                                 +-- an admin resends the results of a
                                                     DONE or FAILED run (node.reprocess)

    The allowed moves are :data:`JOB_TRANSITIONS`, made through :func:`change_state` (claiming
    is ``storage.jobs.claim_next``'s conditional UPDATE, which takes only a queued row). A run
    ending moves its study: DONE makes the study done, FAILED failed (``storage.jobs``).
    """

    QUEUED = "queued"
    RUNNING = "running"
    SENDING = "sending"  # results built and in the outbox, not yet all confirmed
    DONE = "done"
    FAILED = "failed"
    UNFINISHED = (QUEUED, RUNNING, SENDING)


# Every move a study's state may make: from each state, the states it may go to. Staying in a
# state is not a move (another instance of a study still receiving, say) and is always allowed.
STUDY_TRANSITIONS: dict[str, frozenset[str]] = {
    StudyState.RECEIVING: frozenset(
        {StudyState.AWAITING_REPORT, StudyState.QUEUED, StudyState.SKIPPED, StudyState.FAILED}
    ),
    StudyState.AWAITING_REPORT: frozenset(
        {StudyState.RECEIVING, StudyState.QUEUED, StudyState.FAILED}
    ),
    StudyState.QUEUED: frozenset({StudyState.DONE, StudyState.FAILED, StudyState.RECEIVING}),
    StudyState.DONE: frozenset({StudyState.RECEIVING, StudyState.QUEUED}),
    StudyState.FAILED: frozenset({StudyState.RECEIVING, StudyState.QUEUED}),
    StudyState.SKIPPED: frozenset({StudyState.RECEIVING}),
}

# Every move a job's state may make. A run that ended is never processed again (a new run is
# a new job); only its built results may be sent again, when an admin resends them.
JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING}),
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.SENDING, JobState.FAILED}),
    JobState.SENDING: frozenset({JobState.DONE, JobState.FAILED}),
    JobState.DONE: frozenset({JobState.SENDING}),
    JobState.FAILED: frozenset({JobState.SENDING}),
}


class IllegalTransition(ValueError):
    """A state change the state machine does not allow; the message names the row and move."""


class OutboxState:
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    # The rest of the patient's identity as the first instance stating it gave it: a later
    # instance of another patient under the same Study UID is refused (studies.patient_conflict).
    patient_name: Mapped[str | None] = mapped_column(String(200))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(16))
    accession: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING, index=True)
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When the sender released the last association that carried instances of the study: from
    # then on it is complete and assembled without waiting out the stable age. Null while an
    # association is open, after an abort, or when the node waits for the stable age only.
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Bumped by every accepted instance; a job records the value it saw, so a study that grew
    # while queued is noticed.
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    runs: Mapped[int] = mapped_column(Integer, default=0)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.run")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str | None] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    view: Mapped[str | None] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)  # relative to the spool root
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str | None] = mapped_column(UID)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    processable: Mapped[bool] = mapped_column(Boolean)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    # Set when the retention job deleted the spooled file; the row stays for the audit trail.
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="instances")


class Job(Base):
    """One processing run of a study: inference, result objects, delivery."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("study_id", "run"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    run: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    model_id: Mapped[str | None] = mapped_column(String(200))
    # The clinical text this run reads: a report, an order's indication, or none (image only).
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"))
    text_source: Mapped[str] = mapped_column(String(16), default="none")
    # Why this run exists ("first", "late report", "corrected report", "new images") and the
    # earlier run whose results it replaces.
    reason: Mapped[str] = mapped_column(String(32), default="first")
    replaces_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    # Per-label probabilities of every processed image, as the model produced them.
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # The node (``node_name``) whose worker claimed the run: a restarting node re-queues only
    # its own interrupted runs, never those other workers sharing the queue are running.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    # A run deferred because the disk was full is not claimed before this time.
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When retention deleted the run's result files (the rows stay).
    results_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="jobs")
    outbox: Mapped[list[OutboxItem]] = relationship(back_populates="job")
    report: Mapped[Report | None] = relationship()
    replaces: Mapped[Job | None] = relationship(remote_side="Job.id")


class OutboxItem(Base):
    """One result object (SR or SC) owed to one destination."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("job_id", "destination", "sop_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(8))  # "SR" | "SC"
    sop_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)  # relative to the results root
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="outbox")


class Embedding(Base):
    """One processed image's embedding from one run (``Prediction.embedding``: the vector the
    model's head classifies), for finding similar earlier cases (``node.similar``).

    Written in the transaction that puts the run's results in the outbox, so a run has all its
    embeddings or none. Embeddings of different model packages are not comparable: each row
    says which package made it and its width. A newer run of a study does not delete the
    older run's rows; searches read each study's latest run (``storage.embeddings``).
    """

    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("job_id", "sop_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    sop_uid: Mapped[str] = mapped_column(UID)
    model_id: Mapped[str] = mapped_column(String(200), index=True)  # the package id
    dim: Mapped[int] = mapped_column(Integer)
    # ``dim`` float32 values, little-endian (``storage.embeddings.to_bytes``).
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReportState:
    WAITING = "waiting"  # no study with its key yet
    PAIRED = "paired"
    REFUSED = "refused"  # the key matched a study of another patient: never attached


class Report(Base):
    """A report or order text from a feed (HL7 ORU/ORM/OMI or a CSV row), kept as received."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("source", "message_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # "hl7" | "csv"
    # MSH-10 for HL7 (duplicates are acknowledged, not stored twice); "<file sha>:<row>" for CSV.
    message_id: Mapped[str] = mapped_column(String(200))
    message_type: Mapped[str | None] = mapped_column(String(32))  # e.g. "ORU^R01"
    kind: Mapped[str] = mapped_column(String(16))  # "report" | "indication"
    accession: Mapped[str | None] = mapped_column(String(64), index=True)
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(8))  # OBR-25: P, F, C, ...
    text: Mapped[str] = mapped_column(Text)
    sections: Mapped[dict | None] = mapped_column(JSON)  # e.g. {"FINDINGS": ..., "IMPRESSION": ...}
    observed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sender: Mapped[str | None] = mapped_column(String(200))  # peer address or file name
    state: Mapped[str] = mapped_column(String(16), default=ReportState.WAITING, index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)


class AuditEvent(Base):
    """One step in the life of a study, a report or the node, or an admin action.

    Sealed rows form a hash chain (``storage.audit_chain``): ``chain_seq`` numbers them without
    gaps, ``prev_hash`` is the ``row_hash`` of the row before, and ``row_hash`` covers every
    other field, so an edited, deleted or inserted row is detectable.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_time", "time"),
        Index("ux_audit_chain_seq", "chain_seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor_ae: Mapped[str | None] = mapped_column(String(16))
    actor_ip: Mapped[str | None] = mapped_column(String(64))
    actor_user: Mapped[str | None] = mapped_column(String(64))  # an admin's OS or API user
    action: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    series_uid: Mapped[str | None] = mapped_column(UID)
    sop_uid: Mapped[str | None] = mapped_column(UID)
    accession: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[dict | None] = mapped_column(JSON)
    chain_seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    row_hash: Mapped[str | None] = mapped_column(String(64))


class AuditChainHead(Base):
    """The one row saying where the audit hash chain ends.

    Sealing locks it, so writers append to the chain one at a time; it also lets ``verify``
    notice rows deleted from the end of the chain.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


_TRANSITIONS: dict[type, tuple[dict[str, frozenset[str]], str]] = {
    Study: (STUDY_TRANSITIONS, StudyState.RECEIVING),
    Job: (JOB_TRANSITIONS, JobState.QUEUED),
}


def change_state(row: Study | Job, state: str) -> None:
    """Move a study or a job to ``state``, if its state machine allows the move.

    Parameters
    ----------
    row:
        A ``Study`` (:data:`STUDY_TRANSITIONS`) or a ``Job`` (:data:`JOB_TRANSITIONS`). A row
        not yet flushed is in its column's default state (receiving, queued).
    state:
        The state to move to; the current one again is allowed and changes nothing.

    Raises
    ------
    IllegalTransition
        If the table has no such move from the row's current state.
    """
    transitions, initial = _TRANSITIONS[type(row)]
    current = row.state or initial
    if state != current and state not in transitions.get(current, ()):
        kind = type(row).__name__.lower()
        raise IllegalTransition(
            f"{kind} {row.id}: {current} -> {state} is not a transition of the {kind} states"
        )
    row.state = state
