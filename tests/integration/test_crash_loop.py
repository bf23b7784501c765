"""The crash-loop breaker with a real ``cxrnode serve``: killed with -9 while it runs the same
study, again and again, the node fails that run at the start after ``max_job_attempts`` and
goes on with the next study, instead of dying under it forever."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from support.peers import NODE_AE, wait_for

pytestmark = pytest.mark.integration

RUN_BOUND_S = 300


def send_study(port: int, paths: list[Path], images: int) -> str:
    """One study of ``images`` instances (the files repeated under new UIDs), one association."""
    study_uid = generate_uid()
    first = pydicom.dcmread(paths[0])
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        for n in range(images):
            ds = pydicom.dcmread(paths[n % len(paths)])
            ds.StudyInstanceUID = study_uid
            ds.PatientID, ds.PatientName = "CRASH-LOOP", "CRASH^LOOP"  # one patient
            ds.PatientBirthDate = ""
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    return study_uid


def run_of(database: Path, study_uid: str) -> tuple[str, int] | None:
    """(state, attempts) of the study's run, read from the node's SQLite file."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute(
            "SELECT j.state, j.attempts FROM jobs j JOIN studies s ON s.id = j.study_id "
            "WHERE s.study_uid = ?",
            (study_uid,),
        ).fetchone()
    finally:
        connection.close()


def test_a_run_killed_under_the_node_twice_is_failed_and_the_next_study_runs(
    make_node, tmp_path, shared_data
):
    settings = {"max_job_attempts": 2, "max_run_images": 16}
    node = make_node(**settings)
    database = tmp_path / "node-data" / "cxrnode.db"
    paths = sorted((shared_data / "rsna-pneumonia-sample/stage_1_train_images").glob("*.dcm"))
    looping = send_study(node.port, paths, 16)  # long enough a run to be killed under
    for attempt in (1, 2):
        wait_for(
            lambda attempt=attempt: run_of(database, looping) == ("running", attempt),
            RUN_BOUND_S,
            f"claim {attempt} of the run",
            step_s=0.05,
        )
        node.kill()
        node = make_node(**settings)
    assert run_of(database, looping) == ("failed", 2)
    (failed,) = node.audit("--action", "job.failed", "--study", looping)
    assert failed["detail"]["reason"] == "the node died while running it, 2 times"
    assert len(node.audit("--action", "job.requeued", "--study", looping)) == 1
    good = send_study(node.port, paths[:1], 1)
    wait_for(
        lambda: (run_of(database, good) or ("",))[0] in ("sending", "done"),
        RUN_BOUND_S,
        "the next study's run",
    )
