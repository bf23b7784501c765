"""Two node processes sharing one PostgreSQL database: a receiver (that also works) and a
worker-only node. Twenty studies from storescu are each processed exactly once, by one of them,
and the audit chain both wrote to stays intact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from node.orthanc import free_port
from support.peers import NODE_AE, NodeProcess, need, node_env, wait_for
from support.postgres import postgres_server  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

STUDIES = 20


class WorkerProcess(NodeProcess):
    """A worker-only node: no DICOM listener, so it is up once it logs that it is ready."""

    def _answers_echo(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log()}")
        return self.log_path.exists() and "node ready" in self.log_path.read_text(errors="replace")


def write_studies(shared_data: Path, folder: Path) -> list[str]:
    """``STUDIES`` new single-image studies made from the real RSNA radiographs."""
    sources = sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    folder.mkdir()
    uids = []
    for n in range(STUDIES):
        ds = pydicom.dcmread(sources[n % len(sources)])
        ds.decompress()  # storescu sends them as they are; any PACS accepts explicit VR LE
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AccessionNumber = f"PGW-{n:03d}"
        ds.PatientID = f"PGW-PATIENT-{n:03d}"
        ds.save_as(folder / f"{n:03d}.dcm", enforce_file_format=True)
        uids.append(str(ds.StudyInstanceUID))
    return uids


def test_two_workers_on_postgresql_process_each_study_exactly_once(
    postgres_server,  # noqa: F811 - the imported fixture
    orthanc,
    reference_model,
    node_port,
    shared_data,
    tmp_path,
):
    storescu = need("storescu")
    url = postgres_server.new_database()
    # Spool and results shared by both nodes, and one database.
    common = node_env(orthanc, tmp_path / "shared-data", reference_model)
    common["CXRNODE_DB_URL"] = url
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    receiver = NodeProcess(
        tmp_path / "a",
        {**common, "CXRNODE_DICOM_PORT": str(node_port), "CXRNODE_NODE_NAME": "node-a"},
    )
    worker = WorkerProcess(
        tmp_path / "b",
        {
            **common,
            "CXRNODE_DICOM_PORT": str(free_port()),
            "CXRNODE_ROLE": "worker",
            "CXRNODE_NODE_NAME": "node-b",
        },
    )
    try:
        receiver.start()
        worker.start()
        uids = write_studies(shared_data, tmp_path / "studies")
        files = sorted(str(p) for p in (tmp_path / "studies").glob("*.dcm"))
        sent = subprocess.run(
            [
                storescu,
                "-aet",
                "ORTHANC",
                "-aec",
                NODE_AE,
                "127.0.0.1",
                str(node_port),
            ]
            + files,
            capture_output=True,
            text=True,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(
            lambda: len(receiver.audit("--action", "study.done")) >= STUDIES,
            120 + 60 * STUDIES,  # a bound: a run takes tens of seconds on a busy 2-core machine
            f"{STUDIES} studies done",
            step_s=1.0,
        )
    finally:
        worker.stop()
        receiver.stop()

    engine = create_engine(url)
    with engine.connect() as conn:
        runs = conn.execute(
            text(
                "SELECT s.study_uid, j.state, j.attempts, j.claimed_by FROM jobs j "
                "JOIN studies s ON s.id = j.study_id"
            )
        ).all()
        stored = conn.execute(text("SELECT job_id, dim, length(vector) FROM embeddings")).all()
    engine.dispose()
    # Whichever node ran a study stored its image's embedding with its results.
    assert len({job for job, _, _ in stored}) == STUDIES
    assert {size - 4 * dim for _, dim, size in stored} == {0}  # dim float32 values each
    assert sorted(r.study_uid for r in runs) == sorted(uids)  # one run per study
    assert {(r.state, r.attempts) for r in runs} == {("done", 1)}  # each claimed once
    claimed = {r.claimed_by for r in runs}
    assert claimed == {"node-a", "node-b"}, f"jobs per node: {[r.claimed_by for r in runs]}"

    inferred = [e["study_uid"] for e in receiver.audit("--action", "inference.completed")]
    assert sorted(inferred) == sorted(uids)
    for uid in uids:
        srs = orthanc.post_json(
            "/tools/find",
            {"Level": "Instance", "Query": {"StudyInstanceUID": uid, "Modality": "SR"}},
        )
        assert len(srs) == 1, uid

    nearest = subprocess.run(
        [sys.executable, "-m", "node.cli", "similar", uids[0], "-k", "3", "--format", "json"],
        env=receiver.env,
        cwd=receiver.workdir,
        capture_output=True,
        text=True,
    )
    assert nearest.returncode == 0, nearest.stderr
    named = [case["study"]["study_uid"] for case in json.loads(nearest.stdout)["cases"]]
    assert len(set(named)) == 3 and set(named) <= set(uids[1:])

    verified = subprocess.run(
        [sys.executable, "-m", "node.cli", "audit", "verify"],
        env=receiver.env,
        cwd=receiver.workdir,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
