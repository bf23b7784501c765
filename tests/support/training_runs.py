"""A tiny real training run: the NIH thumbnails config cut down to seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

from training.cli import parse_overrides
from training.config import RunConfig, load_run_config

REPO = Path(__file__).resolve().parents[2]


def tiny_run_config(tmp_path: Path, *overrides: str) -> RunConfig:
    """``default-nih-normal-abnormal.toml`` on 120 images at 32 px for 2 epochs, writing under
    ``tmp_path``; ``overrides`` are more ``--set`` values."""
    return load_run_config(
        REPO / "training" / "configs" / "default-nih-normal-abnormal.toml",
        parse_overrides(
            [
                f'run.output="{tmp_path / "run"}"',
                f'export.path="{tmp_path / "package"}"',
                'data.split="patient"',
                "data.limit=120",
                "model.image_size=32",
                "train.epochs=2",
                "train.batch_size=16",
                *overrides,
            ]
        ),
    )
