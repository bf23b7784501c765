"""The OHIF test's finder of a capture's burned-in panels (tests/support/burned_in.py), checked
against where the node draws them: the same caption, scale and text burned into a plain grey
image, where every changed pixel is a panel's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from node.results import ImageResult, build_overview
from node.results.annotation import burn_in, caption, draw_legend
from node.results.heatmap import blend_heatmap, legend_ramp
from support.burned_in import Box, burned_in_boxes

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")


def _panels_on_grey(image: ImageResult, algorithm, shown: str) -> list[Box]:
    """The overview's panels as the node draws them on a uniform grey image."""
    rows, cols = image.display.shape
    grey = np.full((rows, cols, 3), 128, dtype=np.uint8)
    header, footer = caption(image, algorithm, shown, overview=True)
    drawn = burn_in(draw_legend(grey, legend_ramp()), header, footer, legend=True)
    labels, _ = ndimage.label((drawn != grey).any(axis=2), structure=np.ones((3, 3), dtype=bool))
    return [(c.start, r.start, c.stop, r.stop) for r, c in ndimage.find_objects(labels)]


def _heat_across_the_header(shape: tuple[int, int]) -> np.ndarray:
    """Grad-CAM-like heat in a band from top to bottom through the header block: its outline
    cuts the header's panel in three."""
    rows, cols = shape
    x = np.arange(cols, dtype=np.float32)
    band = np.exp(-(((x - 0.2 * cols) / (0.06 * cols)) ** 2))
    return np.repeat(band[None, :], rows, axis=0).astype(np.float32)


@pytest.mark.parametrize("model", ["untrained", "trained"])
def test_burned_in_panels_are_found_where_the_node_draws_them_across_heat_and_outlines(
    model, request, sources, read_source, make_result, uids
):
    algorithm = request.getfixturevalue(model)
    plain = make_result(read_source(sources.rsna))
    # Three findings present, the top one's heat across the header: its outline cuts the
    # header's panel, which darkens the heatmap as well as bare grey.
    image = ImageResult(
        plain.source,
        plain.display,
        plain.findings,
        {"Pneumothorax": _heat_across_the_header(plain.display.shape)},
    )
    capture = build_overview(
        image, algorithm, sop_instance_uid=uids("sc"), series_instance_uid=uids("sc-series")
    ).pixel_array
    expected = _panels_on_grey(image, algorithm, "Pneumothorax")

    found = burned_in_boxes(capture, image.display)

    assert sorted(found) == sorted(expected)
    # Header and colour scale; the untrained model's disclaimer adds the footer.
    assert len(found) == (3 if model == "untrained" else 2)


def test_a_capture_without_burned_in_text_has_no_panels(sources, read_source, make_result):
    image = make_result(read_source(sources.rsna))

    bare = blend_heatmap(image.display, image.heatmaps["Pneumothorax"])
    assert burned_in_boxes(bare, image.display) == []
