"""The display image in gray with the Grad-CAM heatmap blended in where it is hot."""

from __future__ import annotations

import numpy as np

# Heat below this is not drawn at all, so anatomy outside the explanation stays untouched.
HEAT_FLOOR = 0.2
# Opacity grows linearly from the floor and reaches its maximum at this heat.
_HEAT_FULL = 0.5
_MAX_OPACITY = 0.6
# The jet ramp is sampled up to 0.875, where it is pure red: jet's last eighth darkens to
# maroon, which is hard to see on bright lung.
_JET_TOP = 0.875


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

    Parameters
    ----------
    display : numpy.ndarray
        float in [0, 1], shape (rows, cols), MONOCHROME2 polarity.
    heatmap : numpy.ndarray or None
        float in [0, 1], same shape; None renders the gray image alone.

    Returns
    -------
    numpy.ndarray
        uint8 of shape (rows, cols, 3).
    """
    gray = np.clip(display, 0.0, 1.0).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if heatmap is not None:
        heat = np.clip(heatmap, 0.0, 1.0).astype(np.float32)
        opacity = np.clip((heat - HEAT_FLOOR) / (_HEAT_FULL - HEAT_FLOOR), 0.0, 1.0)
        opacity = (opacity * _MAX_OPACITY)[..., None]
        rgb = rgb * (1.0 - opacity) + jet(heat * _JET_TOP) * opacity
    return np.round(rgb * 255.0).astype(np.uint8)


def legend_ramp(steps: int = 256) -> np.ndarray:
    """The colours heat from `HEAT_FLOOR` to 1 takes at full opacity, for the legend.

    Returns
    -------
    numpy.ndarray
        uint8 (steps, 3), coolest first.
    """
    heat = np.linspace(HEAT_FLOOR, 1.0, steps, dtype=np.float32)
    return np.round(jet(heat * _JET_TOP) * 255.0).astype(np.uint8)
