"""Received instances and the studies they form."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage.schema import Instance, Study, StudyState, change_state, utcnow


@dataclass(frozen=True)
class InstanceHeader:
    """What the node keeps of a received instance's header."""

    sop_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str | None
    modality: str | None
    patient_id: str | None
    accession: str | None
    transfer_syntax: str | None
    view: str | None
    processable: bool
    skip_reason: str | None
    # Patient identity besides the Patient ID, checked against the study's (see
    # ``patient_conflict``); None when the instance does not carry it.
    patient_name: str | None = None
    issuer_of_patient_id: str | None = None
    patient_birth_date: str | None = None


class ReceiveOutcome:
    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: already have it
    CONFLICT = "conflict"  # same SOP Instance UID, different bytes: refused


# Identity attributes besides the Patient ID: an instance conflicts with its study when both
# state one and they differ (systems that leave one out do not make a conflict).
_IDENTITY = (
    ("patient_name", "PatientName"),
    ("issuer_of_patient_id", "IssuerOfPatientID"),
    ("patient_birth_date", "PatientBirthDate"),
)

_OTHER_PATIENT = "differs from this Study UID's patient"  # 64 characters at most with a keyword


def find_instance(session: Session, sop_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_uid == sop_uid))


def duplicate_outcome(existing: Instance, sha256: str) -> str:
    """Classify a second arrival of an instance the node already holds."""
    return ReceiveOutcome.DUPLICATE if existing.sha256 == sha256 else ReceiveOutcome.CONFLICT


def patient_conflict(session: Session, header: InstanceHeader) -> str | None:
    """Why an instance cannot join the study its Study Instance UID names, or None.

    One study is one patient: the images of a run, its report and its results must never mix
    two. The Patient ID must equal the study's (an absent one is a value too); Patient's Name,
    Issuer of Patient ID and Patient's Birth Date must too where both state one.

    Returns
    -------
    str or None
        The attribute that differs, in words that name no value: the reason is shown to the
        sender, who must not learn the other patient's identity from it.
    """
    study = session.scalar(select(Study).where(Study.study_uid == header.study_uid))
    if study is None:
        return None
    if (study.patient_id or None) != (header.patient_id or None):
        return f"PatientID {_OTHER_PATIENT}"
    for field, name in _IDENTITY:
        known, given = getattr(study, field), getattr(header, field)
        if known and given and _comparable(field, known) != _comparable(field, given):
            return f"{name} {_OTHER_PATIENT}"
    return None


def _comparable(field: str, value: str) -> str:
    """A value as two systems writing it for one patient would agree on it."""
    if field != "patient_name":
        return value.strip()
    # PN: the alphabetic group only (ideographic and phonetic ones are often dropped), case,
    # spacing and trailing empty components ignored.
    alphabetic = value.split("=", 1)[0]
    return "^".join(" ".join(c.split()) for c in alphabetic.upper().split("^")).rstrip("^")


def add_instance(
    session: Session,
    header: InstanceHeader,
    *,
    relpath: str,
    size: int,
    sha256: str,
    calling_ae: str | None,
) -> Instance:
    """Record a newly spooled instance and (re)open its study for assembly.

    The caller checks ``patient_conflict`` first, in the same transaction.

    A study that was already processed goes back to ``receiving``: new images mean a new run
    once it is stable again.
    """
    now = utcnow()
    study = session.scalar(select(Study).where(Study.study_uid == header.study_uid))
    if study is None:
        study = Study(
            study_uid=header.study_uid,
            patient_id=header.patient_id,
            accession=header.accession,
            first_received_at=now,
            instance_count=0,
            runs=0,
        )
        session.add(study)
    for field, _ in _IDENTITY:  # the first instance to state an attribute sets it
        if getattr(study, field) is None:
            setattr(study, field, getattr(header, field))
    study.last_received_at = now
    study.completed_at = None  # complete again only once this instance's association ends
    study.instance_count += 1
    if study.state != StudyState.QUEUED:
        change_state(study, StudyState.RECEIVING)
    instance = Instance(
        sop_uid=header.sop_uid,
        sop_class_uid=header.sop_class_uid,
        study=study,
        series_uid=header.series_uid,
        modality=header.modality,
        view=header.view,
        path=relpath,
        size=size,
        sha256=sha256,
        transfer_syntax=header.transfer_syntax,
        calling_ae=calling_ae,
        received_at=now,
        processable=header.processable,
        skip_reason=header.skip_reason,
    )
    session.add(instance)
    return instance


def stable_studies(session: Session, received_before: datetime) -> list[Study]:
    """Studies still receiving that are complete (their sender released the association) or
    whose last instance arrived before ``received_before``."""
    stmt = (
        select(Study)
        .where(
            Study.state == StudyState.RECEIVING,
            or_(Study.completed_at.is_not(None), Study.last_received_at <= received_before),
        )
        .order_by(Study.last_received_at)
    )
    return list(session.scalars(stmt))


def complete_studies(session: Session, study_uids: Iterable[str]) -> list[Study]:
    """Mark the studies a released association sent as complete and return them. A study
    already queued keeps the mark: if it grew meanwhile, its next run starts without waiting
    for the stable age."""
    now = utcnow()
    studies = list(session.scalars(select(Study).where(Study.study_uid.in_(list(study_uids)))))
    for study in studies:
        study.completed_at = now
    return studies


def processable_instances(study: Study) -> list[Instance]:
    """The study's instances that are model input, in arrival order."""
    return sorted((i for i in study.instances if i.processable), key=lambda i: i.id)
