"""The running node: the storage SCP and report feeds, the study assembler, the inference
worker and delivery, wired together, each repeating in a thread of its own (``node.loop``).

Which of them run is the ``role``: "receiver" runs the listeners, assembly, delivery and
retention and never loads the model; "worker" runs only the worker; "all" runs everything.
``start`` checks everything it can before it audits ``node.started`` and opens a listener
(``node.startup``).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import ssl
import threading
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from models.predictor import Predictor
from node.assembler import Assembler
from node.build import keep_identifiers_out_of_the_log
from node.config import Settings
from node.delivery import Delivery
from node.dicom.receiver import StorageSCP
from node.dicom.sender import DicomSender
from node.dicomweb.endpoint import StowServer
from node.dicomweb.stow import StowSender
from node.feeds.csvfeed import CsvFeed
from node.feeds.hl7feed import HL7Feed
from node.feeds.mllp import MllpServer
from node.hl7out.destination import HL7ResultSender
from node.integrity import IntegrityReport, check_database, check_file, damaged
from node.loop import Loop
from node.recovery import recover_interrupted_runs
from node.refusals import RefusalAudit
from node.retention import Retention
from node.startup import StartupError, check_settings, load_model, summary
from node.tls import client_context, server_context
from node.worker import Worker
from storage import audit
from storage.actions import Action
from storage.database import Database
from storage.spool import FileStore

log = logging.getLogger(__name__)

# Seconds between rounds of a loop nothing woke: the worker and delivery are also woken when
# work arrives (a job queued, results in the outbox), so this is only their fallback.
WORKER_INTERVAL_S = 2.0
DELIVERY_INTERVAL_S = 2.0


class Node:
    """One node process. ``start`` checks its settings, then resumes unfinished work from the
    database, then listens."""

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
        self._started = False  # node.started was audited
        self.scp: StorageSCP | None = None
        self.stow: StowServer | None = None  # the STOW-RS endpoint, when dicomweb_port is set
        self.mllp: MllpServer | None = None
        self.assembler: Assembler | None = None
        self.delivery: Delivery | None = None
        self.worker: Worker | None = None
        self.loops: dict[str, Loop] = {}
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
        """Check the settings, the database and the model; audit ``node.started``; then start
        the listeners and the loops.

        Raises
        ------
        CxrNodeError
            A setting the node cannot run with (``StartupError``, ``ConfigError``) or a damaged
            database, before anything was audited or listens.
        """
        # A bad admin setting must stop the node before it accepts anything.
        admin = self._admin_server()
        check_settings(self.settings, self.receives)
        self._check_database()
        predictor = load_model(self.settings) if self.works else None
        self._resume()
        self._started = True
        if predictor is not None:
            log.info("model %s loaded on %s", predictor.package.config.package_id, predictor.device)
        try:
            self._start_parts(predictor, admin)
        except OSError as exc:  # a port taken since check_settings looked, say
            self.stop()  # whatever started listens no more
            raise StartupError(f"the node could not start: {exc}") from None
        except BaseException:
            self.stop()
            raise

    def _start_parts(self, predictor: Predictor | None, admin) -> None:
        settings = self.settings
        if self.receives:
            self.assembler = Assembler(settings, self.db)
            sender = DicomSender(settings.ae_title, ssl_context=self._destination_tls())
            hl7_tls = None
            if any(d.tls for d in settings.hl7_destinations):
                hl7_tls = client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
            self.delivery = Delivery(
                settings,
                self.db,
                self.results,
                sender,
                stow=StowSender(ssl_context=self._destination_tls()),
                hl7=HL7ResultSender(tls=hl7_tls),
            )
            self._start_loop("deliver", self.delivery.deliver, DELIVERY_INTERVAL_S)
            self._start_loop("retention", self.retention.purge, settings.retention_check_interval_s)
        if predictor is not None:
            self.worker = Worker(
                settings, self.db, self.spool, self.results, predictor, self._deliver_soon
            )
            self.worker.start_builders()
            self._start_loop(
                "worker", self._work, WORKER_INTERVAL_S, at_stop=self.worker.flush
            )  # the first round takes up the resumed jobs, if any
        if self.receives:
            # Assembly polls: a study becomes stable through the passage of time, not an event.
            interval = min(1.0, max(settings.stable_age_s / 2, 0.2))
            self._start_loop("assemble", self._assemble, interval)
            self.scp = StorageSCP(
                settings,
                self.db,
                self.spool,
                on_complete=self._assemble_soon,
                refusals=self.refusals,
            )
            self.scp.start()
            if settings.dicomweb_port:
                self.stow = StowServer(
                    settings, self.scp.intake, self.refusals, on_complete=self._assemble_soon
                ).start()
            self._start_feeds()
        if admin is not None:
            if predictor is not None:
                admin.serve_model(predictor)  # its calls are serialised: the worker's is shared
            self.admin = admin.start()

    def _start_loop(self, name: str, step, interval_s: float, at_stop=None) -> None:
        self.loops[name] = Loop(name, step, interval_s, at_stop=at_stop).start()

    def _check_database(self) -> None:
        """Check the database file and bring its schema up to date; a damaged file stops the
        start with one line (``DatabaseDamaged``)."""
        check_file(self.db)
        try:
            self.db.create_schema()
        except (DBAPIError, sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise damaged(self.db, exc) from None

    def _resume(self) -> None:
        """Compare the database with the spool and the head journal, resume interrupted runs
        and audit ``node.started``, in one transaction."""
        try:
            integrity = IntegrityReport()
            if self.receives:
                integrity = check_database(self.settings, self.db, self.spool)
            with self.db.transaction() as session:
                recovered = recover_interrupted_runs(session, self.settings.max_job_attempts)
                audit.record(
                    session,
                    Action.NODE_STARTED,
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

    def _admin_server(self):
        """The admin HTTP server (not started), or None when ``admin_port`` is 0."""
        if not self.settings.admin_port:
            return None
        from node.admin.probe import DestinationProbe
        from node.admin.server import AdminServer

        probe = DestinationProbe(
            self.settings.ae_title, self.settings.dicom_destinations, self._destination_tls()
        )
        return AdminServer(self.settings, self.db, probe)

    def stop(self) -> None:
        """Stop accepting, let the worker finish its current batch, and exit cleanly."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.admin:
            self.admin.stop()
        if self.stow:
            self.stow.stop()
        if self.scp:
            self.scp.stop()
        if self.mllp:
            self.mllp.stop()
        self.refusals.flush()
        # No new jobs first; then the worker commits the batch being built; delivery last.
        for name in ("assemble", "csv-feed", "worker", "deliver", "retention"):
            loop = self.loops.pop(name, None)
            if loop is not None:
                loop.stop()
        if self.worker:
            self.worker.close()
        if self._started:  # node.started is in the log
            with self.db.transaction() as session:
                audit.record(session, Action.NODE_STOPPED)
        self.db.dispose()

    def run_until_signalled(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop gracefully."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        log.info("node ready: %s", summary(self.settings))
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
        if settings.csv_folder:
            csv_feed = CsvFeed(
                Path(settings.csv_folder),
                self.db,
                max_file_bytes=settings.csv_max_file_mb * 1024 * 1024,
                on_stored=self._assemble_soon,
            )
            self._start_loop("csv-feed", csv_feed.poll, settings.csv_poll_interval_s)

    def _assemble_soon(self) -> None:
        """A study is complete or a report arrived: assemble now rather than on the next round."""
        loop = self.loops.get("assemble")
        if loop is not None:
            loop.wake()

    def _deliver_soon(self) -> None:
        """Results are in the outbox: send now rather than on the next round."""
        loop = self.loops.get("deliver")
        if loop is not None:
            loop.wake()

    def _assemble(self) -> None:
        if self.assembler.assemble():
            worker = self.loops.get("worker")
            if worker is not None:
                worker.wake()

    def _work(self) -> bool:
        """One worker round: a batch claimed (then another round at once), or, with the queue
        empty, the last batch's results committed."""
        if self.worker.process_next(self.settings.batch_studies):
            return True
        self.worker.flush()
        return False
