"""A real RSNA study sent from Orthanc yields, besides its results in Orthanc: an ORU^R01 at an
HL7 receiver the project did not write (python-hl7's MLLP server), stat when its finding is
configured critical; the same objects in a second PACS through STOW-RS; and the delivery
counters moved on /metrics."""

from __future__ import annotations

import urllib.request

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.orthanc import free_port
from support.hl7_receiver import hl7_receiver
from support.ohif import DICOMWEB_PLUGIN, OrthancWithDicomWeb
from support.peers import results_in_orthanc, wait_for
from support.rsna import rsna_case_path

pytestmark = pytest.mark.integration

TOKEN = "results-out-admin-token-01"


@pytest.fixture
def orthanc_kind():
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    return OrthancWithDicomWeb


def _counter(text: str, name: str, destination: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("destination") == destination:
                return sample.value
    return 0.0


def test_results_reach_orthanc_a_ris_over_hl7_and_a_second_pacs_over_stow_rs(
    make_node, orthanc, tmp_path, shared_data
) -> None:
    admin_port = free_port()
    with (
        OrthancWithDicomWeb(tmp_path / "second-pacs").start() as second,
        hl7_receiver() as ris,
    ):
        mllp = f"mllp://RIS^HOSP@127.0.0.1:{ris.port}"
        stow = f"http://127.0.0.1:{second.http_port}/dicom-web"
        node = make_node(
            destinations=f"ORTHANC@127.0.0.1:{orthanc.dicom_port},{stow},{mllp}",
            critical_findings="Abnormal,Pneumonia",
            model="default",  # the shipped model: the RSNA case's opacity is a finding it calls
            admin_port=admin_port,
            admin_token=TOKEN,
        )
        source = rsna_case_path(shared_data)
        header = pydicom.dcmread(source, stop_before_pixels=True)
        orthanc.send_study("cxrnode", orthanc.upload(source.read_bytes())["ParentStudy"])
        wait_for(
            lambda: node.audit("--study", header.StudyInstanceUID, "--action", "study.done"),
            240,
            "every destination to confirm the results",
        )
        (message,) = ris.received

    msh, pid, obr = message.segment("MSH"), message.segment("PID"), message.segment("OBR")
    assert str(msh[9]) == "ORU^R01^ORU_R01" and str(msh[12]) == "2.5.1"
    assert (str(msh[5]), str(msh[6])) == ("RIS", "HOSP")
    assert str(pid[3]).split("^")[0] == str(header.PatientID)
    assert str(obr[25]) == "F"
    observations = [s for s in message if str(s[0]) == "OBX" and str(s[2]) == "NM"]
    meanings = [str(o[3]).split("^")[1] for o in observations]
    assert set(meanings) == {"Abnormal", "Pneumonia"}
    called = [m for m, o in zip(meanings, observations, strict=True) if str(o[8]) == "A"]
    assert called, "the shipped model calls the RSNA case's opacity"
    assert str(message.segment("TQ1")[9][0][0]) == "S"  # a critical finding is present
    uids = {str(s[3]).split("^")[0]: str(s[5]) for s in message if str(s[0]) == "OBX"}
    assert uids["110180"] == str(header.StudyInstanceUID)

    # The second PACS got the node's objects through STOW-RS (not the source: it never had it).
    second_studies = second.get("/studies")
    assert len(second_studies) == 1
    stored = second.study_instances(second_studies[0])
    modalities = {second.instance_tags(i["ID"]).get("Modality") for i in stored}
    assert "SR" in modalities
    assert wait_for(
        lambda: results_in_orthanc(orthanc, orthanc.get("/studies")[0], 2), 30, "C-STORE"
    )

    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        metrics = answer.read().decode()
    assert _counter(metrics, "cxrnode_results_sent_total", mllp) == 1
    assert _counter(metrics, "cxrnode_results_sent_total", f"{stow}/studies") == len(stored)
