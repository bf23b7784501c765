"""Which clinical text a study's run reads, and when it runs: the pairing rules.

- A report matches a study by accession number or Study Instance UID; it is attached only when
  its Patient ID equals the study's. Otherwise pairing is refused and audited: one patient's
  report is never read with another's images.
- A stable study runs as soon as a matching report is there. Without one it waits up to the
  pairing window, then runs with the order's indication if there is one, else image-only.
- A report arriving after its study ran without a report, a corrected report (status C), or a
  final report after the preliminary one the study ran with, queues a new run whose results
  replace the earlier ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from node.config import Settings
from storage import audit, jobs
from storage.actions import Action
from storage.audit import Outcome
from storage.identifiers import StudyIds
from storage.matching import awaiting_studies, late_reports, latest_run, reports_for
from storage.schema import Job, Report, ReportState, Study, StudyState, as_utc, change_state


class ReportPairing:
    """Applies the pairing rules inside the caller's transaction."""

    def __init__(self, settings: Settings) -> None:
        self.window = timedelta(seconds=settings.pairing_window_s)
        self.stable_age = timedelta(seconds=settings.stable_age_s)

    def schedule(self, session: Session, study: Study, now: datetime) -> Job | None:
        """Queue the study's run if its report is there or its window is over; else wait."""
        matching = self._matching_reports(session, study)
        reports = [r for r in matching if r.kind == "report"]
        if reports:
            return self._queue(session, study, reports[-1], "first")
        if now < self._stable_since(study) + self.window:
            if study.state != StudyState.AWAITING_REPORT:
                change_state(study, StudyState.AWAITING_REPORT)
                audit.record(
                    session,
                    Action.STUDY_AWAITING_REPORT,
                    ids=StudyIds.of(study),
                    detail={"window_s": self.window.total_seconds()},
                )
            return None
        indications = [r for r in matching if r.kind == "indication"]
        audit.record(
            session,
            Action.PAIRING_WINDOW_EXPIRED,
            Outcome.WARNING,
            ids=StudyIds.of(study),
            detail={"runs_with": "indication" if indications else "image only"},
        )
        return self._queue(session, study, indications[-1] if indications else None, "first")

    def _stable_since(self, study: Study) -> datetime:
        """When the study became stable: its sender released the association, or the stable
        age passed after its last instance."""
        if study.completed_at is not None:
            return as_utc(study.completed_at)
        return as_utc(study.last_received_at) + self.stable_age

    def schedule_waiting(self, session: Session, now: datetime) -> list[Job]:
        """Re-check every study waiting for its report."""
        queued = [self.schedule(session, study, now) for study in awaiting_studies(session)]
        return [job for job in queued if job is not None]

    def rerun_for_late_reports(self, session: Session) -> list[Job]:
        """Queue a new run for each already processed study whose report arrived late or was
        corrected."""
        queued = [
            self.rerun_for_late_report(session, study, report)
            for report, study in late_reports(session)
        ]
        return [job for job in queued if job is not None]

    def rerun_for_late_report(self, session: Session, study: Study, report: Report) -> Job | None:
        """Queue a new run of a processed ``study`` for its late or corrected ``report``, if
        the report changes what the study ran with; else pair the report without one."""
        if not self._same_patient(session, report, study):
            return None
        previous = latest_run(study)
        used = previous.report if previous else None
        reason = _rerun_reason(report, used)
        if reason is None:
            report.state = ReportState.PAIRED
            report.study_id = study.id
            why = (
                "an indication after the run changes nothing"
                if report.kind != "report"
                else "the study already ran with a report this one does not supersede"
            )
            audit.record(
                session,
                Action.PAIRING_NO_RERUN,
                ids=StudyIds.of(study),
                detail={"report_id": report.id, "why": why},
            )
            return None
        return self._queue(session, study, report, reason, replaces=previous)

    def _matching_reports(self, session: Session, study: Study) -> list[Report]:
        return [r for r in reports_for(session, study) if self._same_patient(session, r, study)]

    @staticmethod
    def _same_patient(session: Session, report: Report, study: Study) -> bool:
        if report.patient_id and study.patient_id and report.patient_id == study.patient_id:
            return True
        report.state = ReportState.REFUSED
        audit.record(
            session,
            Action.PAIRING_REFUSED,
            Outcome.FAILURE,
            ids=StudyIds.of(study),
            detail={
                "reason": "patient ID of the report differs from the study's",
                "report_id": report.id,
                "report_patient_id": report.patient_id,
                "report_accession": report.accession,
            },
        )
        return False

    @staticmethod
    def _queue(
        session: Session,
        study: Study,
        report: Report | None,
        reason: str,
        replaces: Job | None = None,
    ) -> Job:
        if report is not None:
            report.state = ReportState.PAIRED
            report.study_id = study.id
            audit.record(
                session,
                Action.PAIRING_PAIRED,
                ids=StudyIds.of(study),
                detail={"report_id": report.id, "kind": report.kind, "status": report.status},
            )
        return queue_run_audited(session, study, report, reason, replaces)


def _rerun_reason(report: Report, used: Report | None) -> str | None:
    if report.kind != "report":
        return None
    if used is None or used.kind != "report":
        return "late report"
    if (report.status or "").upper() == "C":
        return "corrected report"
    if (used.status or "").upper() == "P" and (report.status or "").upper() == "F":
        return "final report"
    return None


def queue_run_audited(
    session: Session,
    study: Study,
    report: Report | None,
    reason: str,
    replaces: Job | None = None,
    actor: dict | None = None,
) -> Job:
    """Queue the study's next run (``storage.jobs.queue_run``) and audit ``study.queued``
    with why, what text it reads, the run it replaces and ``actor`` (who asked, if anyone)."""
    job = jobs.queue_run(session, study, report=report, reason=reason, replaces=replaces)
    session.flush()
    audit.record(
        session,
        Action.STUDY_QUEUED,
        **(actor or {}),
        ids=StudyIds.of(study),
        detail={
            "run": job.run,
            "reason": reason,
            "text": job.text_source,
            "replaces_run": replaces.run if replaces else None,
            "images": sum(1 for i in study.instances if i.processable),
        },
    )
    return job
