"""The display image in gray with the Grad-CAM heatmap blended in where it is hot, and the
heatmap as the worker hands it over: at the model's grid, drawn onto the source grid here."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class GridHeatmap:
    """A Grad-CAM map at the model's grid, and where on the source image the model looked.

    What the worker hands a builder process: a few hundred bytes, where the same map on a 1024²
    source is 4 MB of float32. `on_source_grid` draws it as the predictor's
    ``explain_many`` would (bilinear with half-pixel centres, as torch's
    ``align_corners=False``, then rescaled to [0, 1]), within float rounding.

    Attributes
    ----------
    grid : numpy.ndarray
        float32 (h, w) in [0, 1], the target layer's grid (``models.predictor.CamGrid``).
    shape : tuple of int
        The source's (rows, columns).
    region : tuple of int
        (top, left, rows, columns) of the source the model saw; the map is 0 outside it.
    """

    grid: np.ndarray
    shape: tuple[int, int]
    region: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        top, left, rows, cols = self.region
        if self.grid.ndim != 2 or min(self.grid.shape) < 1:
            raise ValueError(f"GridHeatmap.grid has shape {self.grid.shape}, not (h, w)")
        if min(rows, cols) < 1 or top < 0 or left < 0:
            raise ValueError(f"GridHeatmap.region {self.region} is empty or negative")
        if top + rows > self.shape[0] or left + cols > self.shape[1]:
            raise ValueError(f"GridHeatmap.region {self.region} leaves the image {self.shape}")

    def on_source_grid(self) -> np.ndarray:
        """float32 (rows, columns) in [0, 1] on the source grid, 0 outside the region."""
        top, left, rows, cols = self.region
        grid = np.nan_to_num(self.grid.astype(np.float32), nan=0.0)
        # Separably, along the grid's columns, then down its rows: whole rows gathered keep
        # the map C-ordered (the blend and the region read it flat), and a matrix product
        # with a 7-wide inner dimension is several times slower than these gathers.
        low, high, weight = _bilinear_taps(cols, grid.shape[1])
        wide = grid[:, low] * (1.0 - weight) + grid[:, high] * weight
        low, high, weight = _bilinear_taps(rows, grid.shape[0])
        heat, step = wide[low], wide[high]
        step -= heat
        step *= weight[:, None]
        heat += step
        heat -= heat.min()
        # As models.gradcam and the predictor: interpolation may miss the grid's peak.
        heat /= heat.max() + np.float32(1e-7)
        np.clip(heat, 0.0, 1.0, out=heat)
        if (rows, cols) == self.shape:
            return heat
        whole = np.zeros(self.shape, dtype=np.float32)
        whole[top : top + rows, left : left + cols] = heat
        return whole


@cache
def _bilinear_taps(size: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two grid cells each of ``size`` output pixels interpolates, and the second's
    weight, at torch's ``align_corners=False`` source index ``(i + 0.5) * grid / size - 0.5``
    (clamped to the grid)."""
    scale = np.float32(grid) / np.float32(size)
    source = np.maximum((np.arange(size, dtype=np.float32) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(source.astype(np.int64), grid - 1)
    high = np.minimum(low + 1, grid - 1)
    weight = (source - low).astype(np.float32)
    for array in (low, high, weight):
        array.setflags(write=False)
    return low, high, weight


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
        float in [0, 1], shape (rows, cols), MONOCHROME2 polarity, or its `display_levels`.
    heatmap : numpy.ndarray or None
        float in [0, 1], same shape; None renders the gray image alone.

    Returns
    -------
    numpy.ndarray
        uint8 of shape (rows, cols, 3), within one level of the exact blend.
    """
    gray = display.astype(np.int32) if display.dtype == np.uint8 else _quantised(display, 255)
    if heatmap is None:
        return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    index = _quantised(heatmap, _HEAT_LEVELS - 1)
    index <<= 8
    index |= gray
    return np.take(_blend_table(), index, axis=0)


def display_levels(display: np.ndarray) -> np.ndarray:
    """The display image's 256 grey levels, as `blend_heatmap` draws them: what the captures
    need of it, a quarter of the float32 image's bytes.

    Parameters
    ----------
    display : numpy.ndarray
        float in [0, 1], shape (rows, cols).

    Returns
    -------
    numpy.ndarray
        uint8 of the same shape.
    """
    return _quantised(display, 255).astype(np.uint8)


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
