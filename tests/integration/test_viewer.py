"""What the radiologist sees, checked in software we did not write: a real RSNA study through the
node into Orthanc, the SR, presentation state and captures validated by dciodvfy, dsrdump and
highdicom, and the overview capture shown by Orthanc's Web Viewer in headless Chromium.

The screenshot is saved in the test's tmp dir and copied to ``/tmp/cxrnode-artifacts/``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import (
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt

from node.orthanc import free_port
from node.results.region import HeatRegion
from support.peers import need, wait_for
from support.rsna import RSNA_CASE, rsna_case_boxes, rsna_case_path
from support.viewer import OrthancWithViewer, screenshot_viewer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning"),
]

ARTIFACTS = Path("/tmp/cxrnode-artifacts")


@pytest.fixture
def orthanc_kind() -> type[OrthancWithViewer]:
    """The integration harness's Orthanc, with the Web Viewer plugin loaded."""
    return OrthancWithViewer


def _rsna(shared_data: Path) -> tuple[Path, np.ndarray]:
    boxes = np.zeros((1024, 1024), dtype=bool)
    for box in rsna_case_boxes(shared_data):
        x, y, w, h = (round(v) for v in box)
        boxes[y : y + h, x : x + w] = True
    return rsna_case_path(shared_data), boxes


def _processed(node, orthanc, source: Path) -> tuple[str, list[pydicom.Dataset]]:
    """Send the study through the node; return its Orthanc ID and the results in it."""
    uploaded = orthanc.upload(source.read_bytes())
    study_uid = pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID
    orthanc.send_study("cxrnode", uploaded["ParentStudy"])
    wait_for(lambda: node.audit("--study", study_uid, "--action", "study.done"), 300, "study.done")
    results = []
    for instance in orthanc.study_instances(uploaded["ParentStudy"]):
        ds = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance["ID"])))
        results.append(ds)
    source_uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    return uploaded["ParentStudy"], [ds for ds in results if ds.SOPInstanceUID != source_uid]


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([need("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _pixelmed_errors(path: Path) -> list[str]:
    jar = Path("/usr/share/java/pixelmed.jar")
    if not jar.exists():
        pytest.skip("PixelMed's validator is not installed (apt-get install pixelmed-apps)")
    limits = ("xpathExprOpLimit", "xpathExprGrpLimit", "xpathTotalOpLimit")
    command = [need("java"), *(f"-Djdk.xml.{limit}=0" for limit in limits), "-cp", str(jar)]
    command += ["com.pixelmed.validate.DicomSRValidator", str(path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert "Root Template Validation Complete" in out.stdout + out.stderr, out.stderr[-2000:]
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


def _dcentvfy_errors(*paths: Path) -> list[str]:
    out = subprocess.run([need("dcentvfy"), *map(str, paths)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


def _saturated(png: Path) -> float:
    """Fraction of the screenshot's pixels in strong colour (the heatmap, the notices)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return float(np.mean(rgb.max(axis=2) - rgb.min(axis=2) > 80))


def test_results_of_a_real_study_are_valid_in_its_study_and_the_web_viewer_shows_the_capture(
    make_node, orthanc, shared_data, tmp_path
):
    node = make_node(
        sc_series_number=7002,
        finding_sc_series_number=7003,
        gsps_series_description="AI regions - requires review",
    )
    source, boxes = _rsna(shared_data)
    study_id, results = _processed(node, orthanc, source)
    source_header = pydicom.dcmread(source, stop_before_pixels=True)

    by_class: dict[str, list[pydicom.Dataset]] = {}
    for ds in results:
        by_class.setdefault(ds.SOPClassUID, []).append(ds)
    (sr,) = by_class[ComprehensiveSRStorage]
    (state,) = by_class[GrayscaleSoftcopyPresentationStateStorage]
    captures = by_class[SecondaryCaptureImageStorage]
    (overview,) = [c for c in captures if c.ImageType[-1] == "OVERVIEW"]
    per_finding = [c for c in captures if c.ImageType[-1] == "FINDING"]
    assert len(captures) == 1 + len(per_finding)
    for ds in results:  # every result is in the source study, for the same patient
        assert ds.StudyInstanceUID == source_header.StudyInstanceUID
        assert ds.PatientID == source_header.PatientID
    assert (sr.SeriesNumber, overview.SeriesNumber, state.SeriesNumber) == (9901, 7002, 9904)
    assert {c.SeriesNumber for c in per_finding} <= {7003}
    assert state.SeriesDescription == "AI regions - requires review"

    paths = {
        "sr": _save(sr, tmp_path / "sr.dcm"),
        "gsps": _save(state, tmp_path / "gsps.dcm"),
        "overview": _save(overview, tmp_path / "overview.dcm"),
        **{f"finding-{n}": _save(c, tmp_path / f"f{n}.dcm") for n, c in enumerate(per_finding)},
    }
    for name, path in paths.items():
        # The source's own errors (Patient's Age "32" is no AS value) are copied with it, as
        # they are: repaired, the study would disagree with itself.
        inherited = set(_dciodvfy_errors(source))
        assert [e for e in _dciodvfy_errors(path) if e not in inherited] == [], name
    dump = subprocess.run(
        [need("dsrdump"), "+U8", str(paths["sr"])], capture_output=True, text=True
    )
    assert dump.returncode == 0, dump.stderr
    assert "inferred from SCOORD" in dump.stdout
    assert '(263654008,SCT,"Abnormal")' in dump.stdout or "No abnormality" in dump.stdout
    # PixelMed's SR validator and dcentvfy over the study (source and every result): before,
    # the Image Library said OT for the CR source, the procedure code was not in CID 100 and
    # Patient's Age read "32" in the source but "032Y" in the results.
    assert _pixelmed_errors(paths["sr"]) == []
    assert _dcentvfy_errors(source, *paths.values()) == []

    # highdicom reads the SR back as TID 1500: one measurement group per outlined finding, its
    # probability inferred from its region on the source image; one capture per such finding.
    report = hd.sr.srread(paths["sr"])
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == len(per_finding) >= 1
    regions = {}
    for group in groups:
        (probability,) = [i for i in group[0].ContentSequence if i.ValueType == "NUM"]
        (region,) = [i for i in probability.ContentSequence if i.ValueType == "SCOORD"]
        (selected_from,) = region.ContentSequence
        assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            source_header.SOPInstanceUID
        )
        points = np.asarray(region.GraphicData, dtype=np.float32).reshape(-1, 2)
        regions[group.finding_type.meaning] = HeatRegion(
            group.finding_type.meaning, 0.0, points, (0.0, 0.0), 0.5
        ).mask((1024, 1024))
    outlines = [
        obj
        for annotation in pydicom.dcmread(paths["gsps"]).GraphicAnnotationSequence
        for obj in annotation.get("GraphicObjectSequence", [])
    ]
    assert len(outlines) == len(groups)

    # The reference model is untrained, so this overlap is chance; it is reported, not judged.
    union = np.any(list(regions.values()), axis=0)
    overlap = {
        "rsna_case": RSNA_CASE,
        "regions": len(regions),
        "union_iou_with_boxes": round(float((union & boxes).sum() / (union | boxes).sum()), 3),
        "boxes_covered": round(float((union & boxes).sum() / boxes.sum()), 3),
        "note": "untrained reference model: overlap is chance",
    }

    png = screenshot_viewer(
        orthanc.viewer_url(overview_series := _series_of(orthanc, study_id, overview)),
        tmp_path / "viewer-overview.png",
        tmp_path / "chromium",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(png, ARTIFACTS / "viewer-overview-sc.png")
    (ARTIFACTS / "viewer-region-overlap.json").write_text(json.dumps(overlap, indent=2))
    print(f"\nscreenshot: {ARTIFACTS / 'viewer-overview-sc.png'} (series {overview_series})")
    print(f"SR regions vs RSNA boxes: {overlap}")
    # The viewer drew the capture: the heatmap and the notices are the only colour on a page
    # that is otherwise black, white and gray.
    assert _saturated(png) > 0.01


def _series_of(orthanc, study_id: str, ds: pydicom.Dataset) -> str:
    for series_id in orthanc.get(f"/studies/{study_id}")["Series"]:
        tags = orthanc.get(f"/series/{series_id}")["MainDicomTags"]
        if tags.get("SeriesInstanceUID") == ds.SeriesInstanceUID:
            return series_id
    raise AssertionError(f"series {ds.SeriesInstanceUID} is not in Orthanc")


class _StorageSCP:
    """A second destination: a pynetdicom storage SCP that records the SOP classes it gets."""

    def __init__(self, ae_title: str) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for sop_class in (
            ComprehensiveSRStorage,
            GrayscaleSoftcopyPresentationStateStorage,
            SecondaryCaptureImageStorage,
        ):
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def _store(self, event) -> int:
        with self._lock:
            self.received.append(str(event.request.AffectedSOPClassUID))
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()


def test_each_destination_gets_only_the_kinds_configured_for_it(make_node, orthanc, shared_data):
    viewer = _StorageSCP("VIEWER")
    try:
        node = make_node(
            destinations=f"ORTHANC@127.0.0.1:{orthanc.dicom_port},VIEWER@127.0.0.1:{viewer.port}",
            destination_outputs="ORTHANC=SR+GSPS,VIEWER=SC",
        )
        source, _ = _rsna(shared_data)
        _, results = _processed(node, orthanc, source)
    finally:
        viewer.stop()

    assert sorted({ds.SOPClassUID for ds in results}) == sorted(
        {ComprehensiveSRStorage, GrayscaleSoftcopyPresentationStateStorage}
    )
    assert set(viewer.received) == {SecondaryCaptureImageStorage}
    assert len(viewer.received) >= 2  # the overview and at least one finding
