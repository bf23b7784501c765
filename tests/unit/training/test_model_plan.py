"""A training config's [model] settings change only what they name of the preset's input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from models.preprocess import PreprocessSpec
from models.presets import PRESETS
from training.config import RunConfig
from training.datasets import LabelledData
from training.run import plan_model
from training.trainer import TrainSettings


@pytest.fixture
def center_cropped_preset(monkeypatch):
    """An image-only preset with torchxrayvision's input: centre crop, skimage resize."""
    spec = PreprocessSpec(image_size=224, channels=1, crop="center", resize="skimage")
    preset = replace(PRESETS["seed-004"], key="test-xrv", preprocessing=spec)
    monkeypatch.setitem(PRESETS, "test-xrv", preset)
    return preset


def plan(model: dict, tmp_path):
    config = RunConfig(
        kind="train",
        name="plan",
        output=tmp_path,
        data={},
        model={"preset": "test-xrv", **model},
        loss={},
        train=TrainSettings(),
    )
    return plan_model(config, LabelledData("none", "nih-chestxray14", []))


def test_a_configured_image_size_keeps_the_presets_crop_and_resize(center_cropped_preset, tmp_path):
    spec = plan({"image_size": 128}, tmp_path).spec
    assert (spec.image_size, spec.channels) == (128, 1)
    assert (spec.crop, spec.resize) == ("center", "skimage")


def test_configured_statistics_keep_the_rest_of_the_presets_input(center_cropped_preset, tmp_path):
    spec = plan({"image_size": 160, "mean": [0.5], "std": [0.25]}, tmp_path).spec
    assert spec == PreprocessSpec(160, 1, (0.5,), (0.25,), crop="center", resize="skimage")
