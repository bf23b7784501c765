"""The display image in gray with the Grad-CAM heatmap blended in where it is hot."""

from __future__ import annotations

from functools import cache

import numpy as np

# Heat below this is not drawn at all, so anatomy outside the explanation stays untouched.
HEAT_FLOOR = 0.2
# Opacity grows linearly from the floor and reaches its maximum at this heat.
_HEAT_FULL = 0.5
_MAX_OPACITY = 0.6
# The jet ramp is sampled up to 0.875, where it is pure red: jet's last eighth darkens to
# maroon, which is hard to see on bright lung.
_JET_TOP = 0.875
# Heat levels of the blend lookup table. The blend changes by at most ~1050 grey levels per
# unit of heat (opacity ramp plus jet slope), so quantising heat to 1/4095 moves it by under
# 0.13 levels, and the grey input (already 8-bit) by under 0.5: the table stays within one
# level of the exact blend.
_HEAT_LEVELS = 4096


def jet(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to the classic jet ramp (blue, cyan, yellow, red).

    Parameters
    ----------
    values : numpy.ndarray
        Any shape, values in [0, 1].

    Returns
    -------
    numpy.ndarray
        float32 of shape ``values.shape + (3,)``, RGB in [0, 1].
    """
    x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peaks
    return np.clip(1.5 - np.abs(x - centres), 0.0, 1.0).astype(np.float32)


def blend_heatmap(display: np.ndarray, heatmap: np.ndarray | None) -> np.ndarray:
    """Render the display image as RGB with the heatmap blended in above `HEAT_FLOOR`.

    Each pixel is looked up in `_blend_table` by its 8-bit grey and quantised heat: per-pixel
    float colour maths on a 1024² image cost ~50 ms per capture, the lookup ~7 ms.

    Parameters
    ----------
    display : numpy.ndarray
        float in [0, 1], shape (rows, cols), MONOCHROME2 polarity.
    heatmap : numpy.ndarray or None
        float in [0, 1], same shape; None renders the gray image alone.

    Returns
    -------
    numpy.ndarray
        uint8 of shape (rows, cols, 3), within one level of the exact blend.
    """
    gray = _quantised(display, 255)
    if heatmap is None:
        return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    index = _quantised(heatmap, _HEAT_LEVELS - 1)
    index <<= 8
    index |= gray
    return np.take(_blend_table(), index, axis=0)


def legend_ramp(steps: int = 256) -> np.ndarray:
    """The colours heat from `HEAT_FLOOR` to 1 takes at full opacity, for the legend.

    Returns
    -------
    numpy.ndarray
        uint8 (steps, 3), coolest first.
    """
    heat = np.linspace(HEAT_FLOOR, 1.0, steps, dtype=np.float32)
    return np.round(jet(heat * _JET_TOP) * 255.0).astype(np.uint8)


def _quantised(values: np.ndarray, top: int) -> np.ndarray:
    """Values in [0, 1] rounded to the integers 0..top, as int32."""
    scaled = np.clip(values, 0.0, 1.0).astype(np.float32, copy=False)  # a new array either way
    scaled *= top
    scaled += 0.5
    return scaled.astype(np.int32)


@cache
def _blend_table() -> np.ndarray:
    """uint8 (heat levels * 256, 3): the blended RGB at row ``heat level << 8 | grey``."""
    heat = np.linspace(0.0, 1.0, _HEAT_LEVELS, dtype=np.float32)
    opacity = np.clip((heat - HEAT_FLOOR) / (_HEAT_FULL - HEAT_FLOOR), 0.0, 1.0) * _MAX_OPACITY
    colour = jet(heat * _JET_TOP) * opacity[:, None]
    gray = np.arange(256, dtype=np.float32) / 255.0
    rgb = gray[None, :, None] * (1.0 - opacity)[:, None, None] + colour[:, None, :]
    return np.round(rgb * 255.0).astype(np.uint8).reshape(-1, 3)
