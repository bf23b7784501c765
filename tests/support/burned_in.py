"""Where a capture's burned-in text and legend lie, found in its pixels.

The node draws its text and colour scale on semi-opaque dark panels (`node.results.annotation`)
over the display image with the heatmap blended in. A panel pixel is therefore the node's blend
of the source's display grey (some heat level, possibly none) darkened by the panel's alpha, and
exactly that: the test computes every colour a pixel of a given grey can take under a panel
(`node.results.heatmap.blend_heatmap` at every heat level, composited under the panel colour)
and labels the pixels that have one of them. Each large connected set of such pixels is part of
a panel, parts close together (an outline drawn across a panel cuts it) are one panel, and its
bounding box is what the panel covers. Nothing is read from the layout code: a panel moved,
resized or dropped shows in the boxes.
"""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image
from scipy import ndimage

from node.results.annotation import _PANEL
from node.results.heatmap import blend_heatmap

Box = tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive

# A panel smaller than this share of the image is not text (a stray pixel whose colour happens
# to be a darkened one): the smallest panel, one line of 12 px text, is well above it.
_MIN_PANEL_SHARE = 2e-4
_HEAT_LEVELS = 4096
# Parts of one panel cut by an outline lie this close (the outline's width and its antialiasing);
# separate panels lie at least a margin plus a viewer zone apart.
_GAP = 8


def burned_in_boxes(capture: np.ndarray, display: np.ndarray) -> list[Box]:
    """The boxes of a capture's burned-in panels (text blocks, colour scale), largest first.

    Parameters
    ----------
    capture : numpy.ndarray
        uint8 (rows, cols, 3), the capture's pixels as stored.
    display : numpy.ndarray
        float (rows, cols) in [0, 1]: the source's display image on the same grid, as the node
        computed it (``models.preprocess.dicom_to_display``).

    Returns
    -------
    list of (left, top, right, bottom)
        Image pixels, right and bottom exclusive.
    """
    if capture.shape[:2] != display.shape:
        raise ValueError(f"capture {capture.shape} and display {display.shape} differ in size")
    grey = blend_heatmap(display, None)[..., 0]
    packed = _packed(capture)
    panel = np.zeros(grey.shape, dtype=bool)
    under = _darkened_blends()
    order = np.argsort(grey, axis=None, kind="stable")
    bounds = np.searchsorted(grey.ravel()[order], np.arange(257))
    for level in range(256):
        pixels = order[bounds[level] : bounds[level + 1]]
        if pixels.size:
            panel.ravel()[pixels] = np.isin(packed.ravel()[pixels], under[level])
    labels, count = ndimage.label(panel, structure=np.ones((3, 3), dtype=bool))
    sizes = ndimage.sum_labels(panel, labels, index=np.arange(1, count + 1))
    smallest = _MIN_PANEL_SHARE * panel.size
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is not None and sizes[index - 1] >= smallest:
            rows, cols = found
            boxes.append((cols.start, rows.start, cols.stop, rows.stop))
    return sorted(_joined(boxes), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def _joined(boxes: list[Box]) -> list[Box]:
    """Boxes within `_GAP` of each other joined into one: an outline drawn across a panel (the
    panel darkens it, but it is no panel colour) cuts the panel in parts."""
    boxes = list(boxes)
    joined = True
    while joined:
        joined = False
        for i, j in itertools.combinations(range(len(boxes)), 2):
            a, b = boxes[i], boxes[j]
            if (
                a[0] <= b[2] + _GAP
                and b[0] <= a[2] + _GAP
                and a[1] <= b[3] + _GAP
                and b[1] <= a[3] + _GAP
            ):
                boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                del boxes[j]
                joined = True
                break
    return boxes


def _darkened_blends() -> list[np.ndarray]:
    """Per display grey (0..255), the sorted colours (packed) its pixel takes under a panel at
    some heat level and at none without one."""
    grey = np.repeat((np.arange(256, dtype=np.float32) / 255.0)[:, None], _HEAT_LEVELS, axis=1)
    heat = np.repeat(np.linspace(0.0, 1.0, _HEAT_LEVELS, dtype=np.float32)[None], 256, axis=0)
    blended = blend_heatmap(grey, heat)
    darkened = np.asarray(
        Image.alpha_composite(
            Image.fromarray(blended).convert("RGBA"),
            Image.new("RGBA", (_HEAT_LEVELS, 256), _PANEL),
        ).convert("RGB")
    )
    under, bare = _packed(darkened), _packed(blended)
    # A colour the grey also takes without a panel (at some heat) tells nothing either.
    return [np.setdiff1d(under[level], bare[level]) for level in range(256)]


def _packed(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
