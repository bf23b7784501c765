"""An admin's second try: re-deliver a run's results, or queue a new run of a study.

``resend`` puts the objects a finished (or abandoned) run built back in the outbox of one or
every destination: rows already there start over (pending, no attempts, a fresh give-up age),
destinations added since get rows for the kinds they receive. The run returns to SENDING and,
if it is the study's latest, the study to QUEUED, so the usual delivery confirms them, retries
with backoff and marks the run and study done again. Nothing is rebuilt: the PACS receives the
same objects (same UIDs), which it stores as duplicates of what it may already hold.

``rerun`` queues a new run of the study (e.g. after a model change), reading the report its
latest run read; the new run's results replace the old ones as a late report's re-run does.

Both refuse, with a reason fit for the admin, a study that is still being worked on. Both
are audited (``result.resend_requested``, ``study.queued`` with reason ``admin``) with who
asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from node.config import Settings
from node.errors import CxrNodeError
from node.pairing import queue_run_audited
from storage import audit, outbox
from storage.actions import Action
from storage.identifiers import StudyIds
from storage.matching import latest_run
from storage.queries import find_study
from storage.schema import (
    Job,
    JobState,
    OutboxItem,
    OutboxState,
    Study,
    StudyState,
    change_state,
    utcnow,
)

RERUN_REASON = "admin request"


class ReprocessRefused(CxrNodeError):
    """The study cannot be re-sent or re-run now; the message says why."""


@dataclass(frozen=True)
class Resent:
    study_uid: str
    run: int
    destinations: tuple[str, ...]
    objects: int  # outbox rows now pending


@dataclass(frozen=True)
class Rerun:
    study_uid: str
    run: int
    replaces_run: int | None


def resend(
    session: Session,
    settings: Settings,
    key: str,
    destination: str | None = None,
    actor: dict | None = None,
) -> Resent:
    """Put the latest finished run's results of study ``key`` (Study UID or accession) back
    in the outbox of ``destination`` (its ``AE@host:port``, AE title or URL), or of every
    destination that receives them.

    Raises
    ------
    ReprocessRefused
        No such study or destination, a run still in progress, no built results, or results
        already purged.
    """
    study = _study(session, key)
    job = _finished_run(study)
    if not job.outbox:
        raise ReprocessRefused(
            f"run {job.run} of the study built no results ({job.state}): rerun it instead"
        )
    if job.results_purged_at is not None:
        raise ReprocessRefused(f"the results of run {job.run} were purged: rerun the study")
    targets = [
        d
        for d in settings.destinations
        if destination is None or destination in (str(d), getattr(d, "ae_title", None))
    ]
    if not targets:
        configured = ", ".join(str(d) for d in settings.destinations)
        raise ReprocessRefused(f"{destination!r} is not a configured destination ({configured})")
    built = {row.sop_uid: row for row in job.outbox}  # every object, whoever it was owed to
    existing = {(row.destination, row.sop_uid): row for row in job.outbox}
    now, count = utcnow(), 0
    for target in targets:
        kinds = settings.outputs_for(target)
        for sop_uid, made in built.items():
            if made.kind not in kinds:
                continue
            row = existing.get((str(target), sop_uid))
            if row is None:
                row = outbox.add(session, job.id, str(target), made.kind, sop_uid, made.path)
            _start_over(row, now)
            count += 1
    if count == 0:
        raise ReprocessRefused("none of the run's results is owed to the destination(s) chosen")
    change_state(job, JobState.SENDING)
    job.updated_at = now
    if job.run == study.runs:
        change_state(study, StudyState.QUEUED)
    names = tuple(str(t) for t in targets)
    audit.record(
        session,
        Action.RESULT_RESEND_REQUESTED,
        **(actor or {}),
        ids=StudyIds.of(study),
        detail={"run": job.run, "destinations": list(names), "objects": count},
    )
    return Resent(study.study_uid, job.run, names, count)


def rerun(session: Session, key: str, actor: dict | None = None) -> Rerun:
    """Queue a new run of study ``key``, reading the report its latest run read.

    Raises
    ------
    ReprocessRefused
        No such study, nothing processable in it, or a run still in progress.
    """
    study = _study(session, key)
    previous = latest_run(study)
    if previous is not None and previous.state in JobState.UNFINISHED:
        raise ReprocessRefused(f"run {previous.run} of the study is still {previous.state}")
    if study.state in (StudyState.RECEIVING, StudyState.AWAITING_REPORT):
        raise ReprocessRefused(f"the study is {study.state}: it will run when it is stable")
    if not any(i.processable for i in study.instances):
        raise ReprocessRefused("the study holds no frontal chest radiograph to run on")
    report = previous.report if previous is not None else None
    job = queue_run_audited(session, study, report, RERUN_REASON, previous, actor)
    return Rerun(study.study_uid, job.run, previous.run if previous else None)


def _study(session: Session, key: str) -> Study:
    study = find_study(session, key)
    if study is None:
        raise ReprocessRefused(f"no study with Study Instance UID or accession {key!r}")
    return study


def _finished_run(study: Study) -> Job:
    """The study's latest run that built results or ended; refused while one is unfinished."""
    run = latest_run(study)
    if run is None:
        raise ReprocessRefused("the study has not run yet")
    if run.state in JobState.UNFINISHED:
        raise ReprocessRefused(f"run {run.run} of the study is still {run.state}")
    return run


def _start_over(row: OutboxItem, now) -> None:
    row.state = OutboxState.PENDING
    row.attempts = 0
    row.last_error = None
    row.next_attempt_at = now
    row.created_at = now  # the give-up age counts from the resend
