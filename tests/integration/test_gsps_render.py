"""The node's presentation state applied by a renderer we did not write: dcmtk's ``dcmp2pgm``
(Debian ``dcmtk``) renders a real RSNA image with the GSPS, and the outline it shows lies on the
SR's region (SCOORD) and covers it.

dcmtk's presentation-state engine (dcmpstat, also DICOMscope's) draws no graphic annotation:
it applies the GSPS's display transforms and shutters to the bitmap and hands the activated
overlay planes to the viewer as separate bitmaps, which ``dcmp2pgm -v`` writes beside its
output (``ovl_0101.pgm``: layer 1, overlay 1) with their position. The node's GSPS carries the
outlines as such an overlay too; the test puts dcmtk's overlay bitmap where dcmtk says it goes,
as a viewer would, and compares the pixels it changes with the SR's SCOORD polylines. Skips
without ``dcmp2pgm`` or ``dcmdjpeg`` (the RSNA images are JPEG baseline, which dcmp2pgm cannot
decode itself).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from itertools import pairwise
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from node.results import (
    AlgorithmInfo,
    Finding,
    ImageResult,
    build_presentation_state,
    build_structured_report,
)
from support.rsna import rsna_case_boxes, rsna_case_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning"),
]

# How far (pixels) a drawn outline pixel's centre may lie from the SR polyline, and a point of
# the polyline from the nearest drawn pixel's centre.
TOLERANCE = 1.5


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} (Debian dcmtk) is not on PATH")
    return path


def _rsna_result(shared_data: Path) -> ImageResult:
    """The RSNA image with one present finding per labelled opacity box, its heat a blob there."""
    source = pydicom.dcmread(rsna_case_path(shared_data))
    display = source.pixel_array.astype(np.float32) / 255.0
    boxes = rsna_case_boxes(shared_data)
    y, x = np.mgrid[0 : display.shape[0], 0 : display.shape[1]].astype(np.float32)
    findings, heatmaps = [], {}
    for n, (left, top, width, height) in enumerate(boxes):
        name = ("Pneumonia", "Consolidation")[n]
        findings.append(Finding(name, f"LOCAL{n}", "99CXR", name, 0.9 - 0.1 * n, 0.5))
        cx, cy = left + width / 2, top + height / 2
        heatmaps[name] = np.exp(-(((x - cx) / (width / 2)) ** 2 + ((y - cy) / (height / 2)) ** 2))
    return ImageResult(source, display, tuple(findings), heatmaps)


def _scoords(sr: pydicom.Dataset) -> list[np.ndarray]:
    """The SR's SCOORD polylines, (n, 2) (column, row) image coordinates each."""
    found = []

    def walk(items):
        for item in items:
            if item.ValueType == "SCOORD":
                found.append(np.asarray(item.GraphicData, dtype=float).reshape(-1, 2))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def _distance_to_polylines(points: np.ndarray, polylines: list[np.ndarray]) -> np.ndarray:
    """Distance of each (x, y) point to the nearest segment of any polyline."""
    segments = np.concatenate([np.stack([p[:-1], p[1:]], axis=1) for p in polylines])
    a, b = segments[None, :, 0], segments[None, :, 1]
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
    nearest = a + t[..., None] * ab
    return np.sqrt(((points[:, None] - nearest) ** 2).sum(-1)).min(axis=1)


def _render(dcmp2pgm: str, image: Path, out: Path, state: Path | None = None) -> str:
    command = [dcmp2pgm, "-v", *(["-p", str(state)] if state else []), str(image), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_dcmp2pgm_renders_the_gsps_outline_on_the_sr_region(shared_data, tmp_path):
    dcmp2pgm, dcmdjpeg = _need("dcmp2pgm"), _need("dcmdjpeg")
    image = _rsna_result(shared_data)
    algorithm = AlgorithmInfo("cxrnode-test", "1.0.0", "0" * 64, True, "")
    sr_uid = generate_uid()
    sr = build_structured_report(
        [image], algorithm, sop_instance_uid=sr_uid, series_instance_uid=generate_uid()
    )
    state = build_presentation_state(
        image,
        algorithm,
        sop_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        sr_instance_uid=sr_uid,
    )
    state_path = tmp_path / "gsps.dcm"
    state.save_as(state_path, enforce_file_format=True)
    source = rsna_case_path(shared_data)
    plain = tmp_path / "source.dcm"
    subprocess.run([dcmdjpeg, str(source), str(plain)], check=True, timeout=60)

    _render(dcmp2pgm, plain, tmp_path / "plain.pgm")
    log = _render(dcmp2pgm, plain, tmp_path / "with-gsps.pgm", state_path)
    rendered = np.asarray(Image.open(tmp_path / "with-gsps.pgm"))
    # The GSPS neither moves, crops nor re-windows the image: its PIXEL units are the image's.
    assert (rendered == np.asarray(Image.open(tmp_path / "plain.pgm"))).all()
    assert "Number of activated overlays: 1" in log, log[-3000:]
    (position,) = re.findall(r"columns=(\d+) rows=(\d+) left=(\d+) top=(\d+)", log)
    width, height, left, top = map(int, position)
    overlay = np.asarray(Image.open(tmp_path / "ovl_0101.pgm")) > 0
    assert overlay.shape == (height, width)
    shown = rendered.copy()
    shown[top : top + height, left : left + width][overlay] = 255
    changed = np.argwhere(shown != rendered)[:, ::-1] + 0.5  # pixel centres, (x, y)

    polylines = _scoords(pydicom.dcmread(_saved(sr, tmp_path / "sr.dcm")))
    assert len(polylines) == 2, "one SR region per labelled box"
    assert len(changed) > 200
    # Every pixel the outline changed lies on an SR polyline...
    assert _distance_to_polylines(changed, polylines).max() <= TOLERANCE
    # ...and every point along each polyline has a changed pixel beside it.
    for polyline in polylines:
        steps = [max(2, round(2 * np.hypot(*(b - a)))) for a, b in pairwise(polyline)]
        along = np.concatenate(
            [np.linspace(a, b, n) for (a, b), n in zip(pairwise(polyline), steps, strict=True)]
        )
        gaps = np.sqrt(((along[:, None] - changed[None]) ** 2).sum(-1)).min(axis=1)
        assert gaps.max() <= TOLERANCE
    Image.fromarray(np.stack([shown, rendered, rendered], axis=2)).save(tmp_path / "gsps.png")
    artifacts = Path("/tmp/cxrnode-artifacts")
    artifacts.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "gsps.png", artifacts / "dcmp2pgm-gsps.png")


def _saved(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
