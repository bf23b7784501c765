"""STOW-RS delivery to Orthanc's DICOMweb plugin (Debian ``orthanc-dicomweb``)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from node.dicomweb.stow import StowSender, StowTarget
from support.ohif import DICOMWEB_PLUGIN, OrthancWithDicomWeb
from support.peers import need
from support.stow import TOKEN, StowNode


@pytest.fixture
def rsna_files(shared_data: Path) -> list[Path]:
    folder = shared_data / "rsna-pneumonia-sample" / "stage_1_train_images"
    return sorted(folder.glob("*.dcm"))[:3]


@pytest.fixture
def orthanc(tmp_path):
    need("Orthanc")
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    users = {"node": "s3cret:with@"}
    with OrthancWithDicomWeb(tmp_path / "orthanc", users=users).start() as server:
        yield server


def test_a_study_posted_with_stow_rs_is_stored_in_orthanc(orthanc, rsna_files) -> None:
    target = StowTarget.parse(
        f"http://node:s3cret%3Awith%40@127.0.0.1:{orthanc.http_port}/dicom-web"
    )
    deliveries = StowSender().send(target, rsna_files)
    assert [d.ok for d in deliveries] == [True] * len(rsna_files), deliveries
    stored = {i["MainDicomTags"]["SOPInstanceUID"] for i in _instances(orthanc)}
    sent = {_sop_uid(p) for p in rsna_files}
    assert stored == sent
    # Byte for byte: Orthanc keeps the file as it was posted.
    by_uid = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in rsna_files
    }
    for instance in _instances(orthanc):
        original = by_uid[instance["MainDicomTags"]["SOPInstanceUID"]]
        assert orthanc.instance_file(instance["ID"]) == original.read_bytes()


def test_wrong_credentials_fail_every_file_and_say_so_without_the_password(
    orthanc, rsna_files
) -> None:
    target = StowTarget.parse(f"http://node:wrong@127.0.0.1:{orthanc.http_port}/dicom-web/studies")
    deliveries = StowSender().send(target, rsna_files[:1])
    assert not deliveries[0].ok
    assert "HTTP 401" in deliveries[0].error and "wrong" not in deliveries[0].error
    assert _instances(orthanc) == []


def _instances(orthanc) -> list[dict]:
    return orthanc.get("/instances?expand")


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


class _OrthancSendingToTheNode(OrthancWithDicomWeb):
    """Orthanc whose DICOMweb plugin knows the node's STOW-RS endpoint as a server."""

    def __init__(self, workdir: Path, node_url: str) -> None:
        super().__init__(workdir)
        self.node_url = node_url

    def config(self) -> dict:
        config = super().config()
        config["DicomWeb"]["Servers"] = {
            "cxrnode": {"Url": self.node_url, "Username": "orthanc", "Password": TOKEN}
        }
        return config


def test_orthanc_pushes_a_study_to_the_nodes_stow_rs_endpoint(tmp_path, rsna_files) -> None:
    need("Orthanc")
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    node = StowNode(tmp_path / "node")
    try:
        url = f"http://127.0.0.1:{node.server.http.port}/dicom-web/"
        with _OrthancSendingToTheNode(tmp_path / "orthanc", url).start() as orthanc:
            studies = {orthanc.upload(p.read_bytes())["ParentStudy"] for p in rsna_files}
            for study in studies:
                orthanc.post_json("/dicom-web/servers/cxrnode/stow", {"Resources": [study]})
        assert node.instances() == len(rsna_files)
        received = node.events("instance.received")
        assert {e["sop_uid"] for e in received} == {_sop_uid(p) for p in rsna_files}
        assert {e["detail"]["via"] for e in received} == {"STOW-RS"}
        assert len(node.events("study.complete")) == len(studies)
    finally:
        node.server.stop()
