"""Do the node's Grad-CAM regions mean something? Measured on the 12 RSNA Pneumonia DICOMs,
the only staged images with localised labels (lung-opacity boxes on 6 of them).

For every image and label the package calls present (probability at or above its threshold),
the node's own route makes the region: ``models.preprocess.image_file_to_display``, the
predictor's Grad-CAM upsampled to the source grid, ``node.results.region.heat_region`` at the
node's default level. Printed per package:

- **border share**: regions whose outline touches the image's edge (a map piled up in a corner
  touches it; a region on a lung rarely does);
- **box IoU**: intersection over union of each region with the union of its image's opacity
  boxes, on images that have boxes, and **peak in box**: the Grad-CAM peak inside a box;
- the same for every label's map whatever the call (``all maps``), so a model that calls
  nothing present is still measured.

    .venv/bin/python benchmarks/regions.py [--package DIR ...] [--level 0.5] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.package import load_package  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.preprocess import image_file_to_display  # noqa: E402
from node.results.region import DEFAULT_REGION_LEVEL, heat_region  # noqa: E402

RSNA = REPO.parent / "shared" / "data" / "rsna-pneumonia-sample"


def rsna_boxes(folder: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """Opacity boxes (x, y, width, height) of each patient; empty for Target 0."""
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    with (folder / "example_train_labels.csv").open() as handle:
        for row in csv.DictReader(handle):
            entry = boxes.setdefault(row["patientId"], [])
            if row["Target"] == "1":
                entry.append(tuple(float(row[k]) for k in ("x", "y", "width", "height")))
    return boxes


def box_mask(shape: tuple[int, int], boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
    return mask


def touches_border(bounds: tuple[float, float, float, float], shape: tuple[int, int]) -> bool:
    left, top, right, bottom = bounds
    rows, cols = shape
    return left <= 1.0 or top <= 1.0 or right >= cols - 1.0 or bottom >= rows - 1.0


def measure(package_dir: Path, level: float, folder: Path = RSNA) -> dict:
    """Region figures of one package on the RSNA sample."""
    package = load_package(package_dir)
    predictor = Predictor(package, device="cpu")
    labels = package.config.labels
    boxes = rsna_boxes(folder)
    figures: dict[str, list] = {"present": [], "all": []}
    for patient, patient_boxes in sorted(boxes.items()):
        path = folder / "stage_1_train_images" / f"{patient}.dcm"
        if not path.exists():  # the label file lists the images kept aside too
            continue
        display = image_file_to_display(path)
        (prediction,) = predictor.predict([display])
        maps = predictor.explain(display, list(range(len(labels))))
        target = box_mask(display.shape, patient_boxes) if patient_boxes else None
        for index, label in enumerate(labels):
            region = heat_region(
                maps[index], label.name, float(prediction.probabilities[index]), level
            )
            if region is None:
                continue
            mask = region.mask(display.shape)
            peak_col, peak_row = (int(v) for v in region.peak)
            entry = {
                "patient": patient,
                "label": label.name,
                "probability": round(float(prediction.probabilities[index]), 4),
                "border": touches_border(region.bounds, display.shape),
                "area": round(float(mask.mean()), 4),
                "iou": None
                if target is None
                else float((mask & target).sum() / (mask | target).sum()),
                "peak_in_box": None if target is None else bool(target[peak_row, peak_col]),
            }
            figures["all"].append(entry)
            if prediction.probabilities[index] >= label.threshold:
                figures["present"].append(entry)
    return {"package": package.config.package_id, "level": level, **summarise(figures)}


def summarise(figures: dict[str, list]) -> dict:
    summary = {}
    for kind, entries in figures.items():
        boxed = [e for e in entries if e["iou"] is not None]
        summary[kind] = {
            "regions": len(entries),
            "border_share": _mean([e["border"] for e in entries]),
            "regions_on_boxed_images": len(boxed),
            "box_iou_mean": _mean([e["iou"] for e in boxed]),
            "peak_in_box_share": _mean([e["peak_in_box"] for e in boxed]),
            "area_mean": _mean([e["area"] for e in entries]),
        }
    summary["regions_detail"] = figures["present"]
    return summary


def _mean(values: list) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, action="append", default=[])
    parser.add_argument("--level", type=float, default=DEFAULT_REGION_LEVEL)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    packages = args.package or sorted((REPO / "models" / "bundled").iterdir())
    results = [measure(path, args.level) for path in packages]
    for result in results:
        print(f"\n{result['package']} (region level {result['level']})")
        for kind in ("present", "all"):
            s = result[kind]
            print(
                f"  {kind:>7} maps: {s['regions']:3d} regions, border share {s['border_share']}, "
                f"on boxed images {s['regions_on_boxed_images']}: box IoU {s['box_iou_mean']}, "
                f"peak in box {s['peak_in_box_share']}, mean area {s['area_mean']}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
