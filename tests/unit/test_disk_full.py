"""A full disk: runs that meet ENOSPC are deferred (queued again later) or failed, never left
'running'; the worker pauses below min_free_disk_mb; a confirmed send whose record could not be
written is not sent again; result files of finished runs are purged after retention. Real
SQLite file, real bundled model, a real pynetdicom storage SCP as the destination."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from sqlalchemy import select

from models.default import bundled_default_package
from models.package import load_package
from models.predictor import Predictor
from node.config import Destination, Settings
from node.delivery import Delivery
from node.dicom.sender import DicomSender
from node.orthanc import free_port
from node.retention import Retention
from node.worker import Worker
from storage import audit, jobs, outbox
from storage.database import Database
from storage.schema import Job, JobState, Study, StudyState, utcnow
from storage.spool import FileStore
from support.work_items import queue_study


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(load_package(bundled_default_package()), device="cpu")


def node_settings(tmp_path: Path, **settings) -> Settings:
    values = {"outputs": ("SR",), "build_processes": 0, "min_free_disk_mb": 0, **settings}
    return Settings(data_dir=tmp_path, **values)


def make_database(settings: Settings) -> Database:
    db = Database(settings.database_url)
    db.create_schema()
    return db


def make_worker(tmp_path: Path, predictor: Predictor, **settings) -> Worker:
    settings = node_settings(tmp_path, **settings)
    return Worker(
        settings,
        make_database(settings),
        FileStore(tmp_path / "spool"),
        FileStore(tmp_path / "results"),
        predictor,
    )


@pytest.fixture
def worker(tmp_path: Path, predictor: Predictor) -> Iterator[Worker]:
    worker = make_worker(tmp_path, predictor, disk_full_retry_s=60, max_job_attempts=2)
    yield worker
    worker.close()


def rsna(shared_data: Path) -> Path:
    return sorted((shared_data / "rsna-pneumonia-sample/stage_1_train_images").glob("*.dcm"))[0]


def the_job(part: Worker | Delivery) -> Job:
    with part.db.transaction() as session:
        return session.scalar(select(Job))


def events(part: Worker | Delivery, action: str) -> list[dict]:
    with part.db.transaction() as session:
        found = audit.query(session, audit.AuditFilter(action=action))
        return [audit.as_dict(e) for e in found]


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def make_due_now(worker: Worker) -> None:
    with worker.db.transaction() as session:
        session.scalar(select(Job)).not_before = utcnow() - timedelta(seconds=1)


def test_enospc_writing_results_defers_the_run_then_fails_it(worker, shared_data, monkeypatch):
    queue_study(worker, "1.2.1", rsna(shared_data))
    monkeypatch.setattr(worker.results, "write", enospc)
    assert worker.process_next(limit=8) == 1
    job = the_job(worker)
    assert job.state == JobState.QUEUED and job.not_before is not None
    (deferred,) = events(worker, "job.deferred")
    assert deferred["outcome"] == "failure" and deferred["study_uid"] == "1.2.1"
    assert deferred["detail"]["reason"] == "disk full: No space left on device"
    assert deferred["detail"]["retry_in_s"] == 60
    assert worker.process_next(limit=8) == 0  # not before its delay
    make_due_now(worker)
    assert worker.process_next(limit=8) == 1  # the second claim: max_job_attempts
    job = the_job(worker)
    assert job.state == JobState.FAILED
    assert job.error == "disk full: No space left on device, 2 times"
    assert [e["detail"]["attempts"] for e in events(worker, "job.failed")] == [2]


def test_a_full_database_defers_the_run_once_it_can_be_recorded(worker, shared_data, monkeypatch):
    queue_study(worker, "1.2.2", rsna(shared_data))
    full = sqlite3.OperationalError("database or disk is full")
    real_transaction = worker.db.transaction
    calls = {"n": 0}

    def transaction():
        calls["n"] += 1
        if calls["n"] > 1:  # the claim commits; every later write finds the disk full
            raise full
        return real_transaction()

    monkeypatch.setattr(worker.db, "transaction", transaction)
    assert worker.process_next(limit=8) == 1
    with real_transaction() as session:  # nothing could be written...
        assert session.scalar(select(Job)).state == JobState.RUNNING
    assert worker.process_next(limit=8) == 0  # ...so nothing else is claimed meanwhile
    monkeypatch.setattr(worker.db, "transaction", real_transaction)
    assert worker.process_next(limit=8) == 0  # records the deferral first
    job = the_job(worker)
    assert job.state == JobState.QUEUED and job.not_before is not None
    assert events(worker, "job.deferred")[0]["detail"]["reason"].startswith("disk full:")


def test_the_worker_claims_nothing_below_min_free_disk(tmp_path, predictor, shared_data):
    worker = make_worker(tmp_path, predictor, min_free_disk_mb=1 << 40)
    try:
        queue_study(worker, "1.2.3", rsna(shared_data))
        assert worker.process_next(limit=8) == 0
        assert worker.process_next(limit=8) == 0
        assert the_job(worker).state == JobState.QUEUED
        (paused,) = events(worker, "worker.paused")
        assert paused["detail"]["min_free_disk_mb"] == 1 << 40
    finally:
        worker.close()


@pytest.fixture
def destination() -> Iterator[tuple[Destination, list[str]]]:
    """A real storage SCP on loopback that records the SOP Instance UID of every C-STORE."""
    received: list[str] = []
    lock = threading.Lock()

    def on_store(event):
        with lock:
            received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="PACS")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    yield Destination("PACS", "127.0.0.1", port), received
    server.shutdown()


def test_a_send_whose_confirmation_cannot_be_recorded_is_not_sent_again(
    tmp_path, shared_data, destination, monkeypatch
):
    dest, received = destination
    settings = node_settings(tmp_path, destinations=(dest,), delivery_retry_initial_s=0)
    delivery = Delivery(
        settings, make_database(settings), FileStore(tmp_path / "results"), DicomSender("CXRNODE")
    )
    try:
        ds = pydicom.dcmread(rsna(shared_data))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(delivery.results.root / "result.dcm")
        with delivery.db.transaction() as session:
            study = Study(study_uid="1.2.4", instance_count=1, runs=0)
            session.add(study)
            job = jobs.queue_run(session, study)
            job.state = JobState.SENDING
            session.flush()
            outbox.add(session, job.id, str(dest), "SR", ds.SOPInstanceUID, "result.dcm")
        real_record = delivery._record_deliveries
        failures = {"left": 3}

        def record(*args):
            if failures["left"]:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real_record(*args)

        monkeypatch.setattr(delivery, "_record_deliveries", record)
        for _ in range(6):
            delivery.deliver()
        assert received == [ds.SOPInstanceUID]  # sent once, recorded at the fourth try
        job = the_job(delivery)
        assert job.state == JobState.DONE
        assert len(events(delivery, "result.sent")) == 1
    finally:
        delivery.db.dispose()


def test_result_files_of_finished_runs_are_purged_after_retention(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    results = FileStore(tmp_path / "results")
    spool = FileStore(tmp_path / "spool")
    runs = {}
    with db.transaction() as session:
        for uid, state, age_days in [
            ("1.3.1", JobState.DONE, 31),
            ("1.3.2", JobState.FAILED, 31),
            ("1.3.3", JobState.SENDING, 31),  # still being delivered: kept
            ("1.3.4", JobState.DONE, 1),  # recent: kept
        ]:
            study = Study(study_uid=uid, instance_count=1, runs=0, state=StudyState.DONE)
            session.add(study)
            job = jobs.queue_run(session, study)
            job.state = state
            session.flush()
            for kind in ("SR", "SC"):
                relpath = f"{uid}/run-1/{kind}-{uid}.9.dcm"
                results.write(relpath, b"DICM")
                outbox.add(session, job.id, "PACS@h:1", kind, f"{uid}.9.{kind}", relpath)
            job.updated_at = utcnow() - timedelta(days=age_days)
            runs[uid] = tmp_path / "results" / uid
    retention = Retention(Settings(retention_days=30), db, spool, results)
    assert retention.purge_results() == 2
    assert not runs["1.3.1"].exists() and not runs["1.3.2"].exists()
    assert runs["1.3.3"].exists() and runs["1.3.4"].exists()
    with db.transaction() as session:
        purged = audit.query(session, audit.AuditFilter(action="result.purged"))
        assert sorted((e.study_uid, e.detail["files"]) for e in purged) == [
            ("1.3.1", 2),
            ("1.3.2", 2),
        ]
    assert retention.purge_results() == 0
    assert retention.purge() == 0  # the periodic job runs both; nothing more is due
    shutil.rmtree(tmp_path / "results")
