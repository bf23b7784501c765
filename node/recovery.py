"""What a starting node does with the runs it was running when it died.

Each was interrupted: most by a kill or a power cut, and is simply queued again. One the node
died under ``max_job_attempts`` times is what kills it (an image that exhausts the memory,
say): it is failed and audited instead, so the node does not crash in a loop, and the studies
that shared its batch run without it (``storage.jobs.claim_batch`` claims a run that was
interrupted once alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from storage import audit, jobs
from storage.actions import Action
from storage.audit import Outcome
from storage.identifiers import StudyIds
from storage.schema import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    """Interrupted runs by what became of them (job ids)."""

    requeued: tuple[int, ...]
    failed: tuple[int, ...]


def recover_interrupted_runs(session: Session, max_attempts: int) -> Recovered:
    """Fail the interrupted runs claimed ``max_attempts`` times, queue the others again, and
    audit each (``job.failed`` / ``job.requeued``), in the caller's transaction."""
    failed = jobs.fail_crash_looping(session, max_attempts)
    for job in failed:
        _audit(session, job, Action.JOB_FAILED, Outcome.FAILURE)
        log.error("job %d failed: the node died while running it %d times", job.id, job.attempts)
    requeued = jobs.requeue_interrupted(session)
    for job in requeued:
        _audit(session, job, Action.JOB_REQUEUED, Outcome.WARNING)
    return Recovered(tuple(j.id for j in requeued), tuple(j.id for j in failed))


def _audit(session: Session, job: Job, action: Action, outcome: str) -> None:
    reason = (
        job.error
        if action == Action.JOB_FAILED
        else "the node stopped while the run was in progress; queued again"
    )
    audit.record(
        session,
        action,
        outcome,
        ids=StudyIds.of(job.study),
        detail={"run": job.run, "reason": reason, "attempts": job.attempts},
    )
