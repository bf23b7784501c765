"""The running node: storage SCP, study assembler, inference worker and delivery, wired together."""

from __future__ import annotations

import logging
import signal
import sqlite3
import ssl
import threading
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import DBAPIError

from models.default import bundled_default_package, ensure_reference_package
from models.package import load_package
from models.predictor import Predictor
from node.build import keep_identifiers_out_of_the_log
from node.config import Settings, describe
from node.dicom.receiver import StorageSCP
from node.dicom.sender import DicomSender
from node.feeds.csvfeed import CsvFeed
from node.feeds.hl7feed import HL7Feed
from node.feeds.mllp import MllpServer
from node.integrity import IntegrityReport, check_database, check_file, damaged
from node.pipeline import Pipeline
from node.recovery import recover_interrupted_runs
from node.refusals import RefusalAudit
from node.retention import Retention
from node.tls import client_context, server_context
from storage import audit
from storage.database import Database
from storage.spool import FileStore

log = logging.getLogger(__name__)


class Node:
    """One node process. ``start`` resumes unfinished work from the database first."""

    def __init__(self, settings: Settings) -> None:
        keep_identifiers_out_of_the_log()
        self.settings = settings
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db = Database(settings.database_url, node_name=settings.effective_node_name)
        self.spool = FileStore(data_dir / "spool")
        self.results = FileStore(data_dir / "results")
        self.retention = Retention(settings, self.db, self.spool, self.results)
        # Refused connections of the DICOM and MLLP listeners: one event per peer and window.
        self.refusals = RefusalAudit(self.db, settings.refusal_audit_window_s)
        self._stopping = threading.Event()
        self._work_available = threading.Event()
        self._worker: threading.Thread | None = None
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.scp: StorageSCP | None = None
        self.mllp: MllpServer | None = None
        self.pipeline: Pipeline | None = None
        self.admin = None  # node.admin.server.AdminServer when admin_port is set

    @property
    def receives(self) -> bool:
        """Runs the SCP, feeds, assembly, delivery and retention (roles "all", "receiver")."""
        return self.settings.role != "worker"

    @property
    def works(self) -> bool:
        """Runs the inference worker (roles "all", "worker")."""
        return self.settings.role != "receiver"

    def start(self) -> None:
        # Built first: a bad admin setting must stop the node before it accepts anything.
        admin = self._admin_server()
        self._open_database()
        package = load_package(self._model_path())
        predictor = Predictor(
            package, device=None if self.settings.device == "auto" else self.settings.device
        )
        log.info("model %s loaded on %s", package.config.package_id, predictor.device)
        self.pipeline = Pipeline(
            self.settings,
            self.db,
            self.spool,
            self.results,
            predictor,
            DicomSender(self.settings.ae_title, ssl_context=self._destination_tls()),
        )
        if self.receives:
            self.scp = StorageSCP(
                self.settings,
                self.db,
                self.spool,
                on_complete=self._assemble_soon,
                refusals=self.refusals,
            )
            self.scp.start()
            self._start_feeds()
            self._schedule_receiving()
        self.scheduler.start()
        if self.works:
            self.pipeline.start_builders()
            self._worker = threading.Thread(target=self._work_loop, name="worker", daemon=True)
            self._worker.start()
            self._work_available.set()  # resumed jobs, if any
        if admin is not None:
            self.admin = admin.start()

    def _open_database(self) -> None:
        """Check the database, bring its schema up to date, compare it with the spool and the
        head journal, resume interrupted runs; a damaged file stops the start with one line
        (``DatabaseDamaged``)."""
        check_file(self.db)
        try:
            self.db.create_schema()
            integrity = IntegrityReport()
            if self.receives:
                integrity = check_database(self.settings, self.db, self.spool)
            with self.db.transaction() as session:
                recovered = recover_interrupted_runs(session, self.settings.max_job_attempts)
                audit.record(
                    session,
                    "node.started",
                    detail={
                        "ae_title": self.settings.ae_title,
                        "port": self.settings.dicom_port,
                        "resumed_jobs": len(recovered.requeued),
                        "failed_jobs": len(recovered.failed),
                        "database_loss": integrity.loss,
                        "recovered_instances": integrity.recovered,
                        "role": self.settings.role,
                        "node_name": self.settings.effective_node_name,
                    },
                )
        except (DBAPIError, sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise damaged(self.db, exc) from None

    def _schedule_receiving(self) -> None:
        # Assembly polls: a study becomes stable through the passage of time, not an event.
        self.scheduler.add_job(
            self._assemble,
            "interval",
            seconds=min(1.0, max(self.settings.stable_age_s / 2, 0.2)),
            id="assemble",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self._deliver,
            "interval",
            seconds=2.0,
            id="deliver",
            max_instances=1,
            coalesce=True,
        )
        self.scheduler.add_job(
            self._purge,
            "interval",
            seconds=self.settings.retention_check_interval_s,
            id="retention",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )

    def _admin_server(self):
        """The admin HTTP server (not started), or None when ``admin_port`` is 0."""
        if not self.settings.admin_port:
            return None
        from node.admin.probe import DestinationProbe
        from node.admin.server import AdminServer

        probe = DestinationProbe(
            self.settings.ae_title, self.settings.destinations, self._destination_tls()
        )
        return AdminServer(self.settings, self.db, probe)

    def stop(self) -> None:
        """Stop accepting, let the worker finish its current job, and exit cleanly."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.admin:
            self.admin.stop()
        if self.scp:
            self.scp.stop()
        if self.mllp:
            self.mllp.stop()
        self.refusals.flush()
        self._work_available.set()
        if self._worker:
            self._worker.join()
        if self.pipeline:
            self.pipeline.close()
        self.scheduler.shutdown(wait=True)
        with self.db.transaction() as session:
            audit.record(session, "node.stopped")
        self.db.dispose()

    def run_until_signalled(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        log.info("node ready: %s", describe(self.settings))
        done.wait()
        log.info("shutting down")
        self.stop()

    def _destination_tls(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.tls_destinations:
            return None
        return client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)

    def _start_feeds(self) -> None:
        settings = self.settings
        if settings.hl7_port:
            feed = HL7Feed(
                self.db,
                accession_keys=settings.hl7_accession_keys,
                application=settings.ae_title,
                on_stored=self._assemble_soon,
            )
            self.mllp = MllpServer(
                feed,
                settings.hl7_host,
                settings.hl7_port,
                max_frame_bytes=settings.hl7_max_frame_bytes,
                idle_timeout_s=settings.hl7_idle_timeout_s,
                frame_timeout_s=settings.hl7_frame_timeout_s,
                max_connections=settings.hl7_max_connections,
                max_connections_per_peer=settings.hl7_max_connections_per_peer,
                ssl_context=(
                    server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
                    if settings.tls
                    else None
                ),
                handshake_timeout_s=settings.tls_handshake_timeout_s,
                on_refused=self.refusals.record,
            )
            self.mllp.start()
            log.info("HL7 MLLP listener on %s:%d", settings.hl7_host, settings.hl7_port)
        if settings.csv_folder:
            csv_feed = CsvFeed(
                Path(settings.csv_folder),
                self.db,
                max_file_bytes=settings.csv_max_file_mb * 1024 * 1024,
                on_stored=self._assemble_soon,
            )
            self.scheduler.add_job(
                csv_feed.poll,
                "interval",
                seconds=settings.csv_poll_interval_s,
                id="csv-feed",
                max_instances=1,
                coalesce=True,
            )

    def _assemble_soon(self) -> None:
        """A report arrived: pair it now rather than on the next assembly tick."""
        try:
            self.scheduler.modify_job("assemble", next_run_time=datetime.now(UTC))
        except Exception:  # not started yet or shutting down; the tick will see the report
            log.debug("assembly not rescheduled", exc_info=True)

    def _model_path(self) -> Path:
        if self.settings.model == "default":
            return bundled_default_package()
        if self.settings.model == "reference":
            return ensure_reference_package(self.settings.data_dir)
        return Path(self.settings.model)

    def _assemble(self) -> None:
        try:
            if self.pipeline.assemble():
                self._work_available.set()
        except Exception:
            log.exception("study assembly failed; retrying on the next tick")

    def _purge(self) -> None:
        try:
            self.retention.purge()
        except Exception:
            log.exception("retention purge failed; retrying on the next tick")

    def _deliver(self) -> None:
        try:
            self.pipeline.deliver()
        except Exception:
            log.exception("delivery failed; retrying on the next tick")

    def _work_loop(self) -> None:
        while not self._stopping.is_set():
            self._work_available.wait(timeout=2.0)
            self._work_available.clear()
            while not self._stopping.is_set():
                try:
                    claimed = self.pipeline.process_next(self.settings.batch_studies)
                    if not claimed:
                        self.pipeline.flush()  # the last batch's results
                except Exception:
                    log.exception("worker step failed")
                    claimed = 0
                self._deliver_soon()
                if not claimed:
                    break
        self.pipeline.flush()  # the batch being built when the node was told to stop

    def _deliver_soon(self) -> None:
        """Results are in the outbox: send now rather than on the next delivery tick."""
        try:
            self.scheduler.modify_job("deliver", next_run_time=datetime.now(UTC))
        except Exception:  # the scheduler is shutting down; the outbox is durable anyway
            log.debug("delivery not rescheduled", exc_info=True)
