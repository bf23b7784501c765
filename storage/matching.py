"""Lookups joining reports and studies by their keys: accession number or Study Instance UID."""

from __future__ import annotations

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from storage.schema import Job, Report, ReportState, Study, StudyState


def reports_for(session: Session, study: Study) -> list[Report]:
    """Waiting or paired reports whose accession or Study Instance UID is the study's, oldest
    first."""
    keys = [Report.study_uid == study.study_uid]
    if study.accession:
        keys.append(Report.accession == study.accession)
    stmt = (
        select(Report)
        .where(or_(*keys), Report.state != ReportState.REFUSED)
        .where(or_(Report.study_id.is_(None), Report.study_id == study.id))
        .order_by(Report.id)
    )
    return list(session.scalars(stmt))


def awaiting_studies(session: Session) -> list[Study]:
    stmt = select(Study).where(Study.state == StudyState.AWAITING_REPORT).order_by(Study.id)
    return list(session.scalars(stmt))


def late_reports(session: Session) -> list[tuple[Report, Study]]:
    """Waiting reports whose study has already been processed (done or failed)."""
    match = or_(
        Report.study_uid == Study.study_uid,
        and_(Report.accession.is_not(None), Report.accession == Study.accession),
    )
    stmt = (
        select(Report, Study)
        .join(Study, match)
        .where(
            Report.state == ReportState.WAITING,
            Study.state.in_((StudyState.DONE, StudyState.FAILED)),
        )
        .order_by(Report.id)
    )
    return [(report, study) for report, study in session.execute(stmt)]


def latest_run(study: Study) -> Job | None:
    return study.jobs[-1] if study.jobs else None
