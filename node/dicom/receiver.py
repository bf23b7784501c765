"""The storage SCP: receive an instance, make it durable, record it, answer.

The C-STORE handler does one thing: spool and record. It never decodes pixels or runs
inference; a failure anywhere becomes a DICOM status and an audit event, never an exception
into pynetdicom.

A sender that releases its association has sent the study: the studies it carried are marked
complete then (unless another open association is still sending to one of them), so they are
processed at once instead of after the stable age. An aborted association completes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from node.config import Settings
from node.dicom.admission import REJECT_LOCAL_LIMIT, Admission
from node.dicom.classify import classify
from node.dicom.limits import IngestLimits, LimitRefusal
from node.dicom.tcp import no_delay
from node.dicom.transport import ConnectionGuard
from node.disk import data_paths
from node.log_privacy import withhold_dicom_values_from_the_log
from node.logsafe import describe
from node.refusals import RefusalAudit
from node.tls import server_context
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
# Peer addresses named in a "total association limit reached" event (the largest holders).
MAX_NAMED_HOLDERS = 10


class StorageSCP:
    """The node's AE as an association acceptor.

    Parameters
    ----------
    settings:
        AE title, port, allowed calling AEs.
    db, spool:
        Where instances are recorded and stored.
    on_complete:
        Called (outside the database transaction) when a released association completed at
        least one study, e.g. to wake the study assembler.
    refusals:
        Where refused connections (per-peer cap, failed TLS handshake, an overdue PDU or
        DIMSE message, an oversized PDU) and rejected associations are audited, once per
        peer and window; by default one of its own.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        spool: FileStore,
        on_complete: Callable[[], None] | None = None,
        refusals: RefusalAudit | None = None,
    ) -> None:
        withhold_dicom_values_from_the_log()  # pydicom would log the bad UIDs refused, quoted
        self.settings = settings
        self.db = db
        self.spool = spool
        self.on_complete = on_complete or (lambda: None)
        self.refusals = refusals or RefusalAudit(db, settings.refusal_audit_window_s)
        # Studies each open association stored instances of, and how many open associations
        # are sending each study: a study is complete when the last of them is released.
        self._sent_by: dict[object, Counter[str]] = {}
        self._senders: Counter[str] = Counter()
        self._tracking = threading.Lock()
        self.limits = IngestLimits(settings.max_decoded_bytes, settings.max_study_instances)
        self.admission = Admission(
            settings.ae_title,
            settings.known_calling_aes,
            spool.root,
            settings.min_free_disk_mb * 1024 * 1024,
            also=data_paths(settings),
        )
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = settings.dicom_max_associations
        # Announced to peers; a PDU declaring more is refused before it is read.
        self.ae.maximum_pdu_size = settings.dicom_max_pdu_bytes
        self.ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = None
        self._guard: ConnectionGuard | None = None

    def start(self) -> None:
        handlers = [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        address = (self.settings.dicom_host, self.settings.dicom_port)
        self._guard = self._connection_guard()
        self._server = self._guard.start_server(self.ae, address, handlers)
        log.info("storage SCP %s listening on %s:%d", self.settings.ae_title, *address)

    def _connection_guard(self) -> ConnectionGuard:
        """Per-peer cap, TLS handshake and timeouts of every connection (node.dicom.transport)."""
        settings = self.settings
        ssl_context = None
        if settings.tls:
            ssl_context = server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
        return ConnectionGuard(
            self.refusals,
            max_per_peer=settings.dicom_max_associations_per_peer,
            acse_timeout_s=settings.dicom_acse_timeout_s,
            dimse_timeout_s=settings.dicom_dimse_timeout_s,
            network_timeout_s=settings.dicom_network_timeout_s,
            ssl_context=ssl_context,
            handshake_timeout_s=settings.tls_handshake_timeout_s,
            pdu_timeout_s=settings.dicom_pdu_timeout_s,
            max_pdu_bytes=settings.dicom_max_pdu_bytes,
            message_timeout_s=settings.dicom_message_timeout_s,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            self._guard.stop()
            self.refusals.flush()

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_requested(self, event: evt.Event) -> None:
        """Apply the association policy before pynetdicom negotiates (PS3.8 A-ASSOCIATE-RJ)."""
        assoc = event.assoc
        calling_ae = str(assoc.requestor.primitive.calling_ae_title).strip()
        called_ae = str(assoc.requestor.primitive.called_ae_title).strip()
        address = assoc.requestor.address
        refusal = self.admission.check(calling_ae, address, called_ae)
        if refusal is None:
            return
        # Audit first: once the peer reads the rejection, the event must already be there.
        self._audit_rejection(calling_ae, address, refusal.reason, called_ae=called_ae)
        assoc.acse.send_reject(*refusal.reject)
        # As pynetdicom's own rejections do: wait until the reject PDU is out and the peer has
        # closed, or pynetdicom shuts the socket before the PDU leaves.
        assoc.kill()

    def _on_rejected(self, event: evt.Event) -> None:
        # Rejections pynetdicom makes itself: in this configuration, only at its total limit.
        assoc = event.assoc
        rejection = assoc.acceptor.primitive
        verdict = (rejection.result, rejection.result_source, rejection.diagnostic)
        if verdict != REJECT_LOCAL_LIMIT:
            requestor = assoc.requestor
            self._audit_rejection(requestor.ae_title, requestor.address, "rejected by negotiation")
            return
        self._audit_rejection(
            assoc.requestor.ae_title,
            assoc.requestor.address,
            "total association limit reached",
            limit=self.ae.maximum_associations,
            holders=self._slot_holders(assoc),
        )

    def _slot_holders(self, refused: object) -> list[dict[str, object]]:
        """Who holds the association slots: each peer address with its open associations, the
        largest first (at most ``MAX_NAMED_HOLDERS`` of them)."""
        holders = Counter(
            str(assoc.requestor.address)
            for assoc in self.ae.active_associations
            if assoc is not refused and assoc.is_acceptor and assoc.is_alive()
        )
        return [
            {"address": address, "associations": count}
            for address, count in holders.most_common(MAX_NAMED_HOLDERS)
        ]

    def _audit_rejection(
        self,
        calling_ae: str,
        address: str,
        reason: str,
        called_ae: str | None = None,
        **extra: object,
    ) -> None:
        """Audit a rejected association once per peer address, reason and window, with the
        count (``RefusalAudit``): a loop of bad requests costs one row per window, not one
        per request, and the first one is recorded before the peer reads its rejection."""
        detail = {"reason": reason, "called_ae": called_ae or self.ae.ae_title, **extra}
        written = self.refusals.record(
            Action.ASSOCIATION_REJECTED, address, detail, actor_ae=calling_ae, group=reason
        )
        if written:  # the application log, too, gets one line per peer and window
            log.warning("rejected an association from %s: %s", address, reason)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        requestor = event.assoc.requestor
        actor = {"actor_ae": requestor.ae_title, "actor_ip": requestor.address}
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        try:
            data = event.encoded_dataset(include_meta=True)
            if (over := self._over_size_limit(event)) is not None:
                return self._refuse_over_limit(over, sop_uid, actor)
            header, note = self._read_header(data, event)
        except _Refused as refused:
            return self._refuse(refused.status, refused.reason, sop_uid, actor)
        except Exception as exc:  # any malformed input: pydicom decodes values lazily
            reason = f"cannot parse dataset: {type(exc).__name__}: {exc}"[:500]
            return self._refuse(CANNOT_PARSE, reason, sop_uid, actor)
        if not self.admission.has_room():
            return self._refuse(OUT_OF_RESOURCES, "spool disk nearly full", sop_uid, actor)
        over = self.limits.check_study(self.db, header.study_uid, sop_uid)
        if over is not None:
            return self._refuse_over_limit(over, sop_uid, actor, header)
        try:
            status = self._store(header, data, note, actor)
        except OSError as exc:
            log.error("spool write failed: %s", exc.strerror)
            return self._refuse(OUT_OF_RESOURCES, f"cannot store: {exc.strerror}", sop_uid, actor)
        if status == SUCCESS:
            self._track(event.assoc, header.study_uid)
        return status

    def _over_size_limit(self, event: evt.Event) -> LimitRefusal | None:
        """Check the dataset as received against the size limits, before pydicom reads it
        (pydicom inflates a deflated dataset whole as it opens it)."""
        stream = event.request.DataSet.getvalue()
        return self.limits.check_dataset(stream, str(event.context.transfer_syntax))

    def _refuse_over_limit(
        self, over: LimitRefusal, sop_uid: str, actor: dict, header: InstanceHeader | None = None
    ) -> Dataset:
        """Audit (``instance.refused``) and answer a refusal for size, with its ErrorComment."""
        try:
            with self.db.transaction() as session:
                audit.record(
                    session,
                    Action.INSTANCE_REFUSED,
                    Outcome.FAILURE,
                    **actor,
                    **(_instance_ids(header) if header else {"sop_uid": sop_uid or None}),
                    detail={"reason": over.reason, "status": f"0x{over.status:04X}"},
                )
        except Exception:  # the status must reach the peer even when the database is down
            log.exception("could not audit a refused instance")
        log.warning("refused an instance: %s", over.comment)
        return over.status_dataset()

    def _track(self, assoc: object, study_uid: str) -> None:
        with self._tracking:
            studies = self._sent_by.setdefault(assoc, Counter())
            if study_uid not in studies:
                self._senders[study_uid] += 1
            studies[study_uid] += 1

    def _untrack(self, assoc: object) -> dict[str, int]:
        """Forget an ended association; return the studies it was the last sender of, with the
        number of instances it stored of each."""
        with self._tracking:
            studies = self._sent_by.pop(assoc, Counter())
            last = {}
            for study_uid, count in studies.items():
                self._senders[study_uid] -= 1
                if self._senders[study_uid] <= 0:
                    del self._senders[study_uid]
                    last[study_uid] = count
            return last

    def _on_released(self, event: evt.Event) -> None:
        finished = self._untrack(event.assoc)
        if not finished or not self.settings.complete_on_release:
            return
        requestor = event.assoc.requestor
        try:
            with self.db.transaction() as session:
                for study in complete_studies(session, finished):
                    audit.record(
                        session,
                        Action.STUDY_COMPLETE,
                        actor_ae=requestor.ae_title,
                        actor_ip=requestor.address,
                        ids=StudyIds.of(study),
                        detail={"instances": finished[study.study_uid]},
                    )
        except Exception as exc:  # the study still becomes stable after the stable age
            # Type only: the error's text quotes the statement's UIDs and patient IDs.
            log.error("could not mark released studies complete: %s", describe(exc))
            return
        self.on_complete()

    def _on_closed(self, event: evt.Event) -> None:
        # After an abort (or a release already handled): nothing completes, only forget.
        self._untrack(event.assoc)

    def _read_header(self, data: bytes, event: evt.Event) -> tuple[InstanceHeader, str | None]:
        """Parse and check what the node keeps of an instance; raise ``_Refused`` or any
        parsing error for input that cannot be accepted."""
        ds = dcmread(BytesIO(data))
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        study_uid = str(ds.get("StudyInstanceUID", "")).strip()
        if not study_uid or not str(ds.get("SOPInstanceUID", "")).strip():
            raise _Refused(MISSING_UIDS, "Study or SOP Instance UID missing")
        if str(ds.SOPInstanceUID) != sop_uid:
            raise _Refused(UID_MISMATCH, "dataset SOP Instance UID differs from the request")
        _check_uids(ds)
        verdict = classify(
            ds, assume_chest_without_body_part=self.settings.assume_chest_without_body_part
        )
        header = InstanceHeader(
            sop_uid=sop_uid,
            sop_class_uid=str(event.request.AffectedSOPClassUID),
            study_uid=study_uid,
            series_uid=_short(ds.get("SeriesInstanceUID")),
            modality=_short(ds.get("Modality"), 16),
            patient_id=_short(ds.get("PatientID")),
            patient_name=_short(ds.get("PatientName"), 200),
            issuer_of_patient_id=_short(ds.get("IssuerOfPatientID")),
            patient_birth_date=_short(ds.get("PatientBirthDate"), 16),
            accession=_short(ds.get("AccessionNumber")),
            transfer_syntax=str(event.context.transfer_syntax),
            view=verdict.view,
            processable=verdict.processable,
            skip_reason=None if verdict.processable else verdict.reason,
        )
        return header, verdict.reason if verdict.processable else None

    def _store(self, header: InstanceHeader, data: bytes, note: str | None, actor: dict) -> int:
        # The file first, then one transaction. The content hash in the name means a second,
        # different object with the same UID never overwrites the one already accepted, and
        # an identical one rewrites the same bytes.
        sha256 = hashlib.sha256(data).hexdigest()
        relpath = instance_relpath(header.study_uid, f"{header.sop_uid}.{sha256[:12]}")
        stored = self.spool.write(relpath, data)
        with self.db.transaction() as session:
            existing = find_instance(session, header.sop_uid)
            if existing is None:
                conflict = patient_conflict(session, header)
                if conflict is None:
                    self._record(session, header, stored, sha256, note, actor)
                    return SUCCESS
                status, reason = PATIENT_MISMATCH, conflict
            elif duplicate_outcome(existing, sha256) == ReceiveOutcome.DUPLICATE:
                audit.record(
                    session,
                    Action.INSTANCE_DUPLICATE,
                    Outcome.SUCCESS,
                    **actor,
                    **_instance_ids(header),
                )
                return SUCCESS
            else:
                status = CONFLICTING_DUPLICATE
                reason = "SOP Instance UID already received with different content"
            audit.record(
                session,
                Action.INSTANCE_REFUSED,
                Outcome.FAILURE,
                **actor,
                **_instance_ids(header),
                detail={"reason": reason, "status": f"0x{status:04X}"},
            )
        self.spool.remove(stored.relpath)  # the refused copy; the accepted ones are untouched
        log.warning("refused an instance: %s", reason)
        return _failure(status, reason)

    @staticmethod
    def _record(session, header, stored, sha256, note, actor: dict) -> None:
        add_instance(
            session,
            header,
            relpath=stored.relpath,
            size=stored.size,
            sha256=sha256,
            calling_ae=actor["actor_ae"],
        )
        detail = {"size": stored.size, "transfer_syntax": header.transfer_syntax}
        if note:
            detail["note"] = note
        ids = _instance_ids(header)
        audit.record(
            session, Action.INSTANCE_RECEIVED, Outcome.SUCCESS, **actor, **ids, detail=detail
        )
        if not header.processable:
            audit.record(
                session,
                Action.INSTANCE_SKIPPED,
                Outcome.WARNING,
                **actor,
                **ids,
                detail={"reason": header.skip_reason},
            )

    def _refuse(self, status: int, reason: str, sop_uid: str, actor: dict) -> int:
        try:
            with self.db.transaction() as session:
                audit.record(
                    session,
                    Action.INSTANCE_REFUSED,
                    Outcome.FAILURE,
                    **actor,
                    sop_uid=sop_uid or None,
                    detail={"reason": reason, "status": f"0x{status:04X}"},
                )
        except Exception as exc:  # the status must reach the peer even when the database is down
            log.error("could not audit a refused instance: %s", describe(exc))
        return _failure(status, reason)


def _instance_ids(header: InstanceHeader) -> dict[str, Any]:
    """The audit columns that name a received instance: its study's, its series and itself."""
    return {"ids": StudyIds.of(header), "series_uid": header.series_uid, "sop_uid": header.sop_uid}


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _check_uids(ds: Dataset) -> None:
    """Refuse an instance whose UIDs are not DICOM UIDs: they name spool and result paths and
    are copied into the results the PACS gets. A missing Series UID is left to the reader."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if keyword not in ds:
            continue
        problem = uid_problem(str(ds.get(keyword) or "").strip())
        if problem:
            raise _Refused(INVALID_UID, f"{keyword} is not a valid UID ({problem})")


def _failure(status: int, reason: str) -> Dataset:
    """A C-STORE response status whose Error Comment (0000,0902) tells the sender's admin what
    was wrong, as an LO value in the command set's default repertoire: at most 64 characters,
    printable ASCII, no backslash."""
    response = Dataset()
    response.Status = status
    comment = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in reason)
    response.ErrorComment = comment[:64].strip()
    return response


def _short(value: object, limit: int = 64) -> str | None:
    """A header value as text for a database column, or None; malformed over-long values are
    cut rather than refused (the spooled file keeps them whole)."""
    text = str(value).strip() if value is not None else ""
    return text[:limit] or None
