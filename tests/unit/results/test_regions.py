"""The finding region: where the Grad-CAM mass lies, written into the SR and read back onto the
source image's pixel grid.

The overlap figures are printed and written to ``/tmp/cxrnode-artifacts/region-overlap.json``
(and the test's tmp dir). Two kinds of heat are used:

- the real Grad-CAM of the bundled reference model (untrained: its map says nothing about
  disease, but it is the map the node writes). The SR region read back must contain its peak
  and hold the mass of heat above the region level.
- a map that peaks on the known lesion (synthetic) or the RSNA labelled opacity box, standing
  in for a model that found it: the region read back must overlap the lesion/box, which
  checks rows vs columns, origin and scale end to end.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.default import build_reference_package
from models.package import load_package
from models.predictor import Predictor
from models.preprocess import dicom_to_display
from node.results import (
    AlgorithmInfo,
    Finding,
    ImageResult,
    ResultInputError,
    build_structured_report,
    heat_region,
)
from node.results.region import HeatRegion
from node.synthetic import synthetic_study
from support.rsna import rsna_case_boxes, rsna_case_path

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")

ARTIFACTS = Path("/tmp/cxrnode-artifacts")
# The synthetic lesion: a round opacity in the right lung (image left), on a 800 x 1024 grid so
# that a swap of rows and columns cannot go unnoticed.
LESION_CENTRE, LESION_RADIUS, GRID = (430, 330), 48, (800, 1024)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    package = build_reference_package(tmp_path_factory.mktemp("model") / "reference")
    return Predictor(load_package(package), device="cpu")


@pytest.fixture(scope="module")
def overlaps(tmp_path_factory):
    figures: dict[str, dict[str, float]] = {}
    yield figures
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(f"\nregion overlap figures:\n{text}")
    (tmp_path_factory.mktemp("overlap") / "region-overlap.json").write_text(text)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "region-overlap.json").write_text(text)


def _lesion_study() -> pydicom.Dataset:
    ds = synthetic_study(patient_id="SYNTH-LESION", accession="LESION1", size=GRID[1])
    pixels = ds.pixel_array[: GRID[0]].astype(np.uint16).copy()
    rows, cols = np.mgrid[0 : GRID[0], 0 : GRID[1]]
    lesion = (rows - LESION_CENTRE[0]) ** 2 + (cols - LESION_CENTRE[1]) ** 2 < LESION_RADIUS**2
    pixels[lesion] = np.maximum(pixels[lesion], 2900)
    ds.Rows, ds.Columns = GRID
    ds.PixelData = pixels.tobytes()
    return ds


def _lesion_mask() -> np.ndarray:
    rows, cols = np.mgrid[0 : GRID[0], 0 : GRID[1]]
    return (rows - LESION_CENTRE[0]) ** 2 + (cols - LESION_CENTRE[1]) ** 2 < LESION_RADIUS**2


def _rsna_case(shared_data: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(rsna_case_path(shared_data))
    boxes = np.zeros((int(ds.Rows), int(ds.Columns)), dtype=bool)
    for box in rsna_case_boxes(shared_data):
        x, y, w, h = (round(v) for v in box)
        boxes[y : y + h, x : x + w] = True
    assert boxes.any()
    return ds, boxes


def _peaking_on(mask: np.ndarray) -> np.ndarray:
    """Heat that peaks inside ``mask`` and fades outside it: what a model that found it gives.

    A Gaussian whose half maximum lies about on the mask's edge (for a disc or a box, the edge
    is 1.7 standard deviations of its pixel coordinates from the centre).
    """
    rows, cols = np.nonzero(mask)
    centre = rows.mean(), cols.mean()
    spread = 1.7 * max(rows.std(), 1.0) / 1.177, 1.7 * max(cols.std(), 1.0) / 1.177
    y, x = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]].astype(np.float32)
    heat = np.exp(-0.5 * (((y - centre[0]) / spread[0]) ** 2 + ((x - centre[1]) / spread[1]) ** 2))
    return heat.astype(np.float32)


def _algorithm(predictor: Predictor) -> AlgorithmInfo:
    config = predictor.package.config
    return AlgorithmInfo(
        config.name, config.version, config.weights_sha256, config.trained, config.disclaimer
    )


def _one_finding(name: str, probability: float = 0.9) -> tuple[Finding, ...]:
    return (
        Finding(name, "233604007", "SCT", name, probability, 0.5),
        Finding("Cardiomegaly", "8186001", "SCT", "Cardiomegaly", 0.1, 0.5),
    )


def _sr_regions_read_back(image: ImageResult, algorithm: AlgorithmInfo) -> dict[str, np.ndarray]:
    """Build the SR, write it, read it with pydicom and rasterise each SCOORD on the grid."""
    sr = build_structured_report(
        [image], algorithm, sop_instance_uid="2.25.1", series_instance_uid="2.25.2"
    )
    buffer = BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(BytesIO(buffer.getvalue()))
    shape = image.display.shape
    masks = {}
    for group in _containers(back.ContentSequence):
        children = group.get("ContentSequence", [])
        names = [
            c.ConceptCodeSequence[0].CodeMeaning
            for c in children
            if c.ValueType == "CODE" and c.ConceptNameCodeSequence[0].CodeValue == "121071"
        ]
        # The region is the SCOORD the probability NUM is INFERRED FROM (TID 300 row 8).
        numbers = [c for c in children if c.ValueType == "NUM"]
        inferred = [s for n in numbers for s in n.get("ContentSequence", [])]
        for scoord in (c for c in [*children, *inferred] if c.ValueType == "SCOORD"):
            (source,) = [c for c in scoord.ContentSequence if c.ValueType == "IMAGE"]
            assert (
                source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                == image.source.SOPInstanceUID
            )
            points = np.asarray(scoord.GraphicData, dtype=np.float32).reshape(-1, 2)
            polygon = HeatRegion(names[0], 0.0, points, (0.0, 0.0), 0.5)
            masks[names[0]] = polygon.mask(shape)
    return masks


def _containers(items):
    for item in items:
        if item.ValueType == "CONTAINER":
            yield item
            yield from _containers(item.get("ContentSequence", []))


def _figures(region: np.ndarray, target: np.ndarray) -> dict[str, float]:
    intersection = float(np.sum(region & target))
    return {
        "iou": round(intersection / float(np.sum(region | target)), 3),
        "target_covered": round(intersection / float(np.sum(target)), 3),
        "region_on_target": round(intersection / float(np.sum(region)), 3),
    }


def _real_grad_cam(predictor: Predictor, ds: pydicom.Dataset) -> ImageResult:
    """The node's own path: display from models.preprocess, Grad-CAM of the top label."""
    display = dicom_to_display(ds)
    (prediction,) = predictor.predict([display])
    labels = predictor.package.config.labels
    top = int(np.argmax(prediction.probabilities))
    (heat,) = predictor.explain(display, [top])
    findings = tuple(
        # The top label is made present whatever the untrained model's threshold says, so
        # that it gets a region.
        Finding(
            label.name,
            label.code_value,
            label.coding_scheme,
            label.code_meaning,
            float(p),
            min(float(label.threshold), float(p)) if n == top else float(label.threshold),
        )
        for n, (label, p) in enumerate(zip(labels, prediction.probabilities, strict=True))
    )
    return ImageResult(ds, display, findings, {labels[top].name: heat})


def _check_real_grad_cam(image: ImageResult, algorithm: AlgorithmInfo) -> dict[str, float]:
    (name,) = image.heatmaps
    heat = image.heatmaps[name]
    region = _sr_regions_read_back(image, algorithm)[name]
    peak_row, peak_col = divmod(int(np.argmax(heat)), heat.shape[1])
    assert region[peak_row, peak_col], "the SR region misses the Grad-CAM peak"
    hot = heat >= 0.5 * heat.max()
    figures = {
        "peak_inside": 1.0,
        "hot_mass_inside": round(float(heat[hot & region].sum() / heat[hot].sum()), 3),
        "region_fraction_of_image": round(float(region.mean()), 3),
    }
    # The region encloses the connected hot mass around the peak: most of the heat above
    # the region level, and not the whole image.
    assert figures["hot_mass_inside"] >= 0.5
    assert figures["region_fraction_of_image"] < 0.9
    return figures


def test_region_contains_the_whole_connected_mass_and_not_a_second_hot_spot():
    heat = np.zeros((120, 200), np.float32)
    heat[30:50, 40:90] = 1.0
    heat[90:100, 150:190] = 0.9  # a second, separate hot spot
    region = heat_region(heat, "Mass", 0.8, level=0.5)

    mask = region.mask(heat.shape)
    assert mask[30:50, 40:90].all()
    assert not mask[90:100, 150:190].any()
    assert region.bounds == (40.0, 30.0, 90.0, 50.0)  # pixel corners, (column, row)
    assert region.peak == (40.5, 30.5)
    assert np.array_equal(region.points[0], region.points[-1])


def test_a_lower_level_gives_a_larger_region_and_a_flat_map_none():
    y, x = np.mgrid[0:100, 0:100].astype(np.float32)
    heat = np.exp(-(((y - 50) / 15) ** 2 + ((x - 40) / 20) ** 2)).astype(np.float32)

    tight = heat_region(heat, "Mass", 0.9, level=0.8).mask(heat.shape).sum()
    loose = heat_region(heat, "Mass", 0.9, level=0.3).mask(heat.shape).sum()
    assert 0 < tight < loose
    assert heat_region(np.zeros((10, 10), np.float32), "Mass", 0.9) is None
    with pytest.raises(ResultInputError, match="region level"):
        heat_region(heat, "Mass", 0.9, level=0.0)


def test_sr_region_on_a_synthetic_lesion_overlaps_the_lesion(predictor, overlaps):
    ds = _lesion_study()
    lesion = _lesion_mask()
    display = dicom_to_display(ds)
    image = ImageResult(ds, display, _one_finding("Mass"), {"Mass": _peaking_on(lesion)})

    region = _sr_regions_read_back(image, _algorithm(predictor))["Mass"]

    figures = _figures(region, lesion)
    overlaps["synthetic_lesion_vs_region"] = figures
    assert region[LESION_CENTRE]
    assert figures["iou"] >= 0.7
    # Rows and columns swapped would put the region elsewhere on the non-square grid.
    assert not region[LESION_CENTRE[1] % GRID[0], LESION_CENTRE[0]]


def test_sr_region_of_the_real_grad_cam_on_the_synthetic_lesion_holds_its_peak(predictor, overlaps):
    ds = _lesion_study()
    image = _real_grad_cam(predictor, ds)

    figures = _check_real_grad_cam(image, _algorithm(predictor))

    region = _sr_regions_read_back(image, _algorithm(predictor))[next(iter(image.heatmaps))]
    figures.update(
        {f"lesion_{k}": v for k, v in _figures(region, _lesion_mask()).items()},
        note="untrained reference model: lesion overlap is chance",
    )
    overlaps["synthetic_lesion_reference_grad_cam"] = figures


def test_sr_region_on_a_real_rsna_image_overlaps_its_labelled_box(predictor, shared_data, overlaps):
    ds, boxes = _rsna_case(shared_data)
    display = dicom_to_display(ds)
    # One opacity box per lung: the map peaks on the right lung's (image left) box.
    right_lung = boxes.copy()
    right_lung[:, boxes.shape[1] // 2 :] = False
    image = ImageResult(
        ds, display, _one_finding("Pneumonia"), {"Pneumonia": _peaking_on(right_lung)}
    )

    region = _sr_regions_read_back(image, _algorithm(predictor))["Pneumonia"]

    figures = _figures(region, right_lung)
    overlaps["rsna_box_vs_region"] = figures
    assert figures["iou"] >= 0.6
    assert figures["region_on_target"] >= 0.8


def test_sr_region_of_the_real_grad_cam_on_a_real_rsna_image_holds_its_peak(
    predictor, shared_data, overlaps
):
    ds, boxes = _rsna_case(shared_data)
    image = _real_grad_cam(predictor, ds)

    figures = _check_real_grad_cam(image, _algorithm(predictor))

    region = _sr_regions_read_back(image, _algorithm(predictor))[next(iter(image.heatmaps))]
    figures.update(
        {f"box_{k}": v for k, v in _figures(region, boxes).items()},
        note="untrained reference model: box overlap is chance",
    )
    overlaps["rsna_reference_grad_cam"] = figures
