"""Study assembly: from a study that stopped receiving to a queued job.

A study no instance arrived for during the stable age (or whose sender released the
association) gets a job once its report is there or its pairing window is over, or is skipped
when it holds no frontal chest radiograph; a processed study whose report arrived late or was
corrected gets a new run. Each study is assembled in a savepoint of its own: one that raises
rolls back alone, is audited (``study.assembly_failed``) and failed, and the others of the
tick still get their jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from node.config import Settings
from node.pairing import ReportPairing
from storage import audit
from storage.actions import Action
from storage.audit import Outcome
from storage.database import Database
from storage.identifiers import StudyIds
from storage.matching import awaiting_studies, late_reports
from storage.schema import Job, Study, StudyState, change_state, utcnow
from storage.studies import processable_instances, stable_studies

log = logging.getLogger(__name__)


class Assembler:
    """Turns stable studies into queued runs, over one database.

    Parameters
    ----------
    settings:
        ``stable_age_s`` and the pairing window.
    db:
        The node's database.
    """

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.pairing = ReportPairing(settings)
        # Late reports whose re-run raised: tried once per start of the node, not every tick.
        self._failed_reports: set[int] = set()

    def assemble(self) -> int:
        """Schedule every study that became stable, every study whose report arrived or whose
        pairing window closed, and re-runs for late or corrected reports; return how many runs
        were queued."""
        now = utcnow()
        cutoff = now - timedelta(seconds=self.settings.stable_age_s)
        queued = 0
        with self.db.transaction() as session:
            for study in stable_studies(session, cutoff):
                queued += self._alone(session, study, self._assemble_stable, now) or 0
            for study in awaiting_studies(session):
                queued += self._alone(session, study, self.pairing.schedule, now) or 0
            for report, study in late_reports(session):
                if report.id in self._failed_reports:
                    continue
                rerun = self._alone(
                    session, study, self.pairing.rerun_for_late_report, report, fail_study=False
                )
                if rerun is None:
                    self._failed_reports.add(report.id)
                queued += rerun or 0
        return queued

    def _assemble_stable(self, session: Session, study: Study, now: datetime) -> Job | None:
        """Queue a stable study's run (or let it await its report), or skip it when it holds
        nothing to process."""
        if processable_instances(study):
            return self.pairing.schedule(session, study, now)
        change_state(study, StudyState.SKIPPED)
        audit.record(
            session,
            Action.STUDY_SKIPPED,
            Outcome.WARNING,
            ids=StudyIds.of(study),
            detail={
                "reason": "no frontal chest radiograph in the study",
                "instances": len(study.instances),
            },
        )
        return None

    def _alone(
        self,
        session: Session,
        study: Study,
        step: Callable[..., Job | None],
        *args: object,
        fail_study: bool = True,
    ) -> int | None:
        """``step(session, study, *args)`` in a savepoint; return 1 if it queued a run, 0 if
        not, and None if it raised: then its work is rolled back, the failure audited and (with
        ``fail_study``) the study failed, in a savepoint of its own."""
        try:
            with session.begin_nested():
                return int(step(session, study, *args) is not None)
        except Exception as exc:  # one study's bug must not hold up the others
            log.exception("assembly of study %d failed", study.id)
            reason = f"{type(exc).__name__}: {exc}"[:300]
        with session.begin_nested():
            if fail_study:
                change_state(study, StudyState.FAILED)
            audit.record(
                session,
                Action.STUDY_ASSEMBLY_FAILED,
                Outcome.FAILURE,
                ids=StudyIds.of(study),
                detail={"reason": reason, "state": study.state},
            )
        return None
