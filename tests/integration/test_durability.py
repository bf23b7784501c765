"""Nothing lost: crashes, a PACS that goes away, concurrent senders, graceful shutdown.

The kill test runs a short variant in CI; ``CXRNODE_LONG_TESTS=1`` runs the issue's full one
(50 studies, 10 kills).
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from node.orthanc import OrthancError
from support.peers import NODE_AE, storescu, wait_for

pytestmark = pytest.mark.integration

LONG = os.environ.get("CXRNODE_LONG_TESTS") == "1"
# Bounds on waiting, not timing claims: one study's run (inference, Grad-CAM, every result
# object) takes tens of seconds on a busy 2-core machine.
RUN_BOUND_S = 300


def chest_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))


def new_study(
    path: Path, study_uid: str | None = None, patient: pydicom.Dataset | None = None
) -> pydicom.Dataset:
    """A real image under new UIDs; with ``patient``, as an image of that patient (one study
    is one patient: the node refuses another's images under its Study UID)."""
    ds = pydicom.dcmread(path)
    if patient is not None:
        ds.PatientID, ds.PatientName = patient.PatientID, patient.PatientName
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def result_counts(orthanc, study_uid: str) -> tuple[int, int]:
    """(SR, SC) instances the node produced for a study, as Orthanc holds them."""
    found = orthanc.post_json(
        "/tools/find",
        {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    series = {}
    for instance in found:
        series.setdefault(instance["ParentSeries"], 0)
        series[instance["ParentSeries"]] += 1
    srs = scs = 0
    for series_id, count in series.items():
        tags = orthanc.get(f"/series/{series_id}")["MainDicomTags"]
        if tags.get("Modality") == "SR":
            srs += count
        elif tags.get("Modality") == "OT" and tags.get("SeriesNumber") == "9902":
            scs += count  # the overview capture (9903 holds one capture per present finding)
    return srs, scs


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(make_node, orthanc, shared_data):
    studies, kills = (50, 10) if LONG else (12, 3)
    rng = random.Random(2026)
    # The kills come seconds apart, so one run may be under all of them: the crash-loop
    # breaker (max_job_attempts) must not take this test's kills for a run that kills the node.
    breaker = {"max_job_attempts": kills + 1}
    node = make_node(**breaker)
    uploaded = []
    for n in range(studies):
        ds = new_study(chest_files(shared_data)[n % 12])
        uploaded.append((ds.StudyInstanceUID, orthanc.upload(encoded(ds))["ParentStudy"]))

    def send_all() -> None:
        # Orthanc's send fails while the node is down; retry like a PACS would.
        for _, study_id in uploaded:
            while True:
                try:
                    orthanc.send_study("cxrnode", study_id)
                    break
                except OrthancError:
                    time.sleep(0.5)

    sender = threading.Thread(target=send_all)
    sender.start()
    for _ in range(kills):
        time.sleep(rng.uniform(1.0, 6.0))
        node.kill()
        node = make_node(**breaker)
    sender.join(timeout=600)
    assert not sender.is_alive()

    def all_done():
        counts = [result_counts(orthanc, uid) for uid, _ in uploaded]
        return counts if all(c == (1, 1) for c in counts) else None

    deadline = 120 + 60 * studies  # the runs are serial
    counts = wait_for(all_done, deadline, "exactly one SR and one SC per study", step_s=2)
    assert counts == [(1, 1)] * studies
    print(f"\nkill -9: {kills} kills, {studies} studies, 0 lost, 0 duplicated")


def send_new_study(node, shared_data) -> str:
    """Send a new study made of one NIH file with storescu (implicit VR little endian, which
    storescu proposes without options); return its Study Instance UID."""
    ds = new_study(next((shared_data / "nih-chestxray14-dicom-gcp").glob("*.dcm")))
    path = Path(node.workdir) / "study.dcm"
    ds.save_as(path)
    sent = storescu(node.port, path)
    assert sent.returncode == 0, sent.stderr
    return ds.StudyInstanceUID


def test_results_wait_for_a_pacs_that_was_down(make_node, orthanc, shared_data):
    node = make_node(delivery_retry_initial_s=1, delivery_retry_max_s=2)
    orthanc.stop()
    study_uid = send_new_study(node, shared_data)
    wait_for(
        lambda: len(node.audit("--action", "result.send_failed")) >= 2,
        RUN_BOUND_S,
        "delivery attempts to fail while the PACS is down",
    )
    orthanc.start()
    wait_for(
        lambda: result_counts(orthanc, study_uid) == (1, 1),
        RUN_BOUND_S,
        "results after the PACS came back",
    )
    # The study is done once every result object is confirmed, a moment after the SR and the
    # overview capture are in Orthanc (the GSPS and per-finding captures may still be on their way).
    wait_for(
        lambda: node.audit("--study", study_uid, "--action", "study.done"),
        RUN_BOUND_S,
        "the study to be done",
    )


def test_eight_concurrent_associations_lose_nothing(make_node, shared_data):
    # Ingest only; one address sending 8 at once needs a per-peer cap above the default 4, and
    # above 8: one of the eight was refused once in a full run, most likely because the start-up
    # probe's connection from the same address was still counted while it closed.
    node = make_node(
        stable_age_s=600, complete_on_release=False, dicom_max_associations_per_peer=10
    )
    files = chest_files(shared_data)
    statuses: list[int] = []
    lock = threading.Lock()

    def sender(n: int) -> None:
        study_uid = generate_uid()
        first = new_study(files[n % len(files)], study_uid)
        datasets = [first] + [
            new_study(files[(n + k) % len(files)], study_uid, patient=first) for k in (1, 2)
        ]
        ae = AE(ae_title="ORTHANC")
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_established
        result = [int(assoc.send_c_store(ds).Status) for ds in datasets]
        assoc.release()
        with lock:
            statuses.extend(result)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [0] * 24
    assert len(node.audit("--action", "instance.received", "--limit", "0")) == 24
    spooled = list((node.workdir / "node-data" / "spool").rglob("*.dcm"))
    assert len(spooled) == 24
    for path in spooled:
        pydicom.dcmread(path)  # whole and readable


def test_sigterm_stops_gracefully(make_node):
    node = make_node()
    assert node.stop() == 0
    events = node.audit("--action", "node.stopped")
    assert len(events) == 1


def test_delivery_is_abandoned_and_alerted_after_the_give_up_time(make_node, orthanc, shared_data):
    node = make_node(
        delivery_retry_initial_s=0.5, delivery_retry_max_s=1, delivery_give_up_after_s=3
    )
    orthanc.stop()
    study_uid = send_new_study(node, shared_data)
    abandoned = wait_for(
        lambda: node.audit("--action", "result.abandoned"),
        RUN_BOUND_S,
        "the delivery to be abandoned",
    )
    assert abandoned[0]["outcome"] == "failure"
    assert abandoned[0]["study_uid"] == study_uid
