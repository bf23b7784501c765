"""The shipped default's Grad-CAM regions sit on the image, not in its corner.

The previous default (ResNet-18 from scratch at 128 px: a 4x4 last map, 12 of whose 16 cells
touch the edge) outlined every region along the image border on the RSNA studies. This holds the
bundled default to regions that stay off the border on real DICOMs through the node's own route
(``benchmarks/regions.py`` prints the full figures, box IoU included).
"""

from __future__ import annotations

from pathlib import Path

from models.default import bundled_default_package
from models.package import load_package
from models.predictor import Predictor
from models.preprocess import image_file_to_display
from node.results.region import heat_region


def test_default_regions_on_real_rsna_dicoms_stay_off_the_border(shared_data: Path):
    predictor = Predictor(load_package(bundled_default_package()), device="cpu")
    labels = predictor.package.config.labels
    touching, regions = 0, 0
    for path in sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*")):
        display = image_file_to_display(path)
        maps = predictor.explain(display, list(range(len(labels))))
        for label, heat in zip(labels, maps, strict=True):
            region = heat_region(heat, label.name, 1.0)
            if region is None:
                continue
            regions += 1
            touching += region.touches_border(display.shape)
    assert regions >= 20  # 12 images, 2 labels: (almost) every map has a region
    assert touching / regions <= 0.25, f"{touching} of {regions} regions touch the image border"
