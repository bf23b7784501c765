"""Predictor: batched probabilities and Grad-CAM maps on the display's own pixel grid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from models.default import reference_config
from models.network import CxrClassifier, build_model
from models.package import LoadedPackage
from models.predictor import Predictor
from models.preprocess import dicom_to_display, to_model_input

MASS = 9  # index of "Mass" in NIH_CHESTXRAY14


def _displays(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(256, 256), (300, 200), (180, 240), (256, 320)]
    return [rng.random(shapes[i % len(shapes)], dtype=np.float32) for i in range(count)]


def test_probabilities_are_in_unit_range_with_one_per_label(predictor: Predictor):
    predictions = predictor.predict(_displays(3))
    assert len(predictions) == 3
    probabilities = np.stack([p.probabilities for p in predictions])
    assert probabilities.shape == (3, 14) and probabilities.dtype == np.float32
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert predictions[0].embedding.shape == (512,)


def test_present_is_probability_at_or_above_each_threshold(predictor: Predictor):
    thresholds = np.array(predictor.package.config.thresholds)
    for prediction in predictor.predict(_displays(2)):
        np.testing.assert_array_equal(prediction.present, prediction.probabilities >= thresholds)


def test_untrained_reference_spreads_probabilities_around_the_threshold(predictor: Predictor):
    probabilities = predictor.predict(_displays(1))[0].probabilities
    assert probabilities.min() < 0.4 and probabilities.max() > 0.6
    assert not np.allclose(probabilities, 0.5, atol=0.02)


def test_a_batch_predicts_what_each_image_predicts_alone(predictor: Predictor):
    displays = _displays(4)
    batch = predictor.predict(displays)
    for display, batched in zip(displays, batch, strict=True):
        alone = predictor.predict([display])[0]
        np.testing.assert_allclose(batched.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_allclose(batched.embedding, alone.embedding, atol=1e-4)


def test_real_chest_images_predict(predictor: Predictor, shared_data: Path):
    paths = sorted(shared_data.glob("rsna-pneumonia-sample/stage_1_train_images/*.dcm"))[:3]
    displays = [dicom_to_display(pydicom.dcmread(path)) for path in paths]
    probabilities = np.stack([p.probabilities for p in predictor.predict(displays)])
    assert probabilities.shape == (3, 14) and np.isfinite(probabilities).all()


def test_image_only_model_accepts_and_ignores_reports(predictor: Predictor):
    displays = _displays(2)
    without = predictor.predict(displays)
    with_reports = predictor.predict(displays, ["No acute disease.", None])
    for a, b in zip(without, with_reports, strict=True):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        predictor.predict(displays, ["only one"])


def test_no_images_no_predictions(predictor: Predictor):
    assert predictor.predict([]) == []


def test_maps_are_per_label_on_the_display_grid_and_in_unit_range(predictor: Predictor):
    display = _displays(2)[1]  # 300 x 200: not square
    maps = predictor.explain(display, [0, 4, 13])
    assert maps.shape == (3, 300, 200) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert predictor.explain(display, []).shape == (0, 300, 200)


def test_explaining_a_label_that_does_not_exist_is_refused(predictor: Predictor):
    with pytest.raises(IndexError, match="out of range"):
        predictor.explain(_displays(1)[0], [14])


def test_explain_leaves_no_gradient_state_behind(predictor: Predictor):
    grad_mode = torch.is_grad_enabled()
    predictor.explain(_displays(1)[0], [1, 2])
    assert torch.is_grad_enabled() == grad_mode
    model = predictor.model
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert not model.training
    assert not model.target_layer()._forward_hooks  # Grad-CAM hooks removed
    predictor.predict(_displays(1))  # still usable for plain inference


# --- Grad-CAM points at the lesion --------------------------------------------------------

HEIGHT, WIDTH = 224, 320  # deliberately not square: the map must come back unstretched
BLOB_SIGMA = 14.0


def _scene(rng: np.random.Generator, blob_at: tuple[int, int] | None) -> np.ndarray:
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = 0.3 + 0.1 * rng.random() + 0.05 * rng.standard_normal((HEIGHT, WIDTH))
    if blob_at is not None:
        distance2 = (rows - blob_at[0]) ** 2 + (cols - blob_at[1]) ** 2
        image = image + 0.6 * np.exp(-distance2 / (2 * BLOB_SIGMA**2))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _fit_blob_detector(model: CxrClassifier, rng: np.random.Generator, label: int) -> None:
    """Make ``label`` respond to a bright blob: a linear probe of the last conv block.

    Each cell of the encoder's output grid is a sample, labelled by whether the blob centre
    falls in it; the probe's weights become the label's row of the (linear) output layer, so
    the image-level logit is the mean cell score. No gradient goes through the encoder, which
    keeps this to a few seconds on a CPU.
    """
    spec = reference_config().preprocessing
    centres = [
        (int(rng.integers(24, HEIGHT - 24)), int(rng.integers(24, WIDTH - 24))) for _ in range(16)
    ]
    images = torch.stack([to_model_input(_scene(rng, at), spec) for at in centres])
    with torch.no_grad():
        activations = model.encoder(images)  # (N, C, g, g)
    grid = activations.shape[-1]
    is_blob = torch.zeros(len(centres), grid, grid)
    for i, (row, col) in enumerate(centres):
        is_blob[i, row * grid // HEIGHT, col * grid // WIDTH] = 1.0
    cells = activations.permute(0, 2, 3, 1).reshape(-1, activations.shape[1])
    mean, std = cells.mean(0), cells.std(0) + 1e-6
    probe = torch.nn.Linear(cells.shape[1], 1)
    optimiser = torch.optim.Adam(probe.parameters(), lr=0.05)
    targets = is_blob.reshape(-1)
    balance = (targets == 0).sum() / targets.sum()
    for _ in range(200):
        logits = probe((cells - mean) / std)[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=balance
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        weights = probe.weight[0] / std
        model.output_layer.weight[label] = weights
        model.output_layer.bias[label] = probe.bias[0] - (weights * mean).sum()


def test_gradcam_peaks_on_the_lesion_the_label_responds_to():
    config = reference_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model({**config.architecture, "hidden_dim": 0}, len(config.labels))
    model.eval()
    rng = np.random.default_rng(0)
    _fit_blob_detector(model, rng, MASS)
    config = replace(config, architecture=model.architecture)
    predictor = Predictor(LoadedPackage(config, model, Path("synthetic")), device="cpu")

    # One encoder cell is 32 x 46 display pixels; the peak must fall within about one cell.
    tolerance = 0.25 * min(HEIGHT, WIDTH)
    for blob_at in [(60, 80), (60, 250), (165, 90), (160, 240), (112, 160)]:
        scene = _scene(rng, blob_at)
        heatmap = predictor.explain(scene, [MASS])[0]
        assert heatmap.shape == (HEIGHT, WIDTH)
        peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        distance = float(np.hypot(peak[0] - blob_at[0], peak[1] - blob_at[1]))
        assert distance < tolerance, f"blob at {blob_at}, map peaks at {peak}"
