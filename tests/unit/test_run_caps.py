"""A run reads at most ``max_run_images`` images of its study; the others are skipped with an
audited reason (real SQLite file, real bundled model, real RSNA images)."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from models.default import bundled_default_package
from models.package import load_package
from models.predictor import Predictor
from node.config import Settings
from node.worker import Worker
from storage import audit, jobs
from storage.database import Database
from storage.schema import Job, JobState, utcnow
from storage.spool import FileStore
from storage.studies import add_instance, stable_studies
from support.instances import frontal_cr


@pytest.fixture
def worker(tmp_path: Path):
    settings = Settings(
        data_dir=tmp_path, outputs=("SR",), build_processes=0, max_run_images=2, min_free_disk_mb=0
    )
    db = Database(settings.database_url)
    db.create_schema()
    predictor = Predictor(load_package(bundled_default_package()), device="cpu")
    worker = Worker(
        settings, db, FileStore(tmp_path / "spool"), FileStore(tmp_path / "results"), predictor
    )
    yield worker
    worker.close()


def test_a_run_reads_at_most_max_run_images_and_audits_the_rest(worker, shared_data):
    files = sorted((shared_data / "rsna-pneumonia-sample/stage_1_train_images").glob("*.dcm"))
    with worker.db.transaction() as session:
        for n, path in enumerate(files[:3]):
            ds = pydicom.dcmread(path)  # three images of one study
            ds.StudyInstanceUID = "1.5"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.5.{n + 1}"
            buffer = io.BytesIO()
            ds.save_as(buffer)
            relpath = f"1.5/{n}.dcm"
            worker.spool.write(relpath, buffer.getvalue())
            header = frontal_cr("1.5", f"1.5.{n + 1}", transfer_syntax=None)
            add_instance(session, header, relpath=relpath, size=1, sha256="0", calling_ae="X")
    with worker.db.transaction() as session:
        jobs.queue_run(session, stable_studies(session, utcnow())[0])
    assert worker.process_next(limit=8) == 1
    with worker.db.transaction() as session:
        job = session.query(Job).one()
        assert job.state == JobState.SENDING
        assert [i["sop_uid"] for i in job.result["images"]] == ["1.5.1", "1.5.2"]
        (skipped,) = audit.query(session, audit.AuditFilter(action="image.skipped"))
        assert skipped.sop_uid == "1.5.3" and skipped.outcome == "warning"
        assert skipped.detail["reason"] == "a run reads at most 2 images (max_run_images)"
