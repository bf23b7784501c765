"""Explanations scored as seed 003 scores them, and against the boxes radiologists drew.

``cxrnode evaluate --explanations`` explains every label of every image of the evaluated set by
Grad-CAM and by Integrated Gradients (``models.attribution``), on the display image the node
would draw them on (read as the node reads it, ``models.preprocess.image_file_to_display``),
and reports:

- **agreement** of the two methods' maps, per (image, label), averaged: Pearson ρ over the
  pixels, and the IoU of each map's top 5% and top 20% pixels (seed 003's three figures, which
  its README gives as 0.9163, 0.5762 and 0.2519); and the same three at the resolution Grad-CAM
  has (both maps averaged over the cells of the model's feature grid, ``image_size /
  cam_stride`` a side), since seed 003 does not say at which resolution it compares, and a
  Grad-CAM map holds no detail finer than its grid while an IG map is pixel-level;
- **localisation**, on images with RSNA lung-opacity boxes (a ``rsna_pneumonia`` data reader
  over a folder with ``example_train_labels.csv``), for the Pneumonia label's maps (Abnormal's
  where the package has no Pneumonia): the share of each method's top 5% / 20% pixels that fall
  inside a box, the box area's share of the image beside it (what a map blind to the boxes
  would score), and the pointing game (the map's peak inside a box).

The top k% of a map are its ``ceil(k * pixels)`` highest pixels (ties at the cut broken as
``numpy.argpartition`` breaks them).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.attribution import DEFAULT_STEPS, explain
from models.package import LoadedPackage
from models.predictor import Predictor
from models.preprocess import image_file_to_display
from training.datasets import Sample

SEED_003 = {"pearson": 0.9163, "iou_top_5": 0.5762, "iou_top_20": 0.2519}
METHODS = ("gradcam", "integrated_gradients")
# Seed 003's three figures, at the display's pixels and on the model's feature grid.
AGREEMENT = tuple(
    f"{name}{suffix}" for suffix in ("", "_grid") for name in ("pearson", "iou_top_5", "iou_top_20")
)
TOP_FRACTIONS = (0.05, 0.20)
BOX_LABELS = ("Pneumonia", "Abnormal")  # the first the package has is measured on the boxes
Box = tuple[float, float, float, float]


def pearson(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two maps' pixels; NaN where either map is constant."""
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / norm) if norm > 0 else float("nan")


def on_grid(heat: np.ndarray, cells: int) -> np.ndarray:
    """A map averaged over ``cells`` x ``cells`` equal cells (an area-average resize)."""
    image = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    return np.asarray(image.resize((cells, cells), Image.Resampling.BOX), dtype=np.float32)


def top_pixels(heat: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of a map's ``ceil(fraction * pixels)`` highest pixels."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    flat = np.asarray(heat).ravel()
    count = math.ceil(fraction * flat.size)
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argpartition(-flat, count - 1)[:count]] = True
    return mask.reshape(np.shape(heat))


def top_iou(first: np.ndarray, second: np.ndarray, fraction: float) -> float:
    """Intersection over union of two maps' top ``fraction`` pixels."""
    a, b = top_pixels(first, fraction), top_pixels(second, fraction)
    return float((a & b).sum() / (a | b).sum())


def share_in_boxes(heat: np.ndarray, boxes: np.ndarray, fraction: float) -> float:
    """Share of a map's top ``fraction`` pixels that lie inside the boxes' mask."""
    top = top_pixels(heat, fraction)
    return float((top & boxes).sum() / top.sum())


def peak_in_boxes(heat: np.ndarray, boxes: np.ndarray) -> bool:
    """The pointing game: whether the map's highest pixel lies inside a box."""
    return bool(boxes.flat[int(np.argmax(heat))])


def read_rsna_boxes(folder: Path) -> dict[str, list[Box]]:
    """RSNA's lung-opacity boxes ``(x, y, width, height)`` per patient (empty for Target 0).

    Parameters
    ----------
    folder : pathlib.Path
        The RSNA folder holding ``example_train_labels.csv``.
    """
    boxes: dict[str, list[Box]] = {}
    with (folder / "example_train_labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry = boxes.setdefault(row["patientId"], [])
            if row["Target"] == "1":
                entry.append(tuple(float(row[k]) for k in ("x", "y", "width", "height")))  # type: ignore[arg-type]
    return boxes


def box_mask(shape: tuple[int, int], boxes: list[Box]) -> np.ndarray:
    """Boolean mask of an image of ``shape`` inside any of the boxes."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, width, height in boxes:
        mask[int(y) : math.ceil(y + height), int(x) : math.ceil(x + width)] = True
    return mask


def evaluate_explanations(
    package: LoadedPackage,
    samples: list[Sample],
    boxes: dict[str, list[Box]] | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    device: str | None = None,
) -> dict[str, Any]:
    """Score the agreement of Grad-CAM and Integrated Gradients, and their localisation.

    Parameters
    ----------
    package : LoadedPackage
        The model.
    samples : list of Sample
        The evaluated images (samples without an image are skipped).
    boxes : dict of str to list of box, optional
        Boxes by sample key (``read_rsna_boxes``); ``None`` measures agreement only.
    steps : int
        Integrated Gradients' steps.
    device : str or None
        As for :class:`models.predictor.Predictor`.

    Returns
    -------
    dict
        ``agreement`` (means over every image and label), ``localisation`` (per method, over
        the boxed images), the counts, the steps, and seed 003's figures.
    """
    predictor = Predictor(package, device=device)
    names = [label.name for label in package.config.labels]
    boxed_label = next((names.index(name) for name in BOX_LABELS if name in names), None)
    labels = list(range(len(names)))
    agreement: dict[str, list[float]] = {key: [] for key in AGREEMENT}
    architecture = package.config.architecture
    cells = max(1, package.config.preprocessing.image_size // architecture.get("cam_stride", 32))
    located: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
    box_area: list[float] = []
    images = 0
    for sample in samples:
        if sample.image is None:
            continue
        display = image_file_to_display(sample.image)
        prepared = predictor.prepare([display])
        (explanation,) = explain(predictor, prepared, [labels], METHODS, steps=steps)
        gradcam, ig = (explanation.maps[m] for m in METHODS)
        images += 1
        for slot in range(len(labels)):
            for suffix, first, second in (
                ("", gradcam[slot], ig[slot]),
                ("_grid", on_grid(gradcam[slot], cells), on_grid(ig[slot], cells)),
            ):
                agreement[f"pearson{suffix}"].append(pearson(first, second))
                for fraction in TOP_FRACTIONS:
                    key = f"iou_top_{round(fraction * 100)}{suffix}"
                    agreement[key].append(top_iou(first, second, fraction))
        sample_boxes = (boxes or {}).get(sample.key)
        if not sample_boxes or boxed_label is None:
            continue
        mask = box_mask(display.shape, sample_boxes)
        box_area.append(float(mask.mean()))
        for method in METHODS:
            heat = explanation.maps[method][boxed_label]
            scores = located[method]
            for fraction in TOP_FRACTIONS:
                key = f"top_{round(fraction * 100)}_in_box"
                scores.setdefault(key, []).append(share_in_boxes(heat, mask, fraction))
            scores.setdefault("pointing_game", []).append(float(peak_in_boxes(heat, mask)))
    return {
        "methods": list(METHODS),
        "integrated_gradients_steps": steps,
        "images": images,
        "labels": names,
        "agreement": {key: _mean(values) for key, values in agreement.items()},
        "grid_cells": cells,
        "localisation": {
            "label": None if boxed_label is None else names[boxed_label],
            "boxed_images": len(box_area),
            "box_share_of_image": _mean(box_area),
            **{m: {k: _mean(v) for k, v in scores.items()} for m, scores in located.items()},
        },
        "seed_003": SEED_003,
    }


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None


def explanations_report(package_id: str, figures: dict[str, Any]) -> str:
    """The figures as a Markdown table beside seed 003's, for ``explanations.md``."""
    agreement, located = figures["agreement"], figures["localisation"]
    lines = [
        f"# Explanations of {package_id}",
        "",
        f"{figures['images']} images x {len(figures['labels'])} labels, Grad-CAM against "
        f"Integrated Gradients ({figures['integrated_gradients_steps']} steps).",
        "",
        f"| Agreement | cxrnode, pixels | cxrnode, {figures['grid_cells']}² grid | seed 003 |",
        "|---|---|---|---|",
        *(
            f"| {name} | {_shown(agreement[key])} | {_shown(agreement[key + '_grid'])} | "
            f"{SEED_003[key]} |"
            for key, name in (
                ("pearson", "Pearson ρ"),
                ("iou_top_5", "IoU of the top 5%"),
                ("iou_top_20", "IoU of the top 20%"),
            )
        ),
    ]
    if located["boxed_images"]:
        lines += [
            "",
            f"Localisation of the {located['label']} maps on {located['boxed_images']} images "
            f"with RSNA opacity boxes (boxes cover {_shown(located['box_share_of_image'])} of "
            "the image):",
            "",
            "| | top 5% in box | top 20% in box | pointing game |",
            "|---|---|---|---|",
            *(
                f"| {method} | {_shown(located[method].get('top_5_in_box'))} | "
                f"{_shown(located[method].get('top_20_in_box'))} | "
                f"{_shown(located[method].get('pointing_game'))} |"
                for method in METHODS
            ),
        ]
    return "\n".join(lines) + "\n"


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
