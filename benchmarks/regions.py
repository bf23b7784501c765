"""Do the node's Grad-CAM regions mean something? Measured on the staged images with localised
labels: the 12 RSNA Pneumonia DICOMs (lung-opacity boxes on 2 of them), and the NIH images of
the 512 px set that NIH's ``BBox_List_2017`` boxes (39 Pneumonia boxes; coordinates halved to
the staged size; the Pneumonia label's map is measured against them).

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

    .venv/bin/python benchmarks/regions.py [--package DIR ...] [--cam-stride 32 --cam-stride 16]
        [--config TRAINING_CONFIG] [--level 0.5] [--json OUT]
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
from training.explanations import box_mask  # noqa: E402
from training.explanations import read_rsna_boxes as rsna_boxes  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
RSNA = SHARED / "rsna-pneumonia-sample"
NIH512 = SHARED / "nih-chestxray14-1000-darkcovidnet"
NIH_BOXES = SHARED / "nih-chestxray14-samples" / "BBox_List_2017.csv.gz"


def nih_pneumonia_boxes(scale: float = 0.5) -> dict[str, list[tuple[float, float, float, float]]]:
    """NIH's Pneumonia boxes of the images in the 512 px set, scaled to the staged size."""
    import gzip

    with (NIH512 / "labels.csv").open() as handle:
        paths = {row["Image Index"]: row["path"] for row in csv.DictReader(handle)}
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    with gzip.open(NIH_BOXES, "rt") as handle:
        for row in csv.reader(handle):
            if row[0] in paths and row[1] == "Pneumonia":
                x, y, w, h = (float(v) * scale for v in row[2:6])
                boxes.setdefault(paths[row[0]], []).append((x, y, w, h))
    return boxes


def measure(
    package_dir: Path,
    level: float,
    folder: Path = RSNA,
    cam_stride: int | None = None,
    test_images: set[Path] | None = None,
) -> dict:
    """Region figures of one package on the RSNA sample (Grad-CAM at the package's own layer,
    or at ``cam_stride``, which changes only the explanation)."""
    package = load_package(package_dir)
    if cam_stride is not None:
        package.model.image_encoder.cam_stride = cam_stride
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
                "border": region.touches_border(display.shape),
                "area": round(float(mask.mean()), 4),
                "iou": None
                if target is None
                else float((mask & target).sum() / (mask | target).sum()),
                "peak_in_box": None if target is None else bool(target[peak_row, peak_col]),
            }
            figures["all"].append(entry)
            if prediction.probabilities[index] >= label.threshold:
                figures["present"].append(entry)
    nih = []
    # The Pneumonia label's map; a package without one (normal/abnormal) is measured by its
    # Abnormal map, as every NIH image with a Pneumonia box is abnormal.
    names = [label.name for label in labels]
    pneumonia = next((names.index(n) for n in ("Pneumonia", "Abnormal") if n in names), None)
    if pneumonia is not None and NIH_BOXES.exists():
        for relative, image_boxes in sorted(nih_pneumonia_boxes().items()):
            display = image_file_to_display(NIH512 / relative)
            (prediction,) = predictor.predict([display])
            (heat,) = predictor.explain(display, [pneumonia])
            probability = float(prediction.probabilities[pneumonia])
            region = heat_region(heat, names[pneumonia], probability, level)
            if region is None:
                continue
            mask, target = region.mask(display.shape), box_mask(display.shape, image_boxes)
            peak_col, peak_row = (int(v) for v in region.peak)
            nih.append(
                {
                    "image": relative,
                    "probability": round(probability, 4),
                    "present": probability >= labels[pneumonia].threshold,
                    "border": region.touches_border(display.shape),
                    "area": round(float(mask.mean()), 4),
                    "iou": float((mask & target).sum() / (mask | target).sum()),
                    "peak_in_box": bool(target[peak_row, peak_col]),
                }
            )
    figures["nih_pneumonia_boxes"] = nih
    if test_images is not None:
        figures["nih_pneumonia_boxes_test"] = [
            e for e in nih if (NIH512 / e["image"]).resolve() in test_images
        ]
    stride = package.model.image_encoder.cam_stride
    return {
        "package": package.config.package_id,
        "level": level,
        "cam_stride": stride,
        **summarise(figures),
    }


KINDS = ("present", "all", "nih_pneumonia_boxes", "nih_pneumonia_boxes_test")


def test_part(config_path: Path) -> set[Path]:
    """The images of a training config's test part (the split is a function of the config)."""
    from training.config import load_run_config
    from training.run import _splits

    config = load_run_config(config_path)
    parts, _ = _splits(config, config.read_data())
    return {sample.image.resolve() for sample in parts["test"] if sample.image is not None}


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
    parser.add_argument(
        "--cam-stride", type=int, action="append", help="measure at this Grad-CAM stride (32, 16)"
    )
    parser.add_argument(
        "--config", type=Path, help="the package's training config: NIH test images apart"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    test_images = test_part(args.config) if args.config else None
    packages = args.package or sorted((REPO / "models" / "bundled").iterdir())
    strides = args.cam_stride or [None]
    results = [
        measure(path, args.level, cam_stride=s, test_images=test_images)
        for path in packages
        for s in strides
    ]
    for result in results:
        print(
            f"\n{result['package']} (Grad-CAM stride {result['cam_stride']}, "
            f"region level {result['level']})"
        )
        for kind in [k for k in result if k in KINDS]:
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
