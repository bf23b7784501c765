"""What a tiny real training run leaves besides its package: the training set's statistics in
the package and its card, a TensorBoard event file, the seeds' figures and the run's report."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models.package import load_package
from models.predictor import Predictor
from models.preprocess import image_file_to_display
from training.cli import parse_overrides
from training.config import load_run_config
from training.run import PREDICTIONS_FILE, REPORT_FILE, run_train

CONFIGS = Path(__file__).parents[3] / "training" / "configs"
IMAGE_FIGURES = {"class_distribution", "confusion", "roc", "calibration", "gradcam Abnormal"}
TEXT_FIGURES = {"word_counts", "top_terms"}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """NIH thumbnails, image only, normalised by the training split's statistics."""
    out = tmp_path_factory.mktemp("train-stats")
    overrides = [
        f'run.output="{out / "run"}"',
        f'export.path="{out / "package"}"',
        "data.limit=120",
        "model.image_size=32",
        'model.normalization="train_stats"',
        "train.epochs=2",
        "train.batch_size=16",
    ]
    config = load_run_config(
        CONFIGS / "default-nih-normal-abnormal.toml", parse_overrides(overrides)
    )
    return run_train(config)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """IU X-ray reports, seed 002's small word-id text branch alone."""
    out = tmp_path_factory.mktemp("text")
    overrides = [
        f'run.output="{out / "run"}"',
        'run.kind="train"',
        'data.split="patient"',
        "data.limit=200",
        'model.architecture.text_encoder={kind="token_ffn", vocab_size=300, max_length=40, '
        "hidden=16, out=8}",
        "train.epochs=1",
    ]
    config = load_run_config(CONFIGS / "iu-text-normal-abnormal.toml", parse_overrides(overrides))
    return run_train(config)


def test_exported_package_loads_and_predicts_like_the_node(
    image_run: dict, shared_data: Path
) -> None:
    assert Path(image_run["roc_png"]).stat().st_size > 1000
    package = load_package(image_run["package"])
    assert package.config.trained and package.config.label_vocabulary == "normal-abnormal"
    threshold = package.config.labels[0].threshold
    assert threshold == pytest.approx(image_run["thresholds"]["Abnormal"])
    card = (Path(image_run["package"]) / "MODEL_CARD.md").read_text()
    assert "AUROC (95% CI)" in card and "random initialisation" in card
    # The node's predictor serves it on a real DICOM.
    dicoms = shared_data / "nih-chestxray14-dicom-gcp"
    display = image_file_to_display(next(p for p in sorted(dicoms.iterdir()) if p.suffix == ".dcm"))
    (prediction,) = Predictor(package, device="cpu").predict([display])
    assert 0.0 <= float(prediction.probabilities[0]) <= 1.0


def test_train_stats_are_recorded_in_the_package_and_named_by_its_card(image_run: dict) -> None:
    normalization = image_run["normalization"]
    assert normalization["method"] == "train_stats"
    assert normalization["images"] == image_run["splits"]["train"]["samples"]
    package = load_package(image_run["package"])
    assert package.config.normalization == "train_stats"
    assert package.config.preprocessing.mean == pytest.approx(normalization["mean"])
    assert package.config.preprocessing.std == pytest.approx(normalization["std"])
    # Not ImageNet's: the thumbnails' own statistics.
    assert package.config.preprocessing.mean[0] != pytest.approx(0.485, abs=1e-3)
    card = (Path(image_run["package"]) / "MODEL_CARD.md").read_text()
    assert "normalisation `train_stats`: the training split's statistics" in card


def test_a_train_stats_package_serves_what_its_evaluation_scored(image_run: dict) -> None:
    run_dir = Path(image_run["roc_png"]).parent
    with (run_dir / PREDICTIONS_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == image_run["splits"]["test"]["samples"]
    predictor = Predictor(load_package(image_run["package"]), device="cpu")
    served = predictor.predict([image_file_to_display(row["image"]) for row in rows])
    evaluated = np.array([float(row["Abnormal"]) for row in rows])
    assert np.allclose([p.probabilities[0] for p in served], evaluated, atol=1e-5)


def test_the_event_file_holds_each_epoch_and_the_test_figures(image_run: dict) -> None:
    events = EventAccumulator(str(Path(image_run["roc_png"]).parent))
    events.Reload()
    for name in ("train/loss", "val/loss", "val/auroc/Abnormal", "lr"):
        assert [event.step for event in events.Scalars(name)] == [1, 2], name
    (auroc,) = events.Scalars("test/auroc/Abnormal")
    assert auroc.step == image_run["best_epoch"]
    assert auroc.value == pytest.approx(image_run["test"]["labels"][0]["auroc"])


def test_every_figure_is_written_and_linked_from_the_report(image_run: dict) -> None:
    figures = image_run["figures"]
    assert set(figures) == IMAGE_FIGURES  # NIH images come without reports: no text figures
    report = (Path(image_run["roc_png"]).parent / REPORT_FILE).read_text()
    for path in map(Path, figures.values()):
        assert path.stat().st_size > 1000, path
        assert f"]({path.name})" in report
    assert "tensorboard --logdir" in report


def test_a_run_on_reports_draws_their_word_counts_and_terms(text_run: dict) -> None:
    figures = text_run["figures"]
    # A text-only model: no Grad-CAM.
    assert set(figures) == IMAGE_FIGURES - {"gradcam Abnormal"} | TEXT_FIGURES
    for path in map(Path, figures.values()):
        assert path.stat().st_size > 1000, path
    assert text_run["normalization"] == {"method": "none (text only)"}
