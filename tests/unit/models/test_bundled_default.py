"""The trained default package shipped with cxrnode: present, verified, honest about itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.default import bundled_default_package
from models.encoders.image import input_statistics
from models.package import CARD_FILE, load_package
from models.predictor import Predictor
from models.preprocess import image_file_to_display


def test_the_bundled_default_is_a_verified_trained_package_with_its_card() -> None:
    path = bundled_default_package()
    package = load_package(path)  # checks files, config and the weights' sha256
    config = package.config
    assert config.trained and config.label_vocabulary == "abnormal-pneumonia"
    assert "not a medical device" in config.disclaimer
    for source in ("NIH ChestX-ray14", "Kermany", "CC BY 4.0"):
        assert source in config.training_data
    # ImageNet-initialised, and normalised as its weights were trained (127/128, not ImageNet's).
    assert config.architecture["image_encoder"] == "efficientnet_lite0"
    assert config.architecture["image_weights"] == "imagenet"
    assert config.preprocessing.mean == input_statistics("efficientnet_lite0")[0]
    card = (path / CARD_FILE).read_text()
    for heading in (
        "## Training data",
        "## Test metrics",
        "AUROC (95% CI)",
        "### Test metrics by source",
        "### View-position check",
        "### External checks",
        "Apache-2.0",
        "## Limits",
    ):
        assert heading in card
    # Its operating thresholds were chosen on validation data, not left at 0.5.
    assert all(label.threshold != 0.5 for label in config.labels)


def test_the_bundled_default_serves_a_real_chest_dicom(shared_data: Path) -> None:
    dicom = next((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    predictor = Predictor(load_package(bundled_default_package()), device="cpu")
    (prediction,) = predictor.predict([image_file_to_display(dicom)])
    assert prediction.probabilities.shape == (2,)
    assert ((prediction.probabilities >= 0.0) & (prediction.probabilities <= 1.0)).all()
    heatmaps = predictor.explain(image_file_to_display(dicom), [0, 1])
    assert heatmaps.shape[0] == 2 and np.isfinite(heatmaps).all()
