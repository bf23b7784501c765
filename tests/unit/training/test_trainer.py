"""The trainer on a tiny real subset: it learns and resumes exactly (what a whole run exports:
test_run_outputs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.network import build_model
from models.preprocess import PreprocessSpec
from models.text import TextCleaning
from training.datasets import read_nih_folders
from training.loader import SampleDataset
from training.losses import build_loss
from training.splits import patient_split
from training.trainer import Trainer, TrainSettings, seed_everything

SPEC = PreprocessSpec(image_size=32, channels=3)
ARCH = {"image_encoder": "resnet18", "hidden_dim": 0, "dropout": 0.1}


@pytest.fixture(scope="module")
def parts(nih_thumbs: Path, nih_data_entry: Path):
    data = read_nih_folders(nih_thumbs, data_entry_csv=nih_data_entry)
    return patient_split(data.samples[::10], {"train": 0.7, "val": 0.3}, seed=0)


def _trainer(
    parts, run_dir: Path, epochs: int, device: str = "cpu", **settings
) -> tuple[Trainer, SampleDataset, SampleDataset]:
    seed_everything(0)
    model = build_model(ARCH, 1, in_channels=3)
    options = {"epochs": epochs, "batch_size": 16, "lr": 3e-3, "schedule": "cosine", "patience": 0}
    trainer = Trainer(
        model,
        build_loss("weighted_bce", parts["train"]),
        TrainSettings(**{**options, **settings}),
        run_dir,
        device=device,
        progress=False,
    )
    cleaning = TextCleaning()
    train = SampleDataset(parts["train"], SPEC, cleaning, "none", augment=True)
    return trainer, train, SampleDataset(parts["val"], SPEC, cleaning, "none")


def test_training_loss_goes_down(parts, tmp_path: Path) -> None:
    trainer, train, val = _trainer(parts, tmp_path, epochs=6)
    result = trainer.fit(train, val)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert (tmp_path / "epochs.csv").read_text().count("\n") == 7  # header + 6 epochs
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()


class Interrupted(Exception):
    pass


def test_resume_from_a_checkpoint_continues_identically(parts, tmp_path: Path) -> None:
    straight, train, val = _trainer(parts, tmp_path / "straight", epochs=3, ema_decay=0.9)
    straight.fit(train, val)

    def crash_after_first_epoch(row: dict) -> None:
        raise Interrupted

    first, train, val = _trainer(parts, tmp_path / "resumed", epochs=3, ema_decay=0.9)
    with pytest.raises(Interrupted):
        first.fit(train, val, on_epoch=crash_after_first_epoch)
    # A new process: a fresh model and trainer read last.pt and run the remaining epochs.
    second, train, val = _trainer(parts, tmp_path / "resumed", epochs=3, ema_decay=0.9)
    result = second.fit(train, val)
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    pairs = zip(
        straight.model.state_dict().items(), second.model.state_dict().values(), strict=True
    )
    for (name, a), b in pairs:
        assert torch.equal(a, b), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_training_on_the_gpu_matches_the_cpu_closely(parts, tmp_path: Path) -> None:
    cpu, train, val = _trainer(parts, tmp_path / "cpu", epochs=1, amp="off")
    cpu.fit(train, val)
    gpu, train, val = _trainer(parts, tmp_path / "gpu", epochs=1, device="cuda")
    assert gpu._amp_dtype() is torch.bfloat16
    gpu.fit(train, val)
    assert np.allclose(cpu.predict(val), gpu.predict(val), atol=0.05)


def test_channels_last_trains_the_same_network_in_another_memory_layout(
    parts, tmp_path: Path
) -> None:
    one_step = {"epochs": 1, "max_steps_per_epoch": 1, "lr": 1e-4}
    nhwc, train, val = _trainer(parts, tmp_path / "nhwc", **one_step)
    nchw, _, _ = _trainer(parts, tmp_path / "nchw", **one_step, channels_last=False)
    convs = [m.weight for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not any(w.is_contiguous() for w in convs if w.shape[-1] > 1)
    # Same weights, same inputs: the layouts give the same probabilities before training ...
    assert np.allclose(nhwc.predict(val), nchw.predict(val), atol=1e-5)
    nhwc.fit(train, val)
    nchw.fit(train, val)
    # ... and after a training step (float summation order differs, nothing else).
    assert np.allclose(nhwc.predict(val), nchw.predict(val), atol=1e-4)
