"""What Integrated Gradients costs beside Grad-CAM, and how many steps it needs.

On the shipped default package and the staged RSNA Pneumonia DICOMs (read as the node reads
them), per image and for the labels the node's IG capture explains (every label here, so both
maps of the two-label default): Grad-CAM's ms per image, Integrated Gradients' ms per image at
each step count, their ratio, and IG's convergence delta relative to the logit's change from
baseline to image (``|delta| / |f(x) - f(baseline)|``; completeness holds exactly at 0).
The predictor is the node's (float32 on the CPU); the first image of each method is a
warm-up, left out.

    .venv/bin/python benchmarks/explanations.py [--images 6] [--steps 8 16 32 64]
        [--package DIR] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.attribution import black_baseline, image_attributions  # noqa: E402
from models.default import bundled_default_package  # noqa: E402
from models.package import load_package  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.preprocess import image_file_to_display  # noqa: E402

RSNA = REPO.parent / "shared" / "data" / "rsna-pneumonia-sample" / "stage_1_train_images"


def _timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=None)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    predictor = Predictor(
        load_package(args.package or bundled_default_package()),
        device=args.device,
        num_threads=args.threads,
    )
    labels = list(range(predictor.n_labels))
    paths = sorted(RSNA.glob("*.dcm"))[: args.images + 1]
    prepared = [predictor.prepare([image_file_to_display(path)]) for path in paths]
    baseline = black_baseline(predictor)[None]
    with torch.inference_mode():
        base_logits = predictor.model(baseline)[0].cpu().numpy()
    gradcam = [_timed(lambda p=p: predictor.explain_on_grid(p, [labels]))[0] for p in prepared]
    gradcam_ms = statistics.median(gradcam[1:])
    print(
        f"package {predictor.package.config.package_id} on {predictor.device}, "
        f"{torch.get_num_threads()} threads, {len(paths) - 1} images x {len(labels)} labels"
    )
    print(f"Grad-CAM: {gradcam_ms:.0f} ms per image")
    print("IG steps | ms per image | x Grad-CAM | relative delta (median, max)")
    for steps in args.steps:
        times, relative = [], []
        for p in prepared:
            ms, (result,) = _timed(
                lambda p=p, s=steps: image_attributions(predictor, p, [labels], s)
            )
            with torch.inference_mode():
                logits = predictor.model(p.images)[0].cpu().numpy()
            change = np.abs(logits[labels] - base_logits[labels])
            relative.extend(np.abs(result.delta) / np.maximum(change, 1e-6))
            times.append(ms)
        ms = statistics.median(times[1:])
        print(
            f"{steps:8d} | {ms:12.0f} | {ms / gradcam_ms:10.1f} | "
            f"{np.median(relative[len(labels) :]):.3f}, {np.max(relative[len(labels) :]):.3f}"
        )


if __name__ == "__main__":
    main()
