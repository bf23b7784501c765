"""The heat blend's lookup table against the colour formula it tabulates."""

from __future__ import annotations

import numpy as np

from node.results.heatmap import HEAT_FLOOR, blend_heatmap, jet


def _exact_blend(display: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The blend computed per pixel in float: gray, then jet at an opacity ramping with heat."""
    gray = np.clip(display, 0.0, 1.0)[..., None]
    heat = np.clip(heatmap, 0.0, 1.0)
    opacity = (np.clip((heat - 0.2) / 0.3, 0.0, 1.0) * 0.6)[..., None]
    return np.round((gray * (1.0 - opacity) + jet(heat * 0.875) * opacity) * 255.0)


def test_blend_is_within_one_level_of_the_formula_for_any_gray_and_heat():
    rng = np.random.default_rng(7)
    display = rng.random((1000, 1000), dtype=np.float32)
    # Random heat, plus the ramp's corners: none, the floor, full opacity, the hottest.
    heatmap = rng.random((1000, 1000), dtype=np.float32)
    heatmap[:, :4] = [0.0, HEAT_FLOOR, 0.5, 1.0]
    blended = blend_heatmap(display, heatmap)
    assert blended.dtype == np.uint8 and blended.shape == (1000, 1000, 3)
    assert np.abs(blended.astype(int) - _exact_blend(display, heatmap)).max() <= 1


def test_pixels_below_the_heat_floor_keep_their_gray():
    display = np.linspace(0.0, 1.0, 256 * 8, dtype=np.float32).reshape(16, 128)
    heatmap = np.full(display.shape, HEAT_FLOOR * 0.9, dtype=np.float32)
    expected = np.round(display * 255.0)
    for blended in (blend_heatmap(display, heatmap), blend_heatmap(display, None)):
        assert (np.abs(blended.astype(int) - expected[..., None]) <= 1).all()
        assert (blended == blended[..., :1]).all()
