"""The GSPS and the captures draw the SR's regions; the SR carries a summary finding."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage

from node.results import (
    ResultInputError,
    build_finding_capture,
    build_overview,
    build_presentation_state,
    build_structured_report,
    finding_regions,
)
from node.results.notices import REVIEW_NOTICE

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")


def _two_heatmaps(make_result, source):
    """Pneumothorax (0.90) and Atelectasis (0.81) present, each with its own heat blob."""
    image = make_result(source)
    blob = image.heatmaps["Pneumothorax"]
    shifted = np.roll(blob, shift=blob.shape[1] // 3, axis=1)  # over the other lung
    return type(image)(
        image.source,
        image.display,
        image.findings,
        {"Pneumothorax": blob, "Atelectasis": shifted},
    )


def _items(sequence):
    for item in sequence:
        yield item
        yield from _items(item.get("ContentSequence", []))


def test_presentation_state_draws_the_sr_regions_with_labels_and_is_valid(
    sources, read_source, make_result, untrained, uids, tmp_path, dciodvfy_errors
):
    image = _two_heatmaps(make_result, read_source(sources.rsna))
    sr = build_structured_report(
        [image], untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("sr-s")
    )
    state = build_presentation_state(
        image,
        untrained,
        sop_instance_uid=uids("pr"),
        series_instance_uid=uids("pr-s"),
        sr_instance_uid=uids("sr"),
    )
    path = tmp_path / "pr.dcm"
    state.save_as(path, enforce_file_format=True)

    assert dciodvfy_errors(path, sources.rsna) == []
    # highdicom has no reader for presentation states; pydicom reads the plain dataset.
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert back.SeriesDescription.startswith("UNTRAINED AI outlines (GSPS) - ")
    assert back.StudyInstanceUID == image.source.StudyInstanceUID
    assert back.SeriesInstanceUID != image.source.SeriesInstanceUID
    referenced = back.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == image.source.SOPInstanceUID

    polylines = [
        obj
        for annotation in back.GraphicAnnotationSequence
        for obj in annotation.get("GraphicObjectSequence", [])
    ]
    texts = [
        obj.UnformattedTextValue
        for annotation in back.GraphicAnnotationSequence
        for obj in annotation.get("TextObjectSequence", [])
    ]
    regions = finding_regions(image)
    assert [r.finding for r in regions] == ["Pneumothorax", "Atelectasis"]
    assert len(polylines) == 2
    scoords = [item for item in _items(sr.ContentSequence) if item.ValueType == "SCOORD"]
    in_sr = [np.asarray(item.GraphicData, np.float32).reshape(-1, 2) for item in scoords]
    for region, polyline in zip(regions, polylines, strict=True):
        drawn = np.asarray(polyline.GraphicData, dtype=np.float32).reshape(-1, 2)
        assert polyline.GraphicAnnotationUnits == "PIXEL"
        assert np.allclose(drawn, region.points)
        assert sum(p.shape == drawn.shape and np.allclose(p, drawn) for p in in_sr) == 1
    assert "1. Pneumothorax 0.90" in texts and "2. Atelectasis 0.81" in texts
    assert REVIEW_NOTICE in texts
    # The outline carries the tracking UID of the SR's group for the same finding.
    sr_tracking = {item.UID for item in _items(sr.ContentSequence) if item.ValueType == "UIDREF"}
    assert {p.TrackingUID for p in polylines} <= sr_tracking


def test_presentation_state_of_a_monochrome1_source_is_valid_and_says_no_region(
    sources, read_source, make_result, untrained, uids, tmp_path, dciodvfy_errors
):
    image = make_result(read_source(sources.barre), heatmap_finding=None)
    state = build_presentation_state(
        image, untrained, sop_instance_uid=uids("pr"), series_instance_uid=uids("pr-s")
    )
    path = tmp_path / "pr.dcm"
    state.save_as(path, enforce_file_format=True)

    assert dciodvfy_errors(path) == []
    texts = [
        obj.UnformattedTextValue
        for annotation in pydicom.dcmread(path).GraphicAnnotationSequence
        for obj in annotation.get("TextObjectSequence", [])
    ]
    assert "No finding region above threshold" in texts


def _orange(pixels: np.ndarray) -> np.ndarray:
    return (
        (pixels[..., 0] > 200)
        & (pixels[..., 1] > 110)
        & (pixels[..., 1] < 170)
        & (pixels[..., 2] < 90)
    )


def test_one_capture_per_present_finding_shows_its_outline_and_the_colour_scale(
    sources, read_source, make_result, untrained, uids, tmp_path, dciodvfy_errors
):
    image = _two_heatmaps(make_result, read_source(sources.rsna))
    regions = {r.finding: r for r in finding_regions(image)}
    for n, name in enumerate(("Pneumothorax", "Atelectasis"), start=1):
        capture = build_finding_capture(
            image,
            name,
            untrained,
            sop_instance_uid=uids(f"f{n}"),
            series_instance_uid=uids("f"),
            series_number=9903,
            instance_number=n,
        )
        path = tmp_path / f"{name}.dcm"
        capture.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path, sources.rsna) == []
        back = pydicom.dcmread(path)
        assert list(back.ImageType) == ["DERIVED", "SECONDARY", "FINDING"]
        assert back.SeriesDescription.startswith("UNTRAINED AI heatmap per finding - ")
        assert back.SeriesNumber == 9903 and back.BurnedInAnnotation == "YES"
        pixels = back.pixel_array
        # The outline lies on the region's edge: orange pixels along its left side.
        left, top, right, bottom = (round(v) for v in regions[name].bounds)
        edge = pixels[(top + bottom) // 2, max(0, left - 3) : left + 4]
        assert _orange(edge).any(), name
        # The colour scale at the right edge, above the edge's midpoint: red above blue.
        rows, cols = pixels.shape[:2]
        strip = pixels[rows // 8 : rows // 2, cols - cols // 12 :]
        reds = (strip[..., 0] > 200) & (strip[..., 2] < 60)
        blues = (strip[..., 2] > 200) & (strip[..., 0] < 60)
        assert reds.any() and blues.any()
        assert np.nonzero(reds)[0].mean() < np.nonzero(blues)[0].mean()

    with pytest.raises(ResultInputError, match="present finding with a heatmap"):
        build_finding_capture(
            image,
            "Cardiomegaly",
            untrained,
            sop_instance_uid="2.25.9",
            series_instance_uid="2.25.8",
        )


def test_overview_outlines_every_region_and_has_no_scale_without_heat(
    sources, read_source, make_result, untrained, uids
):
    image = _two_heatmaps(make_result, read_source(sources.rsna))
    overview = build_overview(
        image, untrained, sop_instance_uid=uids("o"), series_instance_uid=uids("os")
    )
    pixels = overview.pixel_array
    for region in finding_regions(image):
        left, top, right, bottom = (round(v) for v in region.bounds)
        assert _orange(pixels[(top + bottom) // 2, max(0, left - 3) : left + 4]).any()
    assert list(overview.ImageType)[-1] == "OVERVIEW"

    plain = make_result(read_source(sources.nih), heatmap_finding=None)
    pixels = build_overview(
        plain, untrained, sop_instance_uid=uids("p"), series_instance_uid=uids("ps")
    ).pixel_array
    rows, cols = pixels.shape[:2]
    strip = pixels[rows // 3 : 2 * rows // 3, cols - cols // 12 :].astype(int)
    assert np.abs(strip.max(axis=2) - strip.min(axis=2)).max() == 0  # gray: no scale


def test_summary_finding_says_abnormal_with_the_highest_probability_or_no_abnormality(
    sources, read_source, make_result, untrained, uids
):
    def summary(image):
        sr = build_structured_report(
            [image], untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
        )
        codes = [
            item.ConceptCodeSequence[0].CodeMeaning
            for item in _items(sr.ContentSequence)
            if item.ValueType == "CODE"
            and item.ConceptNameCodeSequence[0].CodeValue == "121071"
            and item.ConceptCodeSequence[0].CodingSchemeDesignator == "SCT"
            and item.ConceptCodeSequence[0].CodeValue in {"263654008", "281900007"}
        ]
        texts = [
            item.TextValue
            for item in _items(sr.ContentSequence)
            if item.ValueType == "TEXT" and item.TextValue.startswith("Summary")
        ]
        return codes, texts

    codes, texts = summary(make_result(read_source(sources.rsna)))
    assert codes == ["Abnormal"]
    assert texts == [
        "Summary: abnormal. Highest probability: Pneumothorax 0.90. "
        "Present: Pneumothorax, Atelectasis, Pleural effusion."
    ]
    quiet = make_result(read_source(sources.rsna), probabilities=(0.1, 0.2, 0.3, 0.05, 0.4, 0.1))
    codes, texts = summary(quiet)
    assert codes == ["No abnormality detected"]
    assert texts == [
        "Summary: no finding at or above its threshold. Highest probability: Pneumothorax 0.40."
    ]
