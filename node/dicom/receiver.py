"""The storage SCP: receive an instance, make it durable, record it, answer.

The C-STORE handler does one thing: spool and record. It never decodes pixels or runs
inference; a failure anywhere becomes a DICOM status and an audit event, never an exception
into pynetdicom.

A sender that releases its association has sent the study: the studies it carried are marked
complete then (unless another open association is still sending to one of them), so they are
processed at once instead of after the stable age. An aborted association completes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from node.config import Settings
from node.dicom.admission import REJECT_LOCAL_LIMIT, Admission
from node.dicom.intake import (
    CANNOT_PARSE,
    SUCCESS,
    Instance,
    InstanceIntake,
    Sender,
    status_dataset,
)
from node.dicom.tcp import no_delay
from node.dicom.transport import ConnectionGuard
from node.disk import data_paths
from node.log_privacy import withhold_dicom_values_from_the_log
from node.refusals import RefusalAudit
from node.tls import server_context
from storage.actions import Action
from storage.database import Database
from storage.spool import FileStore

log = logging.getLogger(__name__)

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
        self.admission = Admission(
            settings.ae_title,
            settings.known_calling_aes,
            spool.root,
            settings.min_free_disk_mb * 1024 * 1024,
            also=data_paths(settings),
        )
        self.intake = InstanceIntake(settings, db, spool, self.admission)
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
        sender = Sender(requestor.ae_title, requestor.address)
        try:
            instance = Instance(
                data=event.encoded_dataset(include_meta=True),
                dataset=event.request.DataSet.getvalue(),
                transfer_syntax=str(event.context.transfer_syntax),
                sop_uid=str(event.request.AffectedSOPInstanceUID),
                sop_class_uid=str(event.request.AffectedSOPClassUID),
            )
        except Exception as exc:  # a request pynetdicom could decode but not re-encode
            reason = f"cannot parse dataset: {type(exc).__name__}: {exc}"[:500]
            uid = str(event.request.AffectedSOPInstanceUID or "")
            return status_dataset(self.intake.refuse(CANNOT_PARSE, reason, uid, sender))
        received = self.intake.take(instance, sender)
        if not received.stored:
            return status_dataset(received)
        self._track(event.assoc, received.study_uid)
        return SUCCESS

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
        if self.intake.complete(finished, Sender(requestor.ae_title, requestor.address)):
            self.on_complete()

    def _on_closed(self, event: evt.Event) -> None:
        # After an abort (or a release already handled): nothing completes, only forget.
        self._untrack(event.assoc)
