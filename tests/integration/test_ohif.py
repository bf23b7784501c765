"""What the radiologist sees in OHIF Viewer 3.13 (the most used open-source radiology viewer): a
real RSNA study through the node into Orthanc, Orthanc's DICOMweb and OHIF's built viewer on one
origin, OHIF in headless Chromium (software WebGL).

Checked in one OHIF session: the study list shows the study; the study browser tells the four
result series apart by their descriptions and the overview capture is drawn; OHIF's own overlays
(corner text, orientation markers, action-corner icons, cine player) cover none of the capture's
burned-in text and colour scale, in OHIF's default layout and with the viewport made square (the
image then fills it: the tightest case); OHIF hydrates the SR into one measurement per outlined
finding, named by the finding with its probability, drawn on the source image and listed in the
Measurements panel. Screenshots go to ``/tmp/cxrnode-artifacts/ohif-*.png``, the capture's with
the boxes compared drawn on as ``ohif-*-boxes.png``. Skips where Chromium, node, the DICOMweb
plugin or the npm packages (``scripts/setup`` fetches them into ``.cache/ohif``) are missing.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.uid import (
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
)

from models.preprocess import dicom_to_display
from node.results.notices import SERIES_KINDS
from node.results.sr import CORNERSTONE_OUTLINE
from support.burned_in import burned_in_boxes
from support.ohif import (
    OHIF_DIST,
    OhifServer,
    OrthancWithDicomWeb,
    PageBox,
    drive,
    image_box_on_page,
    need_ohif,
    overlaps,
    overlay_text_boxes,
)
from support.peers import wait_for
from support.rsna import RSNA_CASE, rsna_case_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning"),
]

ARTIFACTS = Path("/tmp/cxrnode-artifacts")
# OHIF draws SR measurements in Cornerstone's annotation yellow.
_YELLOW = (255, 255, 0)


@pytest.fixture
def orthanc_kind() -> type[OrthancWithDicomWeb]:
    """The integration harness's Orthanc, serving DICOMweb for OHIF."""
    need_ohif()
    return OrthancWithDicomWeb


def _results(node, orthanc, source: Path) -> list[pydicom.Dataset]:
    """Send the study through the node; the node's results as Orthanc holds them."""
    uploaded = orthanc.upload(source.read_bytes())
    header = pydicom.dcmread(source, stop_before_pixels=True)
    orthanc.send_study("cxrnode", uploaded["ParentStudy"])
    wait_for(
        lambda: node.audit("--study", header.StudyInstanceUID, "--action", "study.done"),
        300,
        "study.done",
    )
    results = [
        pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance["ID"])))
        for instance in orthanc.study_instances(uploaded["ParentStudy"])
    ]
    return [ds for ds in results if ds.SOPInstanceUID != header.SOPInstanceUID]


def _outline_labels(sr: pydicom.Dataset) -> list[str]:
    """The labels of the SR's outlined findings (the Comment of each Cornerstone group)."""
    labels = []
    for container in sr.ContentSequence:
        for group in container.get("ContentSequence", []):
            items = group.get("ContentSequence", [])
            if any(i.ValueType == "TEXT" and i.TextValue == CORNERSTONE_OUTLINE for i in items):
                (comment,) = [
                    i
                    for i in items
                    if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"
                ]
                labels.append(comment.TextValue)
    return labels


def _viewer(study_uid: str, series_uid: str) -> str:
    query = {"StudyInstanceUIDs": study_uid, "initialSeriesInstanceUID": series_uid}
    return f"/viewer?{urlencode(query)}"


def _collisions(
    shot: dict, capture: pydicom.Dataset, burned: list[tuple[int, int, int, int]]
) -> list[tuple[str, str, PageBox, PageBox]]:
    """OHIF's overlay text lines that cover a burned-in box of the capture shown in ``shot``.

    Also checks that OHIF shows the capture, and, when the viewport is square, that the image
    fills it and some of OHIF's corner text lies on the image (so the check is not empty);
    saves the screenshot with both sets of boxes drawn (burned-in cyan, OHIF's magenta).
    """
    geometry = shot["geometry"]
    (viewport,) = [v for v in geometry["viewports"] if capture.SOPInstanceUID in v["imageId"]]
    assert (viewport["rows"], viewport["columns"]) == (capture.Rows, capture.Columns)
    image = image_box_on_page(viewport, (0, 0, capture.Columns, capture.Rows))
    drawn = overlay_text_boxes(geometry)
    kinds = {kind for kind, _, _ in drawn}
    assert {"viewport-overlay-top-left", "viewport-overlay-bottom-left"} <= kinds, drawn
    if shot["squared"]:
        canvas = viewport["canvas"]
        assert abs((image[2] - image[0]) - (canvas[2] - canvas[0])) <= 2, (image, canvas)
        assert any(overlaps(box, image) for kind, _, box in drawn if "overlay" in kind), drawn
    on_page = [image_box_on_page(viewport, box) for box in burned]
    found = [
        (kind, text, box, panel)
        for kind, text, box in drawn
        for panel in on_page
        if overlaps(box, panel)
    ]
    _draw_boxes(shot["screenshot"], on_page, [box for _, _, box in drawn], shot["name"])
    return found


def _draw_boxes(screenshot: str, burned: list[PageBox], ohif: list[PageBox], name: str) -> None:
    picture = Image.open(screenshot).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for boxes, colour in ((burned, (0, 255, 255)), (ohif, (255, 0, 255))):
        for left, top, right, bottom in boxes:
            draw.rectangle((left, top, right - 1, bottom - 1), outline=colour, width=2)
    picture.save(ARTIFACTS / f"{name}-boxes.png")


def _yellow_pixels(png: str) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(np.sum(np.abs(rgb - np.array(_YELLOW)).max(axis=2) < 60))


def _saturated(png: str) -> float:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return float(np.mean(rgb.max(axis=2) - rgb.min(axis=2) > 80))


def test_ohif_lists_the_study_tells_the_series_apart_and_hydrates_each_outlined_finding(
    make_node, orthanc, shared_data, tmp_path
):
    source = rsna_case_path(shared_data)
    node = make_node()
    results = _results(node, orthanc, source)
    by_class: dict[str, list[pydicom.Dataset]] = {}
    for ds in results:
        by_class.setdefault(ds.SOPClassUID, []).append(ds)
    (sr,) = by_class[ComprehensiveSRStorage]
    (state,) = by_class[GrayscaleSoftcopyPresentationStateStorage]
    (overview,) = [c for c in by_class[SecondaryCaptureImageStorage] if "OVERVIEW" in c.ImageType]
    labels = _outline_labels(sr)
    assert labels, "the reference model outlines at least one finding on this case"
    descriptions = [ds.SeriesDescription for ds in (sr, state, overview)]
    assert len(set(descriptions)) == 3

    server = OhifServer(OHIF_DIST, orthanc).start()
    shots = tmp_path / "ohif"
    shots.mkdir()
    study = sr.StudyInstanceUID
    steps = [
        {"name": "ohif-study-list", "path": "/", "waitText": [RSNA_CASE], "timeoutMs": 60000},
        {
            "name": "ohif-overview-capture",
            "path": _viewer(study, overview.SeriesInstanceUID),
            # OHIF cuts long descriptions in its study browser; the kind comes first. Every
            # series the node writes for this package (no Integrated Gradients captures: the
            # package does not ask for them).
            "waitText": [v for k, v in SERIES_KINDS.items() if k != "ig_sc"],
            "waitSelector": "canvas.cornerstone-canvas",
            "waitLoaded": True,
            "geometry": True,
            "timeoutMs": 90000,
            "settleMs": 8000,
        },
        {
            "name": "ohif-overview-capture-square",
            "path": _viewer(study, overview.SeriesInstanceUID),
            "waitText": [SERIES_KINDS["sc"]],
            "waitLoaded": True,
            "squareViewport": True,
            "geometry": True,
            "timeoutMs": 90000,
            "settleMs": 4000,
        },
        {
            "name": "ohif-sr-measurements",
            "path": _viewer(study, sr.SeriesInstanceUID),
            "waitText": [SERIES_KINDS["sr"]],
            "waitLoaded": True,
            "clickSelectors": [
                '[data-cy="side-panel-header-right"]',
                '[data-cy="trackedMeasurements-btn"]',
            ],
            "afterClickText": [f"Measurements ({len(labels)})", *labels],
            "timeoutMs": 90000,
            "settleMs": 8000,
        },
    ]
    try:
        report = drive({"url": server.url, "out": str(shots), "steps": steps}, tmp_path)
    finally:
        server.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    for step in report["steps"]:
        shutil.copy(step["screenshot"], ARTIFACTS / f"{step['name']}.png")
    (ARTIFACTS / "ohif-report.json").write_text(
        json.dumps([{k: v for k, v in s.items() if k != "log"} for s in report["steps"]], indent=2)
    )
    listed, capture, square, measured = report["steps"]
    print(f"\nOHIF screenshots: {sorted(str(p) for p in ARTIFACTS.glob('ohif-*.png'))}")

    assert listed["missing"] == [], listed["text"][-2000:]
    assert "CR" in listed["text"] and "SR" in listed["text"]
    # Each result series says what it is in OHIF's study browser; the capture is drawn (the
    # heatmap is the only strong colour besides the viewer's blue chrome).
    assert capture["missing"] == [], capture["text"][-2000:]
    assert capture["canvases"], "OHIF drew no viewport"
    assert _saturated(capture["screenshot"]) > 0.01
    # The capture's text blocks and colour scale, found in its pixels (the header, the scale
    # and the untrained model's disclaimer): none of OHIF's overlays covers any of them.
    burned = burned_in_boxes(overview.pixel_array, dicom_to_display(pydicom.dcmread(source)))
    assert len(burned) == 3, burned
    assert square["missing"] == [], square["text"][-2000:]
    collisions = {shot["name"]: _collisions(shot, overview, burned) for shot in (capture, square)}
    boxes = sorted(str(p) for p in ARTIFACTS.glob("ohif-*-boxes.png"))
    print(f"OHIF overlays against the capture's text: {boxes}")
    assert collisions == {capture["name"]: [], square["name"]: []}
    # The SR is hydrated: one measurement per outlined finding, named by the finding with its
    # probability, drawn in yellow on the source image; nothing went wrong on the way.
    assert measured["missing"] == [], measured["text"][-3000:]
    assert "Something went wrong" not in measured["text"]
    assert not [line for line in measured["log"] if "not rehydratable" in line]
    assert _yellow_pixels(measured["screenshot"]) > 200
