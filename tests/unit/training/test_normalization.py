"""Input normalisation by the training set: its statistics, batch-wise standardisation, and
what a run resolves ``[model] normalization`` to."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.network import build_model
from models.preprocess import PreprocessSpec, image_file_to_display, to_model_input
from models.text import TextCleaning
from training.config import RunConfig
from training.datasets import LabelledData, read_nih_folders
from training.errors import TrainingError
from training.loader import SampleDataset
from training.losses import build_loss
from training.normalization import standardise_batch, training_statistics
from training.run import plan_model
from training.trainer import Trainer, TrainSettings, seed_everything

SPEC = PreprocessSpec(image_size=32, channels=3)


@pytest.fixture(scope="module")
def samples(nih_thumbs: Path, nih_data_entry: Path):
    return read_nih_folders(nih_thumbs, data_entry_csv=nih_data_entry).samples[::50]


def test_training_statistics_are_those_of_the_inputs_before_normalisation(samples) -> None:
    raw = replace(SPEC, mean=(0.0,) * 3, std=(1.0,) * 3)
    inputs = np.stack(
        [to_model_input(image_file_to_display(s.image), raw).numpy() for s in samples]
    )
    statistics = training_statistics(samples, SPEC)
    assert statistics.images == len(samples)
    assert np.allclose(statistics.mean, inputs.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(statistics.std, inputs.std(axis=(0, 2, 3)), atol=1e-6)
    # The spec's own normalisation, whatever it is, does not enter the figures.
    other = replace(SPEC, mean=(0.1, 0.2, 0.3), std=(2.0, 3.0, 4.0))
    assert training_statistics(samples, other) == statistics


def test_training_statistics_of_a_sample_are_drawn_by_the_seed(samples) -> None:
    drawn = training_statistics(samples, SPEC, limit=5, seed=3)
    assert drawn.images == 5
    assert training_statistics(samples, SPEC, limit=5, seed=3) == drawn
    assert training_statistics(samples, SPEC, limit=5, seed=4) != drawn
    with pytest.raises(TrainingError, match="normalization_images"):
        training_statistics(samples, SPEC, limit=0)


def test_a_standardised_batch_has_zero_mean_and_unit_std_per_channel(samples) -> None:
    spec = replace(SPEC, mean=(0.0, 0.5, 0.9), std=(1.0, 0.2, 3.0))
    batch = torch.stack([to_model_input(image_file_to_display(s.image), spec) for s in samples])
    standardised = standardise_batch(batch)
    assert torch.allclose(standardised.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(standardised.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5)


def test_batch_normalisation_trains_on_standardised_batches_and_validates_as_given(
    samples, tmp_path: Path
) -> None:
    seed_everything(0)
    model = build_model({"image_encoder": "resnet18", "hidden_dim": 0}, 1, in_channels=3)
    seen: list[tuple[bool, torch.Tensor]] = []
    model.image_encoder.register_forward_pre_hook(
        lambda module, args: seen.append((module.training, args[0].detach().clone()))
    )
    settings = TrainSettings(epochs=1, batch_size=8, schedule="none", patience=0)
    trainer = Trainer(
        model,
        build_loss("bce", samples),
        settings,
        tmp_path,
        device="cpu",
        progress=False,
        standardise_batches=True,
    )
    dataset = SampleDataset(samples, SPEC, TextCleaning(), "none")
    trainer.fit(dataset, dataset)
    training = [images for is_training, images in seen if is_training]
    assert training
    for images in training:
        assert torch.allclose(images.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
        assert torch.allclose(images.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    validated = torch.cat([images for is_training, images in seen if not is_training])
    given = torch.stack([dataset.image(i) for i in range(len(dataset))])
    assert torch.allclose(validated[: len(given)], given)


def _plan(model: dict, tmp_path: Path):
    config = RunConfig(
        "train", "plan", tmp_path, {}, {"preset": "seed-004", **model}, {}, TrainSettings()
    )
    return plan_model(config, LabelledData("none", "nih-chestxray14", []))


def test_without_a_normalisation_a_run_keeps_the_statistics_it_always_chose(tmp_path: Path) -> None:
    lite = {"architecture": {"image_encoder": "efficientnet_lite0", "image_weights": "imagenet"}}
    assert _plan(lite, tmp_path).normalization == "imagenet"
    assert _plan(lite, tmp_path).spec.mean == pytest.approx((127 / 255,) * 3)
    assert _plan({**lite, "mean": [0.5, 0.5, 0.5]}, tmp_path).normalization == "fixed"
    scratch = {"architecture": {"image_weights": None}}
    assert _plan(scratch, tmp_path).normalization == "fixed"


def test_an_unknown_normalisation_or_a_mean_it_does_not_use_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="normalization must be one of"):
        _plan({"normalization": "dataset"}, tmp_path)
    with pytest.raises(TrainingError, match="for normalization 'fixed'"):
        _plan({"normalization": "train_stats", "mean": [0.5, 0.5, 0.5]}, tmp_path)
