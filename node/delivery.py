"""Delivery: the outbox sent to each destination, with backoff; a job is done only when every
destination confirmed every object."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

from node.config import Settings, parse_destination
from node.destinations import HL7Destination, StowTarget
from node.dicom.sender import DicomSender
from node.dicomweb.stow import StowSender
from node.hl7out.destination import HL7ResultSender
from storage import audit, jobs, outbox
from storage.actions import Action
from storage.audit import Outcome
from storage.database import Database
from storage.identifiers import StudyIds
from storage.schema import Job, OutboxItem, as_utc, utcnow
from storage.spool import FileStore

log = logging.getLogger(__name__)


class Delivery:
    """Sends the result objects in the outbox and records what each destination confirmed.

    Parameters
    ----------
    settings:
        The retry and give-up delays.
    db:
        The node's database: the outbox, the jobs and the audit log.
    results:
        Where the result objects lie.
    sender:
        The DICOM storage SCU.
    stow, hl7:
        The STOW-RS and HL7 result senders, for destinations of those kinds.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        results: FileStore,
        sender: DicomSender,
        stow: StowSender | None = None,
        hl7: HL7ResultSender | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.results = results
        self.sender = sender
        self.stow = stow or StowSender()
        self.hl7 = hl7 or HL7ResultSender()
        # The configured destinations by their outbox key (a STOW-RS key lacks its credentials).
        self._destinations = {str(d): d for d in settings.destinations}
        # Confirmed sends whose "sent" could not be recorded: recorded later, never re-sent.
        self._unrecorded: dict[str, list[tuple[tuple[int, str], object]]] = {}
        self._record_failures = 0
        self._record_retry_at = 0.0

    def deliver(self) -> int:
        """Send every due outbox item; return how many were confirmed.

        When the outcome of a send cannot be recorded (the database's disk is full, say), the
        outcomes are kept and recording them is retried with backoff
        (``delivery_retry_initial_s`` doubling up to ``delivery_retry_max_s``) before anything
        else is sent: a confirmed object is never sent again because its confirmation could
        not be written.
        """
        if self._unrecorded and not self._record_unrecorded():
            return 0
        with self.db.transaction() as session:
            due = [(i.id, i.destination, i.path) for i in outbox.due(session)]
        confirmed = 0
        by_destination: dict[str, list[tuple[int, str]]] = {}
        for item_id, destination, relpath in due:
            by_destination.setdefault(destination, []).append((item_id, relpath))
        for destination, items in by_destination.items():
            paths = [self.results.path(relpath) for _, relpath in items]
            deliveries = self._send(destination, paths)
            try:
                confirmed += self._record_deliveries(destination, items, deliveries)
            except Exception:
                log.exception(
                    "sends to %s could not be recorded; kept to record later", destination
                )
                self._unrecorded[destination] = list(zip(items, deliveries, strict=True))
                self._back_off_recording()
        return confirmed

    def _send(self, key: str, paths: list) -> list:
        """Send files to the destination an outbox key names, by its transport."""
        destination = self._destinations.get(key) or parse_destination(key)
        if isinstance(destination, StowTarget):
            return self.stow.send(destination, paths)
        if isinstance(destination, HL7Destination):
            return self.hl7.send(destination, paths)
        return self.sender.send(destination, paths)

    def _record_unrecorded(self) -> bool:
        """Record the kept send outcomes, when their backoff is over; True once none wait."""
        if time.monotonic() < self._record_retry_at:
            return False
        for destination, outcomes in list(self._unrecorded.items()):
            items = [item for item, _ in outcomes]
            deliveries = [delivery for _, delivery in outcomes]
            try:
                self._record_deliveries(destination, items, deliveries)
            except Exception:
                log.exception("sends to %s still cannot be recorded", destination)
                self._back_off_recording()
                return False
            del self._unrecorded[destination]
        self._record_failures = 0
        return True

    def _back_off_recording(self) -> None:
        settings = self.settings
        delay = settings.delivery_retry_initial_s * 2 ** min(self._record_failures, 20)
        self._record_failures += 1
        self._record_retry_at = time.monotonic() + min(delay, settings.delivery_retry_max_s)

    def _record_deliveries(self, destination: str, items, deliveries) -> int:
        confirmed = 0
        with self.db.transaction() as session:
            touched: dict[int, Job] = {}
            for (item_id, _), delivery in zip(items, deliveries, strict=True):
                row = session.get(OutboxItem, item_id)
                job = row.job
                touched[job.id] = job
                ids = {"ids": StudyIds.of(job.study), "sop_uid": row.sop_uid}
                if delivery.ok:
                    outbox.mark_sent(row)
                    confirmed += 1
                    audit.record(
                        session,
                        Action.RESULT_SENT,
                        **ids,
                        detail={"destination": destination, "kind": row.kind, "run": job.run},
                    )
                    continue
                retry_in = self._retry_delay(row)
                outbox.mark_attempt_failed(row, delivery.error or "failed", retry_in)
                audit.record(
                    session,
                    Action.RESULT_SEND_FAILED,
                    Outcome.FAILURE,
                    **ids,
                    detail={
                        "destination": destination,
                        "error": delivery.error,
                        "attempt": row.attempts,
                        "retry_in_s": None if retry_in is None else round(retry_in.total_seconds()),
                    },
                )
                if retry_in is None:
                    # The alert: an admin must resend by hand. The health endpoint counts these.
                    jobs.fail(session, job, f"delivery to {destination} abandoned")
                    audit.record(
                        session,
                        Action.RESULT_ABANDONED,
                        Outcome.FAILURE,
                        **ids,
                        detail={
                            "destination": destination,
                            "attempts": row.attempts,
                            "give_up_after_s": self.settings.delivery_give_up_after_s,
                        },
                    )
            for job in touched.values():
                if jobs.finish_if_delivered(session, job):
                    audit.record(
                        session,
                        Action.STUDY_DONE,
                        ids=StudyIds.of(job.study),
                        detail={"run": job.run},
                    )
        return confirmed

    def _retry_delay(self, row: OutboxItem) -> timedelta | None:
        """Exponential backoff with jitter; None once the item is older than the give-up age."""
        age = (utcnow() - as_utc(row.created_at)).total_seconds()
        if age > self.settings.delivery_give_up_after_s:
            return None
        base = self.settings.delivery_retry_initial_s * 2 ** min(row.attempts, 20)
        delay = min(base, self.settings.delivery_retry_max_s) * random.uniform(0.8, 1.2)
        return timedelta(seconds=delay)
