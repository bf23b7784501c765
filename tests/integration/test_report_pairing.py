"""Reports over real MLLP (the hl7 package's ``mllp_send``) paired with studies sent by a real
Orthanc.

The pairing is artificial: each test gives a real RSNA chest radiograph a new accession number
and sends a real IU X-ray report text under that accession. No staged dataset holds the image
and the report of the same study.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.orthanc import free_port
from support.peers import wait_for
from support.reports import iu_reports, mllp_send, oru

pytestmark = pytest.mark.integration

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
_numbers = itertools.count(1)


class Case:
    """One artificial study: a real chest image under a new accession, and a real report."""

    def __init__(self, shared_data: Path, patient_id: str | None = None) -> None:
        n = next(_numbers)
        files = sorted(
            (shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm")
        )
        ds = pydicom.dcmread(files[n % len(files)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.AccessionNumber = f"ACC{n:05d}"
        ds.PatientID = patient_id or f"PAT{n:05d}"
        self.dataset = ds
        self.report = iu_reports(shared_data, n + 1)[n]

    def dicom(self) -> bytes:
        buffer = io.BytesIO()
        self.dataset.save_as(buffer)
        return buffer.getvalue()

    def message(self, control_id: str, *, status: str = "F", patient_id: str | None = None):
        return oru(
            control_id=control_id,
            patient_id=patient_id or self.dataset.PatientID,
            accession=self.dataset.AccessionNumber,
            findings=self.report["findings"],
            impression=self.report["impression"],
            status=status,
        )


def send_study(orthanc, case: Case) -> str:
    study_id = orthanc.upload(case.dicom())["ParentStudy"]
    orthanc.send_study("cxrnode", study_id)
    return study_id


def srs_in_orthanc(orthanc, study_id: str, count: int, timeout_s: float = 120):
    def ready():
        srs = []
        for instance in orthanc.study_instances(study_id):
            tags = orthanc.instance_tags(instance["ID"])
            if tags.get("SOPClassUID") == SR_STORAGE:
                srs.append(pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance["ID"]))))
        return srs if len(srs) >= count else None

    return wait_for(ready, timeout_s, f"{count} SR(s) in Orthanc")


def comments(sr) -> list[str]:
    def walk(items):
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    return [
        item.TextValue
        for item in walk(sr.ContentSequence)
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]


def text_used(sr) -> str:
    return next(c for c in comments(sr) if c.startswith("Clinical text used"))


@pytest.fixture
def hl7_port() -> int:
    return free_port()


def test_report_first_then_study(make_node, orthanc, shared_data, hl7_port, tmp_path):
    node = make_node(hl7_port=hl7_port, pairing_window_s=120)
    case = Case(shared_data)
    assert mllp_send(case.message("R1"), hl7_port, tmp_path) == "AA"
    (sr,) = srs_in_orthanc(orthanc, send_study(orthanc, case), 1)
    assert "radiology report text" in text_used(sr)
    assert node.audit("--accession", case.dataset.AccessionNumber, "--action", "pairing.paired")

    # No PHI in the application log at INFO: identifiers and report text belong in the audit log.
    logged = node.log_path.read_text(errors="replace")
    assert "INFO" in logged
    phrase = max(case.report["findings"].split("."), key=len).strip()
    for identifier in (
        case.dataset.PatientID,
        str(case.dataset.PatientName),
        case.dataset.AccessionNumber,
        phrase,
    ):
        assert identifier and identifier not in logged, identifier


def test_study_first_then_report(make_node, orthanc, shared_data, hl7_port, tmp_path):
    node = make_node(hl7_port=hl7_port, pairing_window_s=120)
    case = Case(shared_data)
    study_id = send_study(orthanc, case)
    wait_for(lambda: node.audit("--action", "study.awaiting_report"), 30, "the study to wait")
    assert mllp_send(case.message("R2"), hl7_port, tmp_path) == "AA"
    (sr,) = srs_in_orthanc(orthanc, study_id, 1)
    assert "radiology report text" in text_used(sr)


def test_report_of_another_patient_is_not_paired(
    make_node, orthanc, shared_data, hl7_port, tmp_path
):
    node = make_node(hl7_port=hl7_port, pairing_window_s=3)
    case = Case(shared_data)
    assert mllp_send(case.message("R3", patient_id="SOMEBODY-ELSE"), hl7_port, tmp_path) == "AA"
    (sr,) = srs_in_orthanc(orthanc, send_study(orthanc, case), 1)
    assert "no clinical text" in text_used(sr)
    (refused,) = node.audit("--action", "pairing.refused")
    assert refused["detail"]["report_patient_id"] == "SOMEBODY-ELSE"
    assert refused["patient_id"] == case.dataset.PatientID


def test_window_expiry_gives_an_image_only_sr(make_node, orthanc, shared_data, hl7_port):
    node = make_node(hl7_port=hl7_port, pairing_window_s=2)
    case = Case(shared_data)
    (sr,) = srs_in_orthanc(orthanc, send_study(orthanc, case), 1)
    assert "no clinical text (image only)" in text_used(sr)
    assert "pairing window" in text_used(sr)
    assert node.audit("--action", "pairing.window_expired")


def test_corrected_report_gives_a_second_sr_naming_the_first(
    make_node, orthanc, shared_data, hl7_port, tmp_path
):
    make_node(hl7_port=hl7_port, pairing_window_s=120)
    case = Case(shared_data)
    assert mllp_send(case.message("R5"), hl7_port, tmp_path) == "AA"
    study_id = send_study(orthanc, case)
    (first,) = srs_in_orthanc(orthanc, study_id, 1)
    assert mllp_send(case.message("R6", status="C"), hl7_port, tmp_path) == "AA"
    srs = srs_in_orthanc(orthanc, study_id, 2)
    (second,) = [sr for sr in srs if sr.SOPInstanceUID != first.SOPInstanceUID]
    predecessor = second.PredecessorDocumentsSequence[0]
    referenced = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert any(first.SOPInstanceUID in c for c in comments(second))
    assert second.SeriesInstanceUID != first.SeriesInstanceUID


def test_report_acknowledged_before_a_crash_is_paired_after_restart(
    make_node, orthanc, shared_data, hl7_port, tmp_path
):
    node = make_node(hl7_port=hl7_port, pairing_window_s=120)
    case = Case(shared_data)
    assert mllp_send(case.message("R7"), hl7_port, tmp_path) == "AA"
    node.kill()
    make_node(hl7_port=hl7_port, pairing_window_s=120)
    (sr,) = srs_in_orthanc(orthanc, send_study(orthanc, case), 1)
    assert "radiology report text" in text_used(sr)


def test_report_from_the_csv_drop_folder_is_paired(make_node, orthanc, shared_data, tmp_path):
    inbox = tmp_path / "csv-inbox"
    inbox.mkdir()
    node = make_node(csv_folder=inbox, csv_poll_interval_s=0.5, pairing_window_s=120)
    case = Case(shared_data)
    text = f"{case.report['findings']} {case.report['impression']}".replace('"', "'")
    (inbox / "reports.csv").write_text(
        "accession,patient_id,report,status\n"
        f'{case.dataset.AccessionNumber},{case.dataset.PatientID},"{text}",F\n'
    )
    wait_for(lambda: (inbox / "done" / "reports.csv").exists(), 30, "the CSV file to be done")
    (sr,) = srs_in_orthanc(orthanc, send_study(orthanc, case), 1)
    assert "radiology report text" in text_used(sr)
    assert node.audit("--action", "csv.received")
