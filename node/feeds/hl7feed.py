"""The HL7 feed: one MLLP frame in, one committed report and audit event, one ACK out.

AA is built only after the transaction holding the report (and its audit event) committed;
every frame, garbage included, leaves an audit event with the peer's address:

==============  ========  ===================================================================
action          ACK       when
==============  ========  ===================================================================
hl7.received    AA        stored
hl7.duplicate   AA        same MSH-10 and content already stored (sender retry): not stored
hl7.unusable    AE        parses, but cannot be used (type, keys, text, length, id reused)
hl7.rejected    AR        not HL7 (empty, no MSH, bad bytes), oversized, or the node failed
==============  ========  ===================================================================
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from node.errors import ConfigError
from node.feeds.errors import ErrorCode, HL7ParseError, HL7Unusable
from node.feeds.hl7ack import AA, AE, AR, AckError, build_ack
from node.feeds.hl7header import MessageHeader
from node.feeds.hl7message import (
    DEFAULT_ACCESSION_KEYS,
    ParsedReport,
    parse_accession_keys,
    parse_message,
    read_header_leniently,
)
from node.feeds.mllp import Peer
from node.logsafe import audit_text, describe
from storage import audit
from storage.actions import Action
from storage.audit import Outcome
from storage.database import Database
from storage.identifiers import StudyIds
from storage.reports import ReportFieldTooLong, ReportOutcome, store_report

log = logging.getLogger(__name__)

SOURCE = "hl7"

# (session, report, peer) -> ReportOutcome.STORED | DUPLICATE | CONFLICT. Runs inside the
# transaction that also records the audit event, so a sink that pairs the report with its
# study at once commits (or fails) together with the ACK's promise.
ReportSink = Callable[[Session, ParsedReport, Peer], str]

# Where a too-long stored value came from, for ERR-2.
_FIELD_LOCATIONS = {"patient_id": "PID-3", "message_id": "MSH-10", "study_uid": "ZDS-1"}


def store_in_reports(session: Session, report: ParsedReport, peer: Peer) -> str:
    """The default sink: a ``reports`` row in state ``waiting``."""
    return store_report(
        session,
        source=SOURCE,
        message_id=report.message_id,
        kind=report.kind,
        text=report.text,
        message_type=report.message_type,
        accession=report.accession,
        study_uid=report.study_uid,
        patient_id=report.patient_id,
        status=report.status,
        sections=report.sections,
        observed_at=report.observed_at,
        sender=_sender(report.header, peer)[:200],
    )


class HL7Feed:
    """Turns MLLP frames into stored reports, audit events and ACKs (an ``mllp`` handler).

    Parameters
    ----------
    db:
        Where reports and audit events go.
    accession_keys:
        Fields the accession number is read from, first non-empty wins (``"OBR-3"``...).
    sink:
        Stores a parsed report; defaults to ``store_in_reports``. May raise ``HL7Unusable``
        to answer AE.
    application, facility:
        The node's name in ACKs to messages that did not name their receiver (MSH-5/6).
    on_stored:
        Called after the commit of each newly stored report (not for duplicates), e.g. to wake
        the scheduler that pairs reports with studies.

    Raises
    ------
    ConfigError
        An accession key is not a field location.
    """

    def __init__(
        self,
        db: Database,
        *,
        accession_keys: Sequence[str] = DEFAULT_ACCESSION_KEYS,
        sink: ReportSink = store_in_reports,
        application: str = "CXRNODE",
        facility: str = "",
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        try:
            parse_accession_keys(accession_keys)
        except ValueError as exc:
            raise ConfigError(f"accession_keys: {exc}") from None
        self.db = db
        self.accession_keys = tuple(accession_keys)
        self.sink = sink
        self.application = application
        self.facility = facility
        self.on_stored = on_stored or (lambda: None)

    def handle_frame(self, payload: bytes, peer: Peer) -> bytes:
        """Parse, store, audit and acknowledge one message; never raises.

        Whatever goes wrong unexpectedly (a parser bug, a failing ACK builder) is answered AR
        with an audited ``hl7.rejected``: the sender learns it, the connection stays open.
        """
        try:
            return self._answer(payload, peer)
        except Exception as exc:
            log.error(
                "handling a %d-byte message from %s failed: %s",
                len(payload),
                peer[0],
                describe(exc),
            )
            error = AckError(ErrorCode.INTERNAL_ERROR, "the node could not handle this message")
            return self._reject(payload, _header_or_none(payload), error, peer, internal=exc)

    def _answer(self, payload: bytes, peer: Peer) -> bytes:
        try:
            report = parse_message(payload, self.accession_keys)
        except HL7ParseError as exc:
            error = AckError(exc.code, exc.reason)
            return self._reject(payload, exc.header, error, peer, logged=exc.unquoted)
        except HL7Unusable as exc:
            return self._unusable(exc, exc.header, peer, ids=StudyIds())
        except Exception as exc:
            log.error(
                "parser failed on a %d-byte message from %s: %s",
                len(payload),
                peer[0],
                describe(exc),
            )
            error = AckError(ErrorCode.INTERNAL_ERROR, "the node could not parse this message")
            return self._reject(payload, _header_or_none(payload), error, peer, internal=exc)

        ids = StudyIds.of(report)
        try:
            action = self._store(report, peer, ids)
        except HL7Unusable as exc:
            return self._unusable(exc, report.header, peer, ids)
        except ReportFieldTooLong as exc:
            location = report.accession_key if exc.field == "accession" else None
            problem = HL7Unusable(
                str(exc),
                location or _FIELD_LOCATIONS.get(exc.field),
                ErrorCode.VALUE_TOO_LONG,
            )
            return self._unusable(problem, report.header, peer, ids)
        except Exception as exc:
            # The database (or a custom sink) failed: nothing was committed. AR tells the
            # sender to keep the message and try again later. The error's text quotes the
            # statement's parameters (report text, identifiers): the audit event gets it.
            log.error(
                "could not store message %s from %s: %s",
                report.message_id,
                peer[0],
                describe(exc),
            )
            error = AckError(ErrorCode.INTERNAL_ERROR, "the node could not store the message")
            detail = self._detail(report.header, peer, AR, error)
            self._audit_safely(Action.HL7_REJECTED, peer, ids, detail | {"error": audit_text(exc)})
            return self._ack(report.header, AR, error)
        log.info("%s %s from %s: %s", report.message_type, report.message_id, peer[0], action)
        if action == Action.HL7_RECEIVED:
            self._notify()
        return self._ack(report.header, AA)

    def _store(self, report: ParsedReport, peer: Peer, ids: StudyIds) -> Action:
        """Run the sink and record the audit event in one transaction; return the action."""
        with self.db.transaction() as session:
            outcome = self.sink(session, report, peer)
            if outcome == ReportOutcome.CONFLICT:
                raise HL7Unusable(
                    f"message control id {report.message_id} was already received with "
                    "different content; a new message needs a new MSH-10",
                    "MSH-10",
                    ErrorCode.DUPLICATE_KEY,
                )
            action = (
                Action.HL7_DUPLICATE if outcome == ReportOutcome.DUPLICATE else Action.HL7_RECEIVED
            )
            detail = self._detail(report.header, peer, AA) | {
                "kind": report.kind,
                "status": report.status,
                "accession_key": report.accession_key,
                "sections": sorted(report.sections),
                "notes": list(report.notes),
            }
            audit.record(session, action, Outcome.SUCCESS, actor_ip=peer[0], ids=ids, detail=detail)
        return action

    def _notify(self) -> None:
        try:
            self.on_stored()
        except Exception:
            log.exception("on_stored callback failed")  # the report is stored all the same

    def handle_oversized(self, head: bytes, size: int, peer: Peer) -> bytes:
        """Answer AR to a frame over the size limit (its start is kept for the MSH echo)."""
        header = read_header_leniently(head)
        error = AckError(
            ErrorCode.INTERNAL_ERROR, f"message of {size} bytes exceeds the node's size limit"
        )
        return self._reject(head, header, error, peer, size=size)

    def _reject(
        self,
        payload: bytes,
        header: MessageHeader | None,
        error: AckError,
        peer: Peer,
        size: int | None = None,
        *,
        logged: str | None = None,
        internal: Exception | None = None,
    ) -> bytes:
        """AR with an audited ``hl7.rejected``. ``logged``: the reason as the application log
        gets it, when ``error.reason`` quotes the message; ``internal``: the unexpected
        exception, whose text goes to the audit event only."""
        try:
            detail = self._detail(header, peer, AR, error)
            ack = self._ack(header, AR, error)
        except Exception as exc:  # a header too odd to echo: answer without it
            log.error(
                "could not echo the header of a rejected message from %s: %s",
                peer[0],
                describe(exc),
            )
            header = None
            detail = self._detail(None, peer, AR, error)
            ack = self._ack(None, AR, error)
        detail |= {
            "size": len(payload) if size is None else size,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "head": payload[:60].decode("latin-1").encode("unicode_escape").decode("ascii"),
        }
        if internal is not None:
            detail["error"] = audit_text(internal)
        self._audit_safely(Action.HL7_REJECTED, peer, StudyIds(), detail)
        log.warning("rejected a message from %s: %s", peer[0], logged or error.reason)
        return ack

    def _unusable(
        self, exc: HL7Unusable, header: MessageHeader | None, peer: Peer, ids: StudyIds
    ) -> bytes:
        error = AckError(exc.code, exc.reason, exc.error_location)
        self._audit_safely(Action.HL7_UNUSABLE, peer, ids, self._detail(header, peer, AE, error))
        log.warning(
            "%s %s from %s not usable: %s",
            header.message_type if header else "message",
            header.message_id if header else "",
            peer[0],
            exc.reason,
        )
        return self._ack(header, AE, error)

    def _ack(self, header: MessageHeader | None, code: str, error: AckError | None = None) -> bytes:
        return build_ack(header, code, error, application=self.application, facility=self.facility)

    def _audit_safely(
        self, action: Action, peer: Peer, ids: StudyIds, detail: dict[str, Any]
    ) -> None:
        # A refusal is answered even when it cannot be recorded: the sender must not hang.
        try:
            with self.db.transaction() as session:
                audit.record(
                    session, action, Outcome.FAILURE, actor_ip=peer[0], ids=ids, detail=detail
                )
        except Exception as exc:  # the detail quotes the message: not into the application log
            log.error("could not record %s from %s: %s", action, peer[0], describe(exc))

    @staticmethod
    def _detail(
        header: MessageHeader | None, peer: Peer, ack: str, error: AckError | None = None
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {"ack": ack, "peer_port": peer[1]}
        if header is not None:
            detail |= {
                "message_id": header.message_id,
                "message_type": header.message_type,
                "version": header.version,
                "sender": _sender(header, peer),
                "charset": header.charset or None,
            }
        if error is not None:
            detail |= {"code": error.code, "reason": error.reason, "location": error.location}
        return detail


def _header_or_none(payload: bytes) -> MessageHeader | None:
    """The MSH for an AR's echo, or None when even the lenient reading fails."""
    try:
        return read_header_leniently(payload)
    except Exception as exc:
        log.error("could not read the header of a %d-byte message: %s", len(payload), describe(exc))
        return None


def _sender(header: MessageHeader, peer: Peer) -> str:
    return f"{header.sending_application}|{header.sending_facility}@{peer[0]}"
