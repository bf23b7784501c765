"""The worker's batch: several queued studies through one forward pass and Grad-CAM, each getting
its own results, and a study that fails failing alone (real SQLite file, real bundled model)."""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from models.default import bundled_default_package
from models.package import load_package
from models.predictor import Predictor
from models.preprocess import dicom_to_display
from node.config import Settings
from node.worker import Worker
from storage import audit, embeddings
from storage.database import Database
from storage.schema import Embedding, Job, JobState, OutboxItem
from storage.spool import FileStore
from support.work_items import queue_study


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(load_package(bundled_default_package()), device="cpu")


@pytest.fixture(params=[1, 0], ids=["builder process", "in the worker"])
def worker(request, tmp_path: Path, predictor: Predictor) -> Iterator[Worker]:
    settings = Settings(data_dir=tmp_path, outputs=("SR", "SC"), build_processes=request.param)
    db = Database(settings.database_url)
    db.create_schema()
    worker = Worker(
        settings, db, FileStore(tmp_path / "spool"), FileStore(tmp_path / "results"), predictor
    )
    yield worker
    worker.close()


def job_states(worker: Worker) -> list[tuple[str, dict | None]]:
    with worker.db.transaction() as session:
        return [(job.state, job.result) for job in session.query(Job).order_by(Job.id)]


def stored_embeddings(worker: Worker) -> list[Embedding]:
    with worker.db.reading() as session:
        rows = session.scalars(select(Embedding).order_by(Embedding.id)).all()
        session.expunge_all()
        return list(rows)


def rsna(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))


def test_a_batch_gives_each_study_the_results_of_its_own_image(worker, predictor, shared_data):
    files = rsna(shared_data)[:3]
    for n, path in enumerate(files):
        queue_study(worker, f"1.2.{n}", path)
    assert worker.process_next(limit=8) == 3
    assert worker.process_next(limit=8) == 0  # and commits what the first call built
    states = job_states(worker)
    assert [state for state, _ in states] == [JobState.SENDING] * 3
    stored = stored_embeddings(worker)
    for path, (_, result), row in zip(files, states, stored, strict=True):
        alone = predictor.predict([dicom_to_display(pydicom.dcmread(path))])[0]
        batched = np.array(list(result["images"][0]["probabilities"].values()))
        np.testing.assert_allclose(batched, alone.probabilities, atol=1e-3)
        # Its embedding is stored with its results, keyed by its image and the package.
        assert row.model_id == predictor.package.config.package_id
        assert row.sop_uid == result["images"][0]["sop_uid"]
        assert (row.dim, len(row.vector)) == (alone.embedding.size, 4 * alone.embedding.size)
        vector = embeddings.from_bytes(row.vector, row.dim)
        np.testing.assert_allclose(vector, alone.embedding, atol=1e-3)
        assert result["batch_studies"] == 3
        assert {"decode_s", "preprocess_s", "inference_s", "gradcam_s", "build_s"} <= set(
            result["timings"]
        )
    with worker.db.transaction() as session:
        for job in session.query(Job):
            kinds = [o.kind for o in session.query(OutboxItem).filter_by(job_id=job.id)]
            assert kinds.count("SR") == 1 and "SC" in kinds  # overview, + one per finding


def test_an_undecodable_study_fails_alone(worker, shared_data, tmp_path):
    files = rsna(shared_data)
    queue_study(worker, "1.2.0", files[0])
    queue_study(worker, "1.2.1", files[1].read_bytes()[:4000])  # cut inside the pixel data
    assert worker.process_next(limit=8) == 2
    worker.flush()
    (first, _), (second, _) = job_states(worker)
    assert (first, second) == (JobState.SENDING, JobState.FAILED)
    assert [row.job_id for row in stored_embeddings(worker)] == [1]  # none of the failed run


def test_when_the_batch_fails_each_study_runs_alone(worker, predictor, shared_data, monkeypatch):
    files = rsna(shared_data)
    half = pydicom.dcmread(files[1])
    half.PixelData = half.pixel_array[::2, ::2].copy().tobytes()
    half.Rows, half.Columns = 512, 512
    half.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = shutil.copy(files[1], worker.spool.root / "half.dcm")
    half.save_as(path, enforce_file_format=True)
    queue_study(worker, "1.2.0", files[0])
    queue_study(worker, "1.2.1", Path(path))
    queue_study(worker, "1.2.2", files[2])

    real_prepare = predictor.prepare

    def prepare(displays, texts=None):  # the model cannot take the half-size image
        if any(d.shape != (1024, 1024) for d in displays):
            raise RuntimeError("shape mismatch")
        return real_prepare(displays, texts)

    monkeypatch.setattr(predictor, "prepare", prepare)
    assert worker.process_next(limit=8) == 3
    worker.flush()
    states = job_states(worker)
    assert [state for state, _ in states] == [JobState.SENDING, JobState.FAILED, JobState.SENDING]
    # Each ran alone once the batch of three had failed.
    assert [result["batch_studies"] for state, result in states if result] == [1, 1]


def test_the_results_of_a_batch_are_committed_by_the_next_call_or_a_flush(worker, shared_data):
    queue_study(worker, "1.2.0", rsna(shared_data)[0])
    assert worker.process_next(limit=8) == 1
    building = worker.settings.build_processes > 0
    # With a builder process the run is still being built; in the worker, it is committed.
    assert job_states(worker)[0][0] == (JobState.RUNNING if building else JobState.SENDING)
    worker.flush()
    assert job_states(worker)[0][0] == JobState.SENDING


@pytest.mark.parametrize("worker", [1], indirect=True, ids=["builder process"])
def test_a_run_whose_builder_dies_is_run_again(worker, shared_data):
    queue_study(worker, "1.2.0", rsna(shared_data)[0])
    assert worker.process_next(limit=8) == 1
    for builder in multiprocessing.active_children():  # mid-build: it takes ~100 ms
        builder.kill()
    assert worker.process_next(limit=8) == 0  # commits the killed run: back in the queue
    with worker.db.transaction() as session:
        (requeued,) = audit.query(session, audit.AuditFilter(action="job.requeued"))
        assert requeued.detail["reason"] == "a result builder process died"
    assert stored_embeddings(worker) == []  # the killed run stored nothing
    assert worker.process_next(limit=8) == 1  # claimed again, built by a new builder
    worker.flush()
    ((state, result),) = job_states(worker)
    assert state == JobState.SENDING and result["images"]
    assert len(stored_embeddings(worker)) == 1
