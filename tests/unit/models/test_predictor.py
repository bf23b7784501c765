"""Predictor: batched probabilities with and without reports, Grad-CAM maps on the display grid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from models import predictor as predictor_module
from models.default import reference_config
from models.gradcam import grad_cam
from models.network import CxrClassifier, build_model
from models.package import LoadedPackage
from models.predictor import Predictor
from models.preprocess import dicom_to_display, to_model_input
from models.text import ReportText

MASS = 9  # index of "Mass" in NIH_CHESTXRAY14
REPORTS = [
    "FINDINGS: Heart size normal. Lungs clear. IMPRESSION: No acute disease.",
    None,
    "FINDINGS: Large right pleural effusion with basilar atelectasis. "
    "IMPRESSION: Effusion. Recommend follow-up XXXX XXXX.",
]


def _displays(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(256, 256), (300, 200), (180, 240), (256, 320)]
    return [rng.random(shapes[i % len(shapes)], dtype=np.float32) for i in range(count)]


def _package(architecture: dict, *, seed: int = 0, image_size: int = 224) -> LoadedPackage:
    config = reference_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(architecture, len(config.labels)).eval()
    config = replace(
        config,
        architecture=model.architecture,
        preprocessing=replace(config.preprocessing, image_size=image_size),
    )
    return LoadedPackage(config, model, Path("synthetic"))


@pytest.fixture(scope="module")
def image_only() -> Predictor:
    return Predictor(_package({"image_encoder": "resnet18"}), device="cpu")


def test_probabilities_are_in_unit_range_with_one_per_label(predictor: Predictor):
    predictions = predictor.predict(_displays(3))
    assert len(predictions) == 3
    probabilities = np.stack([p.probabilities for p in predictions])
    assert probabilities.shape == (3, 14) and probabilities.dtype == np.float32
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_each_study_comes_with_its_embeddings(predictor: Predictor):
    first, second, third = predictor.predict(_displays(3), REPORTS)
    assert first.embedding.shape == (512 + 384,) and first.image_embedding.shape == (512,)
    assert first.text_embedding.shape == (384,) and first.text_used
    assert second.text_embedding is None and not second.text_used
    assert not np.allclose(first.text_embedding, third.text_embedding)


def test_present_is_probability_at_or_above_each_threshold(predictor: Predictor):
    thresholds = np.array(predictor.package.config.thresholds)
    for prediction in predictor.predict(_displays(2)):
        np.testing.assert_array_equal(prediction.present, prediction.probabilities >= thresholds)


def test_untrained_reference_spreads_probabilities_around_the_threshold(predictor: Predictor):
    probabilities = predictor.predict(_displays(1))[0].probabilities
    assert probabilities.min() < 0.4 and probabilities.max() > 0.6
    assert not np.allclose(probabilities, 0.5, atol=0.02)


def test_a_batch_predicts_what_each_image_predicts_alone(predictor: Predictor):
    displays = _displays(3)
    batch = predictor.predict(displays, REPORTS)
    for display, report, batched in zip(displays, REPORTS, batch, strict=True):
        alone = predictor.predict([display], [report])[0]
        np.testing.assert_allclose(batched.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_allclose(batched.embedding, alone.embedding, atol=1e-4)


def test_the_report_changes_the_prediction_and_a_missing_one_is_no_error(predictor: Predictor):
    display = _displays(1)
    with_report = predictor.predict(display, [REPORTS[2]])[0]
    without = predictor.predict(display, [None])[0]
    no_texts = predictor.predict(display)[0]
    assert not np.allclose(with_report.probabilities, without.probabilities)
    np.testing.assert_array_equal(without.probabilities, no_texts.probabilities)
    # A report with nothing the model reads (no findings/impression) counts as missing.
    only_indication = predictor.predict(display, ["INDICATION: cough"])[0]
    assert not only_indication.text_used
    np.testing.assert_array_equal(only_indication.probabilities, without.probabilities)


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_dynamic_padding_predicts_what_padding_to_max_length_predicts(predictor, padding):
    other = Predictor(predictor.package, device="cpu", text_padding=padding)
    displays, reports = _displays(12), (REPORTS * 4)[:12]  # more reports than one bucket
    for a, b in zip(
        predictor.predict(displays, reports), other.predict(displays, reports), strict=True
    ):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)


def test_real_chest_images_predict(predictor: Predictor, shared_data: Path):
    paths = sorted(shared_data.glob("rsna-pneumonia-sample/stage_1_train_images/*.dcm"))[:3]
    displays = [dicom_to_display(pydicom.dcmread(path)) for path in paths]
    probabilities = np.stack([p.probabilities for p in predictor.predict(displays)])
    assert probabilities.shape == (3, 14) and np.isfinite(probabilities).all()


def test_image_only_model_accepts_and_ignores_reports(image_only: Predictor):
    displays = _displays(2)
    without = image_only.predict(displays)
    with_reports = image_only.predict(displays, ["No acute disease.", None])
    for a, b in zip(without, with_reports, strict=True):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        assert b.text_embedding is None and not b.text_used
    assert not image_only.uses_text
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        image_only.predict(displays, ["only one"])


def test_no_images_no_predictions(predictor: Predictor):
    assert predictor.predict([]) == []


def test_maps_are_per_label_on_the_display_grid_and_in_unit_range(predictor: Predictor):
    display = _displays(2)[1]  # 300 x 200: not square
    maps = predictor.explain(display, [0, 4, 13], REPORTS[0])
    assert maps.shape == (3, 300, 200) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert predictor.explain(display, []).shape == (0, 300, 200)


def test_explain_many_batches_what_explain_does_one_image_at_a_time(predictor: Predictor):
    displays = _displays(3)
    labels = [[1, 5], [], [0]]
    many = predictor.explain_many(displays, labels, REPORTS)
    assert [m.shape for m in many] == [(2, 256, 256), (0, 300, 200), (1, 180, 240)]
    for display, wanted, report, maps in zip(displays, labels, REPORTS, many, strict=True):
        np.testing.assert_allclose(maps, predictor.explain(display, wanted, report), atol=1e-4)


@pytest.mark.parametrize("model", ["multimodal", "image-only"])
def test_prepared_inputs_give_the_probabilities_and_maps_of_the_displays(
    predictor: Predictor, image_only: Predictor, model: str, monkeypatch
):
    chosen = predictor if model == "multimodal" else image_only
    displays, labels = _displays(3), [[1, 5], [], [0]]
    alone = chosen.predict(displays, REPORTS)
    maps = chosen.explain_many(displays, labels, REPORTS)

    preprocessed, encoded = [], []
    real_input, real_encode = predictor_module.to_model_input, chosen.model.encode_text
    monkeypatch.setattr(
        predictor_module,
        "to_model_input",
        lambda display, spec: preprocessed.append(1) or real_input(display, spec),
    )
    monkeypatch.setattr(
        chosen.model, "encode_text", lambda *args: encoded.append(1) or real_encode(*args)
    )
    prepared = chosen.prepare(displays, REPORTS)
    shared = chosen.predict(prepared)
    shared_maps = chosen.explain_many(prepared, labels)
    assert (len(preprocessed), len(encoded)) == (3, 1)  # once, for both

    for a, b in zip(alone, shared, strict=True):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        np.testing.assert_array_equal(a.embedding, b.embedding)
        assert a.text_used == b.text_used
    for a, b in zip(maps, shared_maps, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="texts must be None"):
        chosen.predict(prepared, REPORTS)


def test_maps_on_the_model_grid_are_the_maps_before_their_resize(predictor: Predictor):
    displays, labels = _displays(3), [[1, 5], [], [0]]
    grids = predictor.explain_on_grid(displays, labels, REPORTS)
    assert [g.maps.shape for g in grids] == [(2, 7, 7), (0, 0, 0), (1, 7, 7)]
    assert [g.size for g in grids] == [(256, 256), (300, 200), (180, 240)]
    assert grids[1].region == (0, 0, 300, 200)  # the reference package crops nothing
    for grid, maps in zip(grids, predictor.explain_many(displays, labels, REPORTS), strict=True):
        if not len(grid.maps):
            continue
        resized = F.interpolate(
            torch.from_numpy(grid.maps)[:, None], size=grid.size, mode="bilinear"
        )[:, 0]
        np.testing.assert_array_equal(predictor_module._rescale(resized).numpy(), maps)


def test_explaining_a_label_that_does_not_exist_is_refused(predictor: Predictor):
    with pytest.raises(IndexError, match="out of range"):
        predictor.explain(_displays(1)[0], [14])
    with pytest.raises(ValueError, match="label lists"):
        predictor.explain_many(_displays(2), [[0]])


def test_explain_leaves_no_gradient_state_behind(predictor: Predictor):
    grad_mode = torch.is_grad_enabled()
    predictor.explain(_displays(1)[0], [1, 2], REPORTS[0])
    assert torch.is_grad_enabled() == grad_mode
    model = predictor.model
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert not model.training
    assert not model.target_layer()._forward_hooks  # Grad-CAM hooks removed
    predictor.predict(_displays(1))  # still usable for plain inference


@pytest.mark.parametrize("encoder", ["resnet18", "swin_t"])
def test_batched_gradcam_is_the_grad_cam_packages_gradcam(encoder: str):
    torch.manual_seed(0)
    model = build_model({"image_encoder": encoder, "hidden_dim": 0}, n_labels=4).eval()
    images = torch.rand(3, 3, 64, 64)
    labels = [0, 3, 1]
    ours = grad_cam(model, model.target_layer(), images, torch.tensor(labels)).numpy()
    cam = GradCAM(model=model, target_layers=[model.target_layer()])
    try:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(i) for i in labels])
    finally:
        cam.activations_and_grads.release()
    # The package resizes to the input with OpenCV and scales again; do the same to compare.
    resized = np.stack([cv2.resize(m, (64, 64)) for m in ours])
    resized -= resized.min(axis=(1, 2), keepdims=True)
    resized /= resized.max(axis=(1, 2), keepdims=True) + 1e-7
    np.testing.assert_allclose(resized, theirs, atol=1e-4)


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
    falls in it; the probe's weights become the label's image part of the (linear) output
    layer, so the image-level logit is the mean cell score (plus whatever the report adds).
    No gradient goes through the encoder, which keeps this to a few seconds on a CPU.
    """
    spec = reference_config().preprocessing
    centres = [
        (int(rng.integers(24, HEIGHT - 24)), int(rng.integers(24, WIDTH - 24))) for _ in range(16)
    ]
    images = torch.stack([to_model_input(_scene(rng, at), spec) for at in centres])
    with torch.no_grad():
        activations = model.image_encoder(images)  # (N, C, g, g)
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
        image_dim = model.image_encoder.out_dim
        model.output_layer.weight[label, :image_dim] = weights
        model.output_layer.bias[label] = probe.bias[0] - (weights * mean).sum()


@pytest.mark.parametrize("text_model", [False, True], ids=["image-only", "with-report"])
def test_gradcam_peaks_on_the_lesion_the_label_responds_to(text_model: bool):
    architecture = {"image_encoder": "resnet18", "hidden_dim": 0}
    if text_model:
        architecture["text_encoder"] = reference_config().architecture["text_encoder"]
    package = _package(architecture)
    rng = np.random.default_rng(0)
    _fit_blob_detector(package.model, rng, MASS)
    predictor = Predictor(package, device="cpu")
    report = REPORTS[2] if text_model else None

    # One encoder cell is 32 x 46 display pixels; the peak must fall within about one cell.
    tolerance = 0.25 * min(HEIGHT, WIDTH)
    blobs = [(60, 80), (60, 250), (165, 90), (160, 240), (112, 160)]
    scenes = [_scene(rng, blob_at) for blob_at in blobs]
    heatmaps = predictor.explain_many(scenes, [[MASS]] * len(scenes), [report] * len(scenes))
    for blob_at, heatmap in zip(blobs, heatmaps, strict=True):
        heatmap = heatmap[0]
        assert heatmap.shape == (HEIGHT, WIDTH)
        assert np.isfinite(heatmap).all() and heatmap.min() >= 0.0 and heatmap.max() <= 1.0
        peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        distance = float(np.hypot(peak[0] - blob_at[0], peak[1] - blob_at[1]))
        assert distance < tolerance, f"blob at {blob_at}, map peaks at {peak}"


# --- GPU ------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_predicts_what_the_cpu_predicts(reference_package_dir: Path):
    from models.package import load_package

    cpu = Predictor(load_package(reference_package_dir), device="cpu")
    gpu = Predictor(load_package(reference_package_dir), device="cuda")
    assert gpu.dtype == torch.bfloat16 and gpu.channels_last
    displays = _displays(4)
    for a, b in zip(
        cpu.predict(displays, REPORTS + [None]),
        gpu.predict(displays, REPORTS + [None]),
        strict=True,
    ):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=0.05)
    maps = gpu.explain_many(displays, [[0, 1]] * 4, REPORTS + [None])
    assert all(np.isfinite(m).all() and m.max() <= 1.0 for m in maps)


@pytest.mark.gpu
@needs_cuda
def test_compiled_predictor_predicts_what_the_eager_one_does(reference_package_dir: Path):
    from models.package import load_package

    eager = Predictor(load_package(reference_package_dir), device="cuda", precision="fp32")
    compiled = Predictor(
        load_package(reference_package_dir), device="cuda", precision="fp32", compile=True
    )
    displays = _displays(2)
    for a, b in zip(eager.predict(displays), compiled.predict(displays), strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-3)


def test_one_predictor_serves_several_threads(predictor: Predictor):
    from concurrent.futures import ThreadPoolExecutor

    displays = _displays(2)
    expected = [p.probabilities for p in predictor.predict(displays, REPORTS[:2])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda _: predictor.predict(displays, REPORTS[:2]), range(6)))
    for run in runs:
        for prediction, want in zip(run, expected, strict=True):
            np.testing.assert_allclose(prediction.probabilities, want, atol=1e-5)


def test_a_report_with_stored_sections_is_read_from_them(predictor: Predictor):
    # Lines an HL7 sender labelled (OBX-3 "&GDT", "&IMP", "&TCM"): no heading in the text.
    text = "Large right pleural effusion.\nEffusion.\nPatient cooperative."
    stored = {"FINDINGS": "Large right pleural effusion.", "IMPRESSION": "Effusion."}
    displays = _displays(3)
    from_sections, as_text, selected = predictor.predict(
        displays,
        [ReportText(text, stored), text, "FINDINGS: Large right pleural effusion.\nEffusion."],
    )
    assert from_sections.text_used and as_text.text_used
    np.testing.assert_allclose(from_sections.text_embedding, selected.text_embedding, atol=1e-6)
    assert not np.allclose(from_sections.text_embedding, as_text.text_embedding, atol=1e-4)
    maps = predictor.explain_many(displays[:1], [[0]], [ReportText(text, stored)])
    assert maps[0].shape == (1, *displays[0].shape)
