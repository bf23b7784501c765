"""The trained default package shipped with cxrnode: present, verified, honest about itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.default import bundled_default_package
from models.package import CARD_FILE, load_package
from models.predictor import Predictor
from models.preprocess import image_file_to_display


def test_the_bundled_default_is_a_verified_trained_package_with_its_card() -> None:
    path = bundled_default_package()
    package = load_package(path)  # checks files, config and the weights' sha256
    config = package.config
    assert config.trained and config.label_vocabulary == "normal-abnormal"
    assert "not a medical device" in config.disclaimer
    assert "NIH ChestX-ray14" in config.training_data
    card = (path / CARD_FILE).read_text()
    for heading in ("## Training data", "## Test metrics", "AUROC (95% CI)", "## Limits"):
        assert heading in card
    # Its operating threshold was chosen on validation data, not left at 0.5.
    assert config.labels[0].threshold != 0.5


def test_the_bundled_default_serves_a_real_chest_dicom(shared_data: Path) -> None:
    dicom = next((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    predictor = Predictor(load_package(bundled_default_package()), device="cpu")
    (prediction,) = predictor.predict([image_file_to_display(dicom)])
    assert prediction.probabilities.shape == (1,)
    assert 0.0 <= float(prediction.probabilities[0]) <= 1.0
    (heatmap,) = predictor.explain(image_file_to_display(dicom), [0])
    assert np.isfinite(heatmap).all()
