"""A chest X-ray study from a real Orthanc through the node and back as SR + Grad-CAM overlay."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest

from support.peers import need, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def rsna_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))


def split_results(orthanc, instances, source_uids: set[str]):
    """Return (SR datasets, SC datasets) among the study's instances, the sources left out."""
    srs, scs = [], []
    for instance in instances:
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance["ID"])))
        if ds.SOPInstanceUID in source_uids:
            continue
        (srs if ds.SOPClassUID == SR_STORAGE else scs).append(ds)
    return srs, scs


def content_items(items):
    for item in items:
        yield item
        yield from content_items(item.get("ContentSequence", []))


def sr_texts(sr) -> list[str]:
    """The values of the SR's TEXT content items."""
    return [str(c.TextValue) for c in content_items(sr.ContentSequence) if c.ValueType == "TEXT"]


def sr_label_probabilities(sr) -> dict[str, float]:
    """Finding code value -> probability, read from the SR's measurement groups."""
    found = {}
    for group in content_items(sr.ContentSequence):
        if group.get("ValueType") != "CONTAINER":
            continue
        children = group.get("ContentSequence", [])
        finding = [
            c.ConceptCodeSequence[0].CodeValue
            for c in children
            if c.ValueType == "CODE" and c.ConceptNameCodeSequence[0].CodeValue == "121071"
        ]
        numbers = [
            float(c.MeasuredValueSequence[0].NumericValue) for c in children if c.ValueType == "NUM"
        ]
        if finding and numbers:
            found[finding[0]] = numbers[0]
    return found


def sr_referenced_sop_uids(sr) -> set[str]:
    refs = set()
    for item in content_items(sr.ContentSequence):
        for ref in item.get("ReferencedSOPSequence", []):
            refs.add(ref.ReferencedSOPInstanceUID)
    return refs


def dciodvfy_errors(path: Path, *sources: Path) -> list[str]:
    """dciodvfy's Error lines for a file, less those it reports identically for a source: an
    attribute the results copy as the source has it (RSNA's Patient's Age "51", not an AS
    value) is the source's error, and repairing it would make the study disagree with itself."""

    def errors(file: Path) -> list[str]:
        out = subprocess.run([need("dciodvfy"), str(file)], capture_output=True, text=True)
        lines = (out.stdout + out.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    inherited = {line for source in sources for line in errors(source)}
    return [line for line in errors(path) if line not in inherited]


def test_study_sent_by_orthanc_comes_back_as_sr_and_overlay(
    make_node, orthanc, shared_data, reference_model, tmp_path
):
    from models.package import load_package

    node = make_node()
    source = rsna_files(shared_data)[0]
    uploaded = orthanc.upload(source.read_bytes())
    header = pydicom.dcmread(source, stop_before_pixels=True)
    source_uid = header.SOPInstanceUID
    study_id = uploaded["ParentStudy"]

    orthanc.send_study("cxrnode", study_id)
    # Done once Orthanc confirmed every result object: SR, GSPS, overview, finding captures.
    wait_for(
        lambda: node.audit("--study", header.StudyInstanceUID, "--action", "study.done"),
        300,
        "the study to be done",
    )
    instances = orthanc.study_instances(study_id)
    srs, others = split_results(orthanc, instances, {source_uid})
    # Besides the SR: the overview capture, one capture per present finding, the GSPS.
    scs = [ds for ds in others if ds.SOPClassUID == SC_STORAGE and ds.ImageType[-1] == "OVERVIEW"]
    assert len(srs) == 1 and len(scs) == 1

    sr = srs[0]
    assert source_uid in sr_referenced_sop_uids(sr)
    labels = load_package(reference_model).config.labels
    probabilities = sr_label_probabilities(sr)
    # Labels with an outline are coded measurements; the others are stated in words (the
    # layout OHIF hydrates, see README): every label is in the SR, once.
    stated = {
        label.code_value
        for label in labels
        for text in sr_texts(sr)
        if text.startswith(label.name) and "probability" in text
    }
    assert probabilities, "no outlined finding as a coded measurement"
    assert not set(probabilities) & stated
    assert set(probabilities) | stated == {label.code_value for label in labels}
    assert all(0.0 <= p <= 1.0 for p in probabilities.values())

    sc = scs[0]
    assert sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == sr.StudyInstanceUID
    assert sc.PatientID == header.PatientID
    assert sc.SeriesInstanceUID != sr.SeriesInstanceUID

    for name, ds in (("sr.dcm", sr), ("sc.dcm", sc)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        assert dciodvfy_errors(tmp_path / name, source) == [], name
    dump = subprocess.run(
        [need("dsrdump"), str(tmp_path / "sr.dcm")], capture_output=True, text=True
    )
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout

    actions = [e["action"] for e in node.audit("--study", sr.StudyInstanceUID)]
    for expected in ("instance.received", "study.queued", "inference.completed", "result.sent"):
        assert expected in actions
    assert actions[-1] == "study.done"


def test_storescu_as_sender(make_node, orthanc, shared_data):
    node = make_node()
    source = shared_data / "nih-chestxray14-dicom-gcp"
    source = next(source.glob("*.dcm"))
    study_uid = pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID
    sent = storescu(node.port, source)
    assert sent.returncode == 0, sent.stderr

    def sr_in_orthanc():
        found = orthanc.post_json(
            "/tools/find",
            {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
        )
        return found

    wait_for(sr_in_orthanc, 120, "the SR of the storescu study in Orthanc")
    events = node.audit("--study", study_uid, "--action", "instance.received")
    assert events and events[0]["actor_ae"] == "ORTHANC"


def test_unknown_calling_ae_is_rejected_and_audited(make_node, shared_data):
    node = make_node()
    source = rsna_files(shared_data)[1]
    sent = storescu(node.port, source, calling_ae="INTRUDER")
    assert sent.returncode != 0
    assert "Rejected" in sent.stdout + sent.stderr or "rejected" in sent.stdout + sent.stderr
    events = node.audit("--action", "association.rejected")
    assert [e["actor_ae"] for e in events] == ["INTRUDER"]
    assert events[0]["outcome"] == "failure"
    assert node.audit("--action", "instance.received") == []


def test_non_chest_instance_is_stored_audited_and_skipped(make_node, shared_data):
    node = make_node()
    ct = shared_data / "orthanc-transfer-syntax-zoo-noncxr" / "1.2.840.10008.1.2.4.70.dcm"
    if not ct.exists():
        ct = next((shared_data / "orthanc-transfer-syntax-zoo-noncxr").glob("*.4.70*"))
    study_uid = pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID
    sent = storescu(node.port, ct, options=("-xs",))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    skipped = wait_for(
        lambda: node.audit("--study", study_uid, "--action", "study.skipped"), 30, "study.skipped"
    )
    assert skipped[0]["outcome"] == "warning"
    reasons = node.audit("--study", study_uid, "--action", "instance.skipped")
    assert reasons[0]["detail"]["reason"].endswith("is not a radiograph")
    spooled = list((node.workdir / "node-data" / "spool").rglob("*.dcm"))
    assert len(spooled) == 1


def test_study_is_processed_when_orthanc_releases_the_association(make_node, orthanc, shared_data):
    # A stable age far beyond the wait: only the release can make the study ready in time.
    node = make_node(stable_age_s=3600)
    uploaded = orthanc.upload(rsna_files(shared_data)[1].read_bytes())
    orthanc.send_study("cxrnode", uploaded["ParentStudy"])
    wait_for(
        lambda: results_in_orthanc(orthanc, uploaded["ParentStudy"], expected=3),
        120,
        "results without waiting for the stable age",
    )
    (complete,) = node.audit("--action", "study.complete")
    assert complete["actor_ae"] == "ORTHANC" and complete["detail"]["instances"] == 1


def test_study_received_before_a_restart_is_processed_after_it(make_node, orthanc, shared_data):
    # Neither the release nor a short stable age: the node is killed while the study waits.
    node = make_node(stable_age_s=30, complete_on_release=False)
    source = rsna_files(shared_data)[2]
    uploaded = orthanc.upload(source.read_bytes())
    orthanc.send_study("cxrnode", uploaded["ParentStudy"])
    assert node.audit("--action", "instance.received")
    assert node.audit("--action", "study.queued") == []
    node.kill()

    restarted = make_node(stable_age_s=1)
    wait_for(
        lambda: results_in_orthanc(orthanc, uploaded["ParentStudy"], expected=3),
        120,
        "results after the restart",
    )
    # Done once every result object is confirmed, a moment after the first three are in Orthanc.
    wait_for(lambda: restarted.audit("--action", "study.done"), 300, "the study to be done")
