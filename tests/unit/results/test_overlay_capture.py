"""The Grad-CAM secondary capture as a PACS and a radiologist see it."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.uid import SecondaryCaptureImageStorage

from node.results import build_finding_capture, build_overview
from node.results.annotation import _composited, viewer_zones
from node.results.heatmap import blend_heatmap

# The staged sources carry single-component patient names; they are copied as received.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")


def _build(image, algorithm, uids, **kwargs):
    return build_overview(
        image,
        algorithm,
        sop_instance_uid=uids(f"sc-{image.source.SOPInstanceUID}"),
        series_instance_uid=uids("sc-series"),
        **kwargs,
    )


def _written(capture, tmp_path):
    path = tmp_path / "sc.dcm"
    capture.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    return divmod(int(heatmap.argmax()), heatmap.shape[1])


def _chroma(pixel: np.ndarray) -> int:
    return int(pixel.max()) - int(pixel.min())


def test_overlay_is_a_valid_rgb_capture_on_the_source_grid_in_the_source_study(
    sources, read_source, make_result, untrained, uids, tmp_path, dciodvfy_errors
):
    source = read_source(sources.rsna)
    path, back = _written(
        _build(make_result(source), untrained, uids, series_number=9902, instance_number=3),
        tmp_path,
    )

    assert dciodvfy_errors(path, sources.rsna) == []
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert (back.Rows, back.Columns) == (source.Rows, source.Columns)
    assert back.PhotometricInterpretation == "RGB"
    assert (back.SamplesPerPixel, back.BitsAllocated) == (3, 8)
    assert back.BurnedInAnnotation == "YES"
    assert back.ConversionType == "WSD"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientSex", "StudyDate"):
        assert back[keyword].value == source[keyword].value, keyword
    assert back.SeriesInstanceUID == uids("sc-series") != source.SeriesInstanceUID
    assert (back.SeriesNumber, back.InstanceNumber) == (9902, 3)
    assert back.SeriesDescription.startswith("UNTRAINED AI heatmap overview - ")
    assert back.SeriesDescription.endswith(" - requires review")
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert untrained.name in back.DerivationDescription
    # The source was JPEG baseline; the derived capture keeps saying it went through lossy
    # compression.
    assert back.LossyImageCompression == "01"


def test_heatmap_is_coloured_where_hot_and_the_image_stays_gray_elsewhere(
    sources, read_source, make_result, untrained, uids, tmp_path
):
    image = make_result(read_source(sources.rsna))
    _, back = _written(_build(image, untrained, uids), tmp_path)
    pixels = back.pixel_array

    row, col = _peak(image.heatmaps["Pneumothorax"])
    assert _chroma(pixels[row, col]) > 100
    assert pixels[row, col, 0] > pixels[row, col, 2]  # hot is red, not blue
    # Right of the spine, mid-height: no heat, no text panel; gray as the display.
    gray = pixels[image.heatmaps["Pneumothorax"].shape[0] // 2, int(0.8 * image.display.shape[1])]
    assert _chroma(gray) == 0


def test_findings_notice_and_disclaimer_are_burned_in(
    sources, read_source, make_result, untrained, trained, uids, tmp_path
):
    image = make_result(read_source(sources.rsna))
    untrained_pixels = _build(image, untrained, uids).pixel_array
    trained_pixels = _build(image, trained, uids).pixel_array
    rows = untrained_pixels.shape[0]

    def yellow(block):  # the review notice is drawn in yellow
        return int(np.sum((block[..., 0] > 200) & (block[..., 1] > 170) & (block[..., 2] < 90)))

    def orange(block):  # present findings and the disclaimer are drawn in orange
        return int(np.sum((block[..., 0] > 200) & (block[..., 1] < 170) & (block[..., 2] < 90)))

    top, bottom = slice(0, rows // 4), slice(rows - rows // 12, rows)
    assert yellow(untrained_pixels[top]) > 100
    assert orange(untrained_pixels[top]) > 100  # Pneumothorax, Atelectasis... present
    assert orange(untrained_pixels[bottom]) > 100
    assert orange(trained_pixels[bottom]) == 0


def test_monochrome1_acr_nema_source_gives_a_valid_capture(
    sources, read_source, make_result, untrained, uids, tmp_path, dciodvfy_errors
):
    source = read_source(sources.barre)
    image = make_result(source)
    path, back = _written(_build(image, untrained, uids), tmp_path)

    assert dciodvfy_errors(path) == []
    assert (back.Rows, back.Columns) == (440, 440)
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientOrientation == ""
    row, col = _peak(image.heatmaps["Pneumothorax"])
    assert _chroma(back.pixel_array[row, col]) > 100
    # MONOCHROME1 arrives inverted in the display: the lung is dark in the capture as well.
    lung = back.pixel_array[int(0.45 * 440), int(0.75 * 440)]
    assert int(lung[0]) < 128


def test_source_orientation_is_kept(sources, read_source, make_result, untrained, uids):
    capture = _build(make_result(read_source(sources.dx)), untrained, uids)

    assert list(capture.PatientOrientation) == ["L", "F"]


def test_capture_without_heatmap_is_gray_outside_the_text(
    sources, read_source, make_result, untrained, uids
):
    image = make_result(read_source(sources.nih), heatmap_finding=None)
    pixels = _build(image, untrained, uids).pixel_array

    # The text runs down the left edge and above the bottom edge's midpoint: the right half
    # of the body is left as it was.
    rows, cols = pixels.shape[:2]
    body = pixels[rows // 8 : rows - rows // 8, cols // 2 :]
    assert int(np.max(body.max(axis=2).astype(int) - body.min(axis=2))) == 0


def test_sources_taller_than_4096_are_shrunk_keeping_their_aspect(
    sources, read_source, make_result, untrained, uids
):
    source = read_source(sources.barre)
    # A 4400 x 440 source: the 440² chest with every row repeated ten times.
    source.PixelData = np.repeat(source.pixel_array, 10, axis=0).tobytes()
    source.Rows = 4400

    capture = _build(make_result(source), untrained, uids)

    assert (capture.Rows, capture.Columns) == (4096, 410)


def test_compositing_only_the_drawn_boxes_equals_compositing_the_whole_image():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    layer = Image.new("RGBA", (90, 120), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((5, 4, 60, 50), fill=(0, 0, 0, 170))
    draw.rectangle((30, 40, 85, 115), fill=(0, 0, 0, 170))  # overlaps the first, across the cut
    draw.text((8, 6), "Findings", fill=(255, 214, 0, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    whole = Image.alpha_composite(Image.fromarray(rgb).convert("RGBA"), layer).convert("RGB")
    assert (_composited(rgb.copy(), layer, cuts=(45,)) == np.asarray(whole)).all()


def test_finding_capture_is_the_same_built_after_the_overview_that_shares_its_blend(
    sources, read_source, make_result, untrained, uids
):
    def finding_pixels(image):
        uid, series = uids("f"), uids("f-series")
        capture = build_finding_capture(
            image, "Pneumothorax", untrained, sop_instance_uid=uid, series_instance_uid=series
        )
        return capture.pixel_array

    alone = finding_pixels(make_result(read_source(sources.rsna)))
    image = make_result(read_source(sources.rsna))
    overview = _build(image, untrained, uids).pixel_array
    after = finding_pixels(image)
    assert (after == alone).all()
    # The overview outlines every region and the capture one: they differ, from one blend.
    assert (overview != after).any()


@pytest.mark.parametrize("source", ["rsna", "barre"])
def test_burned_in_text_and_legend_keep_out_of_the_corners_and_midpoints_viewers_draw_on(
    source, sources, read_source, make_result, untrained, uids
):
    # Every finding absent: no outline, so the capture differs from the plain heatmap blend
    # only by its text and legend.
    source_ds = read_source(getattr(sources, source))
    image = make_result(source_ds, probabilities=(0.1,) * 4 + (0.4, 0.1))
    pixels = _build(image, untrained, uids).pixel_array
    plain = blend_heatmap(image.display, image.heatmaps["Pneumothorax"])
    drawn = (pixels != plain).any(axis=2)

    rows, cols = drawn.shape
    for left, top, right, bottom in viewer_zones(rows, cols):
        assert not drawn[top:bottom, left:right].any(), (left, top, right, bottom)
    # The zones are as large as what OHIF 3.13 covers on a capture filling its viewport: corner
    # text up to about 30% of the width in two to four lines, orientation letters about 4% in.
    corner, *_, right_mid = viewer_zones(rows, cols)
    assert corner[2] >= round(0.3 * cols) and corner[3] >= round(0.12 * rows)
    assert right_mid[2] - right_mid[0] >= round(0.06 * cols)
    # The text and the legend are still there: the notice in yellow, the scale's red top.
    notice = (pixels[..., 0] > 200) & (pixels[..., 1] > 170) & (pixels[..., 2] < 90) & drawn
    assert notice.sum() > 50
    legend = drawn[:, int(0.8 * cols) :] & (pixels[:, int(0.8 * cols) :, 0] > 200)
    assert legend.sum() > 50
