"""A study pushed over STOW-RS by Orthanc's DICOMweb plugin, through a running node, back to
Orthanc as results: the second door works end to end like the first."""

from __future__ import annotations

import pydicom
import pytest

from node.orthanc import free_port
from support.ohif import DICOMWEB_PLUGIN, OrthancWithDicomWeb
from support.peers import results_in_orthanc, wait_for
from support.rsna import rsna_case_path
from support.stow import TOKEN

pytestmark = pytest.mark.integration


@pytest.fixture
def stow_port() -> int:
    return free_port()


@pytest.fixture
def orthanc_kind(stow_port):
    """Orthanc whose DICOMweb plugin knows the node's STOW-RS endpoint as server "cxrnode"."""
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")

    class OrthancPushingToTheNode(OrthancWithDicomWeb):
        def config(self) -> dict:
            config = super().config()
            url = f"http://127.0.0.1:{stow_port}/dicom-web/"
            config["DicomWeb"]["Servers"] = {
                "cxrnode": {"Url": url, "Username": "orthanc", "Password": TOKEN}
            }
            return config

    return OrthancPushingToTheNode


def test_a_study_stored_over_stow_rs_is_processed_and_its_results_reach_orthanc(
    make_node, orthanc, stow_port, shared_data
) -> None:
    node = make_node(dicomweb_port=stow_port, dicomweb_host="127.0.0.1", dicomweb_token=TOKEN)
    source = rsna_case_path(shared_data)
    header = pydicom.dcmread(source, stop_before_pixels=True)
    study = orthanc.upload(source.read_bytes())["ParentStudy"]
    orthanc.post_json("/dicom-web/servers/cxrnode/stow", {"Resources": [study]})
    wait_for(
        lambda: node.audit("--study", header.StudyInstanceUID, "--action", "study.done"),
        180,
        "the study pushed over STOW-RS to be done",
    )
    (received,) = node.audit("--study", header.StudyInstanceUID, "--action", "instance.received")
    assert received["detail"]["via"] == "STOW-RS"
    assert node.audit("--study", header.StudyInstanceUID, "--action", "study.complete")
    # The source plus the SR, the presentation state and the captures, in the source study.
    instances = wait_for(lambda: results_in_orthanc(orthanc, study, 4), 60, "results in Orthanc")
    modalities = {orthanc.instance_tags(i["ID"]).get("Modality") for i in instances}
    assert "SR" in modalities
