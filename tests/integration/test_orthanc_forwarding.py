"""The Orthanc that docker/compose.yaml runs forwards chest studies to the node by itself, and
never the node's results: its orthanc.json and Lua script, run on a native Orthanc."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.orthanc import Modality, free_port
from support.peers import NODE_AE, ComposeOrthanc, need, wait_for
from support.rsna import rsna_case_path

pytestmark = pytest.mark.integration

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture
def orthanc(tmp_path, node_port):
    """docker/orthanc.json's Orthanc (so also the node's, through ``make_node``)."""
    need("Orthanc")
    server = ComposeOrthanc(
        tmp_path / "orthanc",
        [
            Modality("cxrnode", NODE_AE, "127.0.0.1", node_port),
            Modality("xray-room", "XRAYROOM", "127.0.0.1", free_port()),
        ],
    ).start()
    yield server
    server.stop()


def store(orthanc: ComposeOrthanc, *files: Path) -> None:
    """C-STORE ``files`` into Orthanc with dcmtk's storescu, as the X-ray room it declares."""
    calling = orthanc.compose_config["DicomModalities"]["xray-room"]["AET"]
    sent = subprocess.run(
        [
            need("storescu"),
            "--propose-jpeg8",  # the RSNA images are JPEG baseline
            "-aet",
            calling,
            "-aec",
            orthanc.ae_title,
            "127.0.0.1",
            str(orthanc.dicom_port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
    )
    assert sent.returncode == 0, sent.stderr


def orthanc_study(orthanc: ComposeOrthanc, study_uid: str) -> str:
    found = json.loads(orthanc.request("POST", "/tools/lookup", study_uid.encode()))
    (study,) = [r for r in found if r["Type"] == "Study"]
    return study["ID"]


def forwarding_said(orthanc: ComposeOrthanc, study_id: str, what: str) -> bool:
    return f"cxrnode: study {study_id}: {what}" in orthanc.log()


def test_orthanc_forwards_a_chest_study_and_never_the_results(
    make_node, orthanc, shared_data, tmp_path
):
    node = make_node()
    source = rsna_case_path(shared_data)
    header = pydicom.dcmread(source, stop_before_pixels=True)
    # The same image as a CT study: not a chest radiograph, so not for the node.
    ct = pydicom.dcmread(source)
    ct.Modality = "CT"
    ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID = (generate_uid() for _ in "123")
    ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)

    store(orthanc, tmp_path / "ct.dcm", source)

    # Nobody asked Orthanc to send: its Lua did, once the study was stable.
    wait_for(
        lambda: node.audit("--study", header.StudyInstanceUID, "--action", "study.done"),
        300,
        "the forwarded study to be done",
    )
    study_id = orthanc_study(orthanc, header.StudyInstanceUID)
    classes = [
        orthanc.instance_tags(i["ID"]).get("SOPClassUID") for i in orthanc.study_instances(study_id)
    ]
    assert SR_STORAGE in classes and len(classes) > 2  # the source, SR, GSPS, captures

    # The results made the study stable again; the script then found nothing to send.
    wait_for(
        lambda: forwarding_said(orthanc, study_id, "nothing to forward"),
        60,
        "Orthanc's second stable event of the study",
    )
    received = node.audit("--study", header.StudyInstanceUID, "--action", "instance.")
    assert [(e["action"], e["sop_uid"], e["actor_ae"]) for e in received] == [
        ("instance.received", header.SOPInstanceUID, orthanc.ae_title)
    ]
    assert len(node.audit("--study", header.StudyInstanceUID, "--action", "study.queued")) == 1
    stores = [j for j in orthanc.get("/jobs?expand") if j["Type"] == "DicomModalityStore"]
    assert len(stores) == 1 and stores[0]["State"] == "Success"
    (source_instance,) = [
        i["ID"]
        for i in orthanc.study_instances(study_id)
        if i["MainDicomTags"]["SOPInstanceUID"] == header.SOPInstanceUID
    ]
    marked = orthanc.get(f"/instances/{source_instance}/metadata?expand")
    assert marked["CxrnodeForwarded"] == stores[0]["ID"]

    ct_study = orthanc_study(orthanc, ct.StudyInstanceUID)
    assert forwarding_said(orthanc, ct_study, "nothing to forward")
    assert node.audit("--study", ct.StudyInstanceUID) == []
