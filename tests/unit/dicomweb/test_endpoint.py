"""The STOW-RS endpoint admits what C-STORE admits, refuses what it refuses, and says so."""

from __future__ import annotations

import http.client
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from node.config import Settings
from node.dicom.intake import CANNOT_PARSE, PATIENT_MISMATCH, WRONG_STUDY
from node.dicomweb.endpoint import AUTH_FAILED, StowServer
from node.dicomweb.stow import StowSender
from node.errors import ConfigError
from support.stow import TOKEN, StowNode


@pytest.fixture
def files(shared_data: Path) -> list[Path]:
    folder = shared_data / "rsna-pneumonia-sample" / "stage_1_train_images"
    return sorted(folder.glob("*.dcm"))[:3]


@pytest.fixture
def node(tmp_path: Path):
    node = StowNode(tmp_path)
    yield node
    node.server.stop()


def test_a_study_posted_is_stored_audited_and_complete(node, files) -> None:
    deliveries = StowSender().send(node.target(), files)
    assert [d.error for d in deliveries] == [None] * 3
    assert node.instances() == 3
    received = node.events("instance.received")
    assert len(received) == 3
    assert {e["detail"]["via"] for e in received} == {"STOW-RS"}
    assert {e["actor_ip"] for e in received} == {"127.0.0.1"}
    assert len(node.events("study.complete")) == len({_study(f) for f in files})
    assert node.completed == 1
    assert list((node.settings.data_dir / "tmp").iterdir()) == []  # the request's spool file


def test_a_wrong_token_is_refused_and_audited_once_per_window(node, files) -> None:
    for _ in range(3):
        (delivery,) = StowSender().send(node.target(token="not-the-token-at-all"), files[:1])
        assert "HTTP 401" in delivery.error
    assert node.instances() == 0
    (refused,) = node.events(AUTH_FAILED)
    assert refused["actor_ip"] == "127.0.0.1"


def test_a_part_that_is_not_dicom_fails_alone(node, files) -> None:
    boundary = "b0undary"
    body = _multipart(boundary, [files[0].read_bytes(), b"not a DICOM file at all" * 10])
    status, answer = node.post(
        body, f'multipart/related; type="application/dicom"; boundary={boundary}'
    )
    assert status == 202
    assert _uids(answer, "00081199") == [_sop(files[0])]
    assert _reasons(answer) == [CANNOT_PARSE]
    assert node.instances() == 1


def test_a_second_patient_under_a_study_uid_is_refused_409(node, files, tmp_path) -> None:
    StowSender().send(node.target(), files[:1])
    other = pydicom.dcmread(files[1])
    other.StudyInstanceUID = _study(files[0])
    other.PatientID = "SOMEONE-ELSE"
    path = tmp_path / "other.dcm"
    other.save_as(path)
    (delivery,) = StowSender().send(node.target(), [path])
    assert delivery.error.endswith(f"failure reason 0x{PATIENT_MISMATCH:04X}")
    assert node.instances() == 1


def test_instances_of_another_study_than_the_path_names_are_refused(node, files) -> None:
    (delivery,) = StowSender().send(node.target(study="1.2.3.4"), files[:1])
    assert delivery.error.endswith(f"failure reason 0x{WRONG_STUDY:04X}")
    assert node.instances() == 0


def test_a_request_over_the_size_limit_is_refused_413_and_nothing_is_kept(tmp_path, files) -> None:
    node = StowNode(tmp_path, stow_max_request_mb=1)
    try:
        paths = files * 4  # about 1.5 MB
        deliveries = StowSender().send(node.target(), paths)
        assert all("HTTP 413" in d.error for d in deliveries)  # refused on Content-Length
        # Chunked, with no length declared: refused as the body passes the limit.
        connection = http.client.HTTPConnection("127.0.0.1", node.server.http.port, timeout=30)
        chunks = (p.read_bytes() for p in paths)
        headers = {
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=x',
            "Authorization": f"Bearer {TOKEN}",
        }
        connection.request("POST", "/dicom-web/studies", chunks, headers, encode_chunked=True)
        assert connection.getresponse().status == 413
        assert node.instances() == 0
        assert list((node.settings.data_dir / "tmp").glob("*")) == []
    finally:
        node.server.stop()


@pytest.mark.parametrize(
    "content_type", ["application/dicom", 'multipart/related; type="application/json"; boundary=x']
)
def test_other_media_types_are_refused_415(node, content_type: str) -> None:
    status, _ = node.post(b"--x\r\n\r\nabc\r\n--x--\r\n", content_type)
    assert status == 415


def test_the_endpoint_does_not_start_without_a_long_token(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, dicomweb_token="short")
    with pytest.raises(ConfigError, match="dicomweb_token"):
        StowServer(settings, None, None)


def _multipart(boundary: str, bodies: list[bytes]) -> bytes:
    out = BytesIO()
    for body in bodies:
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(body + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def _uids(answer: dict, sequence: str) -> list[str]:
    return [item["00081155"]["Value"][0] for item in answer.get(sequence, {}).get("Value", [])]


def _reasons(answer: dict) -> list[int]:
    return [item["00081197"]["Value"][0] for item in answer["00081198"]["Value"]]


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
