"""Heatmaps handed to the builders at the model's grid: drawn onto the source grid there, they
give the captures, presentation states and SR the pixels and outlines full-size maps give."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F

from models.default import bundled_default_package
from models.package import load_package
from models.predictor import Predictor, _rescale
from models.preprocess import dicom_to_display
from node.results import (
    Finding,
    GridHeatmap,
    ImageResult,
    ResultInputError,
    build_finding_capture,
    build_overview,
    display_levels,
    finding_regions,
)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(load_package(bundled_default_package()), device="cpu")


@pytest.mark.parametrize(
    ("shape", "region"),
    [
        ((1024, 1024), (0, 0, 1024, 1024)),
        ((300, 200), (0, 0, 300, 200)),
        ((2500, 2048), (226, 0, 2048, 2048)),  # a centre crop of a portrait image
        ((5, 9), (0, 0, 5, 9)),  # smaller than the grid
    ],
)
def test_a_grid_heatmap_is_drawn_as_the_predictor_resizes_its_maps(shape, region):
    rng = np.random.default_rng(sum(shape))
    grid = rng.random((7, 7), dtype=np.float32)
    top, left, rows, cols = region
    resized = F.interpolate(torch.from_numpy(grid)[None, None], size=(rows, cols), mode="bilinear")
    expected = np.zeros(shape, np.float32)
    expected[top : top + rows, left : left + cols] = _rescale(resized[0]).numpy()[0]

    drawn = GridHeatmap(grid, shape, region).on_source_grid()
    assert drawn.dtype == np.float32 and drawn.shape == shape
    assert drawn.flags.c_contiguous  # F-ordered, the blend's lookups took 3x as long
    np.testing.assert_allclose(drawn, expected, atol=2e-6)


def test_a_grid_heatmap_outside_its_image_is_refused(sources, read_source, make_result):
    grid = np.full((7, 7), 0.5, np.float32)
    with pytest.raises(ValueError, match="leaves the image"):
        GridHeatmap(grid, (100, 100), (0, 0, 100, 101))
    image = make_result(read_source(sources.rsna))
    wrong = {"Pneumothorax": GridHeatmap(grid, (512, 512), (0, 0, 512, 512))}
    with pytest.raises(ResultInputError, match="expected the source grid"):
        ImageResult(image.source, image.display, image.findings, wrong)
    hot = {"Pneumothorax": GridHeatmap(grid * 3, (1024, 1024), (0, 0, 1024, 1024))}
    with pytest.raises(ResultInputError, match="outside"):
        ImageResult(image.source, image.display, image.findings, hot)


def _results(predictor: Predictor, path: Path) -> tuple[ImageResult, ImageResult]:
    """One real image's results, with the maps at full size and at the model's grid."""
    display = dicom_to_display(pydicom.dcmread(path))
    source = pydicom.dcmread(path, stop_before_pixels=True)  # as the worker hands it over
    labels = predictor.package.config.labels
    (prediction,) = predictor.predict([display])
    wanted = [list(range(len(labels)))]
    (full,) = predictor.explain_many([display], wanted)
    (grid,) = predictor.explain_on_grid([display], wanted)
    findings = tuple(
        Finding(
            label.name, label.code_value, label.coding_scheme, label.code_meaning, float(p), 0.0
        )
        for label, p in zip(labels, prediction.probabilities, strict=True)
    )  # threshold 0: every finding present, every map drawn
    names = [label.name for label in labels]
    return (
        ImageResult(source, display, findings, dict(zip(names, full, strict=True))),
        ImageResult(
            source,
            display,
            findings,
            {
                n: GridHeatmap(g, grid.size, grid.region)
                for n, g in zip(names, grid.maps, strict=True)
            },
        ),
    )


def test_captures_and_regions_from_grid_heatmaps_match_those_from_full_size_maps(
    predictor, shared_data, untrained
):
    rsna = sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    for path in rsna[:3]:
        full, grid = _results(predictor, path)
        for name in full.heatmaps:
            np.testing.assert_allclose(grid.heatmap(name), full.heatmap(name), atol=1e-5)
        for a, b in zip(finding_regions(full), finding_regions(grid), strict=True):
            np.testing.assert_array_equal(a.points, b.points)
            assert a.peak == b.peak
        uids = {"sop_instance_uid": "2.25.1", "series_instance_uid": "2.25.2"}
        captures = [
            (build_overview(image, untrained, **uids), *build_findings(image, untrained, uids))
            for image in (full, grid)
        ]
        for a, b in zip(*captures, strict=True):
            difference = np.abs(a.pixel_array.astype(int) - b.pixel_array.astype(int))
            assert difference.max() <= 1  # the blend's heat quantisation, at most
            assert np.mean(difference > 0) < 1e-3


def build_findings(image: ImageResult, algorithm, uids: dict) -> list:
    return [build_finding_capture(image, name, algorithm, **uids) for name in image.heatmaps]


def test_grid_heatmaps_add_kilobytes_to_what_a_builder_is_sent(predictor, shared_data):
    path = next((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    full, grid = _results(predictor, path)
    display_bytes = full.display.nbytes
    assert len(pickle.dumps(full)) > display_bytes + 2 * 4 * 1024 * 1024  # two 1024² maps
    assert len(pickle.dumps(grid)) < display_bytes + 64 * 1024
    # With the display's grey levels: a quarter of the float32 image, and the header.
    assert len(pickle.dumps(_levels(grid))) < display_bytes / 4 + 64 * 1024


def _levels(image: ImageResult) -> ImageResult:
    return ImageResult(image.source, display_levels(image.display), image.findings, image.heatmaps)


@pytest.mark.parametrize("source", ["rsna", "tall"])
def test_captures_from_the_display_grey_levels_are_those_from_the_float_display(
    source, sources, read_source, make_result, untrained
):
    if source == "rsna":
        image = make_result(read_source(sources.rsna))
    else:  # 4400 x 440: shrunk to fit 4096, the levels averaged instead of the floats
        tall = read_source(sources.barre)
        tall.PixelData = np.repeat(tall.pixel_array, 10, axis=0).tobytes()
        tall.Rows = 4400
        image = make_result(tall)
    uids = {"sop_instance_uid": "2.25.1", "series_instance_uid": "2.25.2"}
    exact = build_overview(image, untrained, **uids).pixel_array.astype(int)
    drawn = build_overview(_levels(image), untrained, **uids).pixel_array.astype(int)
    assert np.abs(exact - drawn).max() <= (0 if source == "rsna" else 1)
    levels = display_levels(image.display)
    assert levels.dtype == np.uint8 and levels.nbytes * 4 == image.display.nbytes
