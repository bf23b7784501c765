"""One received instance, whichever door it came through: checked, made durable, recorded.

The storage SCP (C-STORE) and the STOW-RS endpoint (DICOMweb) both hand an instance here as
the bytes of a DICOM Part 10 file, with its dataset as encoded and its transfer syntax, and
get back a storage status: 0x0000 when the instance is on disk and in the database, else a
failure (PS3.4 C-STORE statuses, which STOW-RS answers as the Failure Reason) with the reason
the audit log keeps. The checks, in order:

1. the size limits, on the dataset as encoded, before pydicom parses it (a deflated dataset is
   inflated with a bounded output; pixel data is judged from its header);
2. the header: Study and SOP Instance UIDs present, valid DICOM UIDs (they name files), the
   SOP Instance UID the same as the one the request named;
3. the spool's free space and the study's instance cap;
4. in one transaction: a second patient under a Study UID already received is refused, a
   duplicate with the same content is a success, one with other content a conflict.

The file is written (and synced) before the transaction, named by its content hash, so a
refused duplicate never overwrites what was accepted. Every refusal is audited
(``instance.refused``); nothing here raises for bad input.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread

from node.config import Settings
from node.dicom.admission import Admission
from node.dicom.classify import classify
from node.dicom.limits import IngestLimits, LimitRefusal
from node.logsafe import describe
from node.uids import uid_problem
from storage import audit
from storage.actions import Action
from storage.audit import Outcome
from storage.database import Database
from storage.identifiers import StudyIds
from storage.spool import FileStore, instance_relpath
from storage.studies import (
    InstanceHeader,
    ReceiveOutcome,
    add_instance,
    complete_studies,
    duplicate_outcome,
    find_instance,
    patient_conflict,
)

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
# 0xCxxx: "cannot understand". The low byte tells an admin reading a peer's log which check failed.
CANNOT_PARSE = 0xC001
MISSING_UIDS = 0xC002
UID_MISMATCH = 0xC003
CONFLICTING_DUPLICATE = 0xC004
PATIENT_MISMATCH = 0xC005  # another patient's identity under a Study UID already received
INVALID_UID = 0xC006  # a Study, Series or SOP Instance UID that is not a DICOM UID
WRONG_STUDY = 0xC007  # STOW-RS to /studies/{uid}: the instance belongs to another study


@dataclass(frozen=True)
class Sender:
    """Who sent an instance, as the audit log names them."""

    ae_title: str | None
    address: str | None
    via: str | None = None  # the door, when not C-STORE ("STOW-RS")

    @property
    def actor(self) -> dict[str, str | None]:
        return {"actor_ae": self.ae_title, "actor_ip": self.address}


@dataclass(frozen=True)
class Received:
    """What became of one instance: its status and, for a refusal, why."""

    status: int
    reason: str | None = None
    study_uid: str | None = None
    sop_uid: str | None = None
    sop_class_uid: str | None = None
    limit: LimitRefusal | None = None  # a refusal for size carries its own ErrorComment

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS


@dataclass(frozen=True)
class Instance:
    """An instance as a door received it.

    Attributes
    ----------
    data:
        The DICOM Part 10 file: File Meta and dataset.
    dataset:
        The dataset as encoded (without File Meta), for the size limits.
    transfer_syntax:
        The dataset's transfer syntax UID.
    sop_uid, sop_class_uid:
        What the request named (C-STORE's Affected SOP Instance / Class UID); None when the
        door names nothing but the file (STOW-RS).
    study_uid:
        The study the request was addressed to (STOW-RS ``/studies/{uid}``), or None.
    """

    data: bytes
    dataset: bytes
    transfer_syntax: str
    sop_uid: str | None = None
    sop_class_uid: str | None = None
    study_uid: str | None = None


class _Refused(Exception):
    def __init__(self, status: int, reason: str, sop_uid: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.sop_uid = sop_uid  # once known to be a valid UID: the answer may name it


class InstanceIntake:
    """Takes instances into the spool and the database, under the node's limits."""

    def __init__(
        self, settings: Settings, db: Database, spool: FileStore, admission: Admission
    ) -> None:
        self.settings = settings
        self.db = db
        self.spool = spool
        self.admission = admission
        self.limits = IngestLimits(settings.max_decoded_bytes, settings.max_study_instances)

    def take(self, instance: Instance, sender: Sender) -> Received:
        """Check, store and record one instance; never raises for bad input."""
        claimed = instance.sop_uid
        try:
            over = self.limits.check_dataset(instance.dataset, instance.transfer_syntax)
            if over is not None:
                return self._refuse_over_limit(over, claimed, sender)
            header, note = self._read_header(instance)
        except _Refused as refused:
            return self.refuse(refused.status, refused.reason, claimed or refused.sop_uid, sender)
        except Exception as exc:  # any malformed input: pydicom decodes values lazily
            reason = f"cannot parse dataset: {type(exc).__name__}: {exc}"[:500]
            return self.refuse(CANNOT_PARSE, reason, claimed, sender)
        ids = _instance_ids(header)
        if not self.admission.has_room():
            return self.refuse(OUT_OF_RESOURCES, "spool disk nearly full", header.sop_uid, sender)
        over = self.limits.check_study(self.db, header.study_uid, header.sop_uid)
        if over is not None:
            return self._refuse_over_limit(over, header.sop_uid, sender, ids)
        try:
            received = self._store(header, instance.data, note, sender, ids)
        except OSError as exc:
            log.error("spool write failed: %s", exc.strerror)
            reason = f"cannot store: {exc.strerror}"
            return self.refuse(OUT_OF_RESOURCES, reason, header.sop_uid, sender)
        return received

    def complete(self, finished: Mapping[str, int], sender: Sender) -> bool:
        """Mark studies complete whose sender is done with them (an association released, a
        STOW-RS request answered); ``finished`` maps Study UID to instances stored. Returns
        whether any study was marked; a database failure only logs (the study still becomes
        stable after the stable age)."""
        try:
            with self.db.transaction() as session:
                studies = complete_studies(session, finished)
                for study in studies:
                    audit.record(
                        session,
                        Action.STUDY_COMPLETE,
                        **sender.actor,
                        ids=StudyIds.of(study),
                        detail={"instances": finished[study.study_uid]},
                    )
        except Exception as exc:
            # Type only: the error's text quotes the statement's UIDs and patient IDs.
            log.error("could not mark received studies complete: %s", describe(exc))
            return False
        return bool(studies)

    def _read_header(self, instance: Instance) -> tuple[InstanceHeader, str | None]:
        """Parse and check what the node keeps of an instance; raise ``_Refused`` or any
        parsing error for input that cannot be accepted."""
        ds = dcmread(BytesIO(instance.data))
        study_uid = str(ds.get("StudyInstanceUID", "")).strip()
        sop_uid = str(ds.get("SOPInstanceUID", "")).strip()
        if not study_uid or not sop_uid:
            raise _Refused(MISSING_UIDS, "Study or SOP Instance UID missing")
        named = instance.sop_uid or str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")).strip()
        if named and sop_uid != named:
            raise _Refused(UID_MISMATCH, "dataset SOP Instance UID differs from the request")
        _check_uids(ds)
        if instance.study_uid and study_uid != instance.study_uid:
            reason = "the instance belongs to another study than the request's"
            raise _Refused(WRONG_STUDY, reason, sop_uid)
        verdict = classify(
            ds, assume_chest_without_body_part=self.settings.assume_chest_without_body_part
        )
        sop_class = instance.sop_class_uid or str(ds.get("SOPClassUID", "")).strip()
        header = InstanceHeader(
            sop_uid=sop_uid,
            sop_class_uid=sop_class,
            study_uid=study_uid,
            series_uid=_short(ds.get("SeriesInstanceUID")),
            modality=_short(ds.get("Modality"), 16),
            patient_id=_short(ds.get("PatientID")),
            patient_name=_short(ds.get("PatientName"), 200),
            issuer_of_patient_id=_short(ds.get("IssuerOfPatientID")),
            patient_birth_date=_short(ds.get("PatientBirthDate"), 16),
            accession=_short(ds.get("AccessionNumber")),
            transfer_syntax=str(instance.transfer_syntax),
            view=verdict.view,
            processable=verdict.processable,
            skip_reason=None if verdict.processable else verdict.reason,
        )
        return header, verdict.reason if verdict.processable else None

    def _store(
        self, header: InstanceHeader, data: bytes, note: str | None, sender: Sender, ids: dict
    ) -> Received:
        # The file first, then one transaction. The content hash in the name means a second,
        # different object with the same UID never overwrites the one already accepted, and
        # an identical one rewrites the same bytes.
        sha256 = hashlib.sha256(data).hexdigest()
        relpath = instance_relpath(header.study_uid, f"{header.sop_uid}.{sha256[:12]}")
        stored = self.spool.write(relpath, data)
        done = Received(SUCCESS, None, header.study_uid, header.sop_uid, header.sop_class_uid)
        with self.db.transaction() as session:
            existing = find_instance(session, header.sop_uid)
            if existing is None:
                conflict = patient_conflict(session, header)
                if conflict is None:
                    self._record(session, header, stored, sha256, note, sender, ids)
                    return done
                status, reason = PATIENT_MISMATCH, conflict
            elif duplicate_outcome(existing, sha256) == ReceiveOutcome.DUPLICATE:
                audit.record(
                    session, Action.INSTANCE_DUPLICATE, Outcome.SUCCESS, **sender.actor, **ids
                )
                return done
            else:
                status = CONFLICTING_DUPLICATE
                reason = "SOP Instance UID already received with different content"
            audit.record(
                session,
                Action.INSTANCE_REFUSED,
                Outcome.FAILURE,
                **sender.actor,
                **ids,
                detail={"reason": reason, "status": f"0x{status:04X}"},
            )
        self.spool.remove(stored.relpath)  # the refused copy; the accepted ones are untouched
        log.warning("refused an instance: %s", reason)
        return Received(status, reason, header.study_uid, header.sop_uid, header.sop_class_uid)

    @staticmethod
    def _record(session, header, stored, sha256, note, sender: Sender, ids: dict) -> None:
        add_instance(
            session,
            header,
            relpath=stored.relpath,
            size=stored.size,
            sha256=sha256,
            calling_ae=sender.ae_title,
        )
        detail = {"size": stored.size, "transfer_syntax": header.transfer_syntax}
        if sender.via:
            detail["via"] = sender.via
        if note:
            detail["note"] = note
        audit.record(
            session, Action.INSTANCE_RECEIVED, Outcome.SUCCESS, **sender.actor, **ids, detail=detail
        )
        if not header.processable:
            audit.record(
                session,
                Action.INSTANCE_SKIPPED,
                Outcome.WARNING,
                **sender.actor,
                **ids,
                detail={"reason": header.skip_reason},
            )

    def _refuse_over_limit(
        self, over: LimitRefusal, sop_uid: str | None, sender: Sender, ids: dict | None = None
    ) -> Received:
        """Audit (``instance.refused``) a refusal for size."""
        self._audit_refused(sender, ids or {"sop_uid": sop_uid or None}, over.reason, over.status)
        log.warning("refused an instance: %s", over.comment)
        study_uid = ids["ids"].study_uid if ids else None
        return Received(over.status, over.reason, study_uid, sop_uid, limit=over)

    def refuse(self, status: int, reason: str, sop_uid: str | None, sender: Sender) -> Received:
        """Audit a refusal decided before the instance could be read (``instance.refused``)."""
        self._audit_refused(sender, {"sop_uid": sop_uid or None}, reason, status)
        return Received(status, reason, sop_uid=sop_uid)

    def _audit_refused(self, sender: Sender, ids: dict, reason: str, status: int) -> None:
        try:
            with self.db.transaction() as session:
                audit.record(
                    session,
                    Action.INSTANCE_REFUSED,
                    Outcome.FAILURE,
                    **sender.actor,
                    **ids,
                    detail={"reason": reason, "status": f"0x{status:04X}"},
                )
        except Exception as exc:  # the status must reach the peer even when the database is down
            log.error("could not audit a refused instance: %s", describe(exc))


def status_dataset(received: Received) -> Dataset:
    """A C-STORE response status whose Error Comment (0000,0902) tells the sender's admin what
    was wrong, as an LO value in the command set's default repertoire: at most 64 characters,
    printable ASCII, no backslash."""
    if received.limit is not None:
        return received.limit.status_dataset()
    response = Dataset()
    response.Status = received.status
    comment = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in received.reason or "")
    response.ErrorComment = comment[:64].strip()
    return response


def _instance_ids(header: InstanceHeader) -> dict[str, Any]:
    """The audit columns that name a received instance: its study's, its series and itself."""
    return {"ids": StudyIds.of(header), "series_uid": header.series_uid, "sop_uid": header.sop_uid}


def _check_uids(ds: Dataset) -> None:
    """Refuse an instance whose UIDs are not DICOM UIDs: they name spool and result paths and
    are copied into the results the PACS gets. A missing Series UID is left to the reader."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if keyword not in ds:
            continue
        problem = uid_problem(str(ds.get(keyword) or "").strip())
        if problem:
            raise _Refused(INVALID_UID, f"{keyword} is not a valid UID ({problem})")


def _short(value: object, limit: int = 64) -> str | None:
    """A header value as text for a database column, or None; malformed over-long values are
    cut rather than refused (the spooled file keeps them whole)."""
    text = str(value).strip() if value is not None else ""
    return text[:limit] or None
