"""Where a finding's Grad-CAM mass lies, as one polygon on the source image's pixel grid.

The SR (SCOORD), the presentation state (graphic annotation) and the captures (outline) all
draw the region computed here, so a radiologist sees the same outline in every viewer.

Coordinates are image coordinates in the DICOM sense shared by SCOORD (PS3.3 C.18.6.1.2) and
presentation-state PIXEL units (C.10.5.1.2): (column, row), (0, 0) at the top-left corner of
the first pixel, (Columns, Rows) at the bottom-right corner of the last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from pydicom.uid import generate_uid
from scipy import ndimage

from node.results.findings import ImageResult, ResultInputError

# The region is the heat at or above this fraction of the map's maximum: the "mass" of the
# explanation, not its faint tails. Configurable as ``region_level``.
DEFAULT_REGION_LEVEL = 0.5


@dataclass(frozen=True)
class HeatRegion:
    """The outline of one finding's Grad-CAM mass on one image.

    Attributes
    ----------
    finding : str
        Name of the finding the heatmap explains.
    probability : float
        The finding's probability, for labels.
    points : numpy.ndarray
        float32 (n, 2) closed polygon, (column, row) image coordinates; first point == last.
    peak : tuple of float
        (column, row) of the centre of the hottest pixel.
    level : float
        The fraction of the peak heat the outline encloses.
    """

    finding: str
    probability: float
    points: np.ndarray
    peak: tuple[float, float]
    level: float

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean (rows, cols) mask of the pixels whose centre lies inside the polygon."""
        rows, cols = shape
        canvas = Image.new("L", (cols, rows), 0)
        # PIL puts pixel (x, y)'s centre at (x, y); DICOM image coordinates put it at
        # (x + 0.5, y + 0.5).
        ImageDraw.Draw(canvas).polygon([(x - 0.5, y - 0.5) for x, y in self.points], fill=1)
        return np.asarray(canvas, dtype=bool)

    def touches_border(self, shape: tuple[int, int]) -> bool:
        """Whether the outline reaches (within a pixel) the edge of a (rows, cols) image."""
        left, top, right, bottom = self.bounds
        rows, cols = shape
        return left <= 1.0 or top <= 1.0 or right >= cols - 1.0 or bottom >= rows - 1.0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the polygon in image coordinates."""
        left, top = self.points.min(axis=0)
        right, bottom = self.points.max(axis=0)
        return float(left), float(top), float(right), float(bottom)


def heat_region(
    heatmap: np.ndarray,
    finding: str,
    probability: float,
    level: float = DEFAULT_REGION_LEVEL,
) -> HeatRegion | None:
    """Outline the connected heat around the map's peak at or above ``level`` times the peak.

    The outline is the convex hull of that connected mass (pixel corners included), so it
    always contains the peak and every pixel of the mass; a second, separate hot spot is left
    out rather than bridged over healthy lung.

    Parameters
    ----------
    heatmap : numpy.ndarray
        float (rows, cols) Grad-CAM map on the source pixel grid.
    finding : str
        The finding it explains.
    probability : float
        The finding's probability.
    level : float
        In (0, 1].

    Returns
    -------
    HeatRegion or None
        None when the map is flat (no heat at all).

    Raises
    ------
    ResultInputError
        If ``level`` is outside (0, 1] or the map is not 2-D.
    """
    if not 0.0 < level <= 1.0:
        raise ResultInputError(f"region level is {level}, expected a fraction in (0, 1]")
    if heatmap.ndim != 2:
        raise ResultInputError(f"heatmap of {finding!r} has shape {heatmap.shape}, not 2-D")
    peak_value = float(heatmap.max())
    if not np.isfinite(peak_value) or peak_value <= 0.0:
        return None
    peak_row, peak_col = divmod(int(np.argmax(heatmap)), heatmap.shape[1])
    mass = _connected_from(heatmap >= level * peak_value, (peak_row, peak_col))
    return HeatRegion(
        finding=finding,
        probability=float(probability),
        points=_hull_of_mask(mass),
        peak=(peak_col + 0.5, peak_row + 0.5),
        level=level,
    )


def finding_regions(image: ImageResult, level: float = DEFAULT_REGION_LEVEL) -> list[HeatRegion]:
    """The region of every present finding that has a heatmap, highest probability first."""
    cached = image.regions_cache.get(level)
    if cached is not None:
        return list(cached)
    present = sorted(
        (f for f in image.findings if f.present and f.name in image.heatmaps),
        key=lambda f: f.probability,
        reverse=True,
    )
    regions = (heat_region(image.heatmap(f.name), f.name, f.probability, level) for f in present)
    found = [region for region in regions if region is not None]
    image.regions_cache[level] = found
    return list(found)


def tracking_uid(report_uid: str, image_uid: str, finding: str) -> str:
    """The tracking UID of one finding on one image in one run's results (SR and GSPS alike)."""
    return generate_uid(entropy_srcs=[report_uid, image_uid, finding])


def _connected_from(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of ``mask`` containing ``seed`` (row, col)."""
    # scipy labels a 1024^2 mask in milliseconds; PIL's floodfill, in Python, took 0.7 s.
    labels, _ = ndimage.label(mask)
    return labels == labels[seed]


def _hull_of_mask(mask: np.ndarray) -> np.ndarray:
    """Closed convex hull of the mask's pixel squares, (column, row) image coordinates."""
    rows = np.flatnonzero(mask.any(axis=1))
    lefts = np.argmax(mask[rows], axis=1)
    rights = mask.shape[1] - np.argmax(mask[rows, ::-1], axis=1)
    # Each row's extreme pixels contribute their outer corners; interior pixels cannot be
    # hull vertices.
    candidates = np.concatenate(
        [
            np.stack([lefts, rows], axis=1),
            np.stack([lefts, rows + 1], axis=1),
            np.stack([rights, rows], axis=1),
            np.stack([rights, rows + 1], axis=1),
        ]
    )
    hull = _convex_hull(candidates)
    return np.asarray([*hull, hull[0]], dtype=np.float32)


def _convex_hull(points: np.ndarray) -> list[tuple[int, int]]:
    """Andrew's monotone chain; counter-clockwise on screen, no collinear vertices."""
    unique = sorted({(int(x), int(y)) for x, y in points})
    if len(unique) < 3:
        return unique

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(ordered: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for point in ordered:
            while len(out) >= 2 and cross(out[-2], out[-1], point) <= 0:
                out.pop()
            out.append(point)
        return out

    lower, upper = chain(unique), chain(unique[::-1])
    return lower[:-1] + upper[:-1]
