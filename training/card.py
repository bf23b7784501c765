"""The model card (``MODEL_CARD.md``) of an exported package: data, splits, metrics with
confidence intervals, thresholds, calibration, limits. Every figure comes from the run."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from models.package import ModelConfig
from training.datasets import LabelledData, Sample
from training.metrics import Evaluation

if TYPE_CHECKING:
    from training.config import RunConfig


def split_table(parts: dict[str, list[Sample]]) -> dict[str, dict[str, Any]]:
    """Samples, patients and positives per label of each split."""
    table = {}
    for name, samples in parts.items():
        targets = np.stack([s.targets for s in samples]) if samples else np.zeros((0, 1))
        table[name] = {
            "samples": len(samples),
            "patients": len({s.patient_id for s in samples}),
            "positives": [int(v) for v in targets.sum(axis=0)],
        }
    return table


def _leakage_line(dropped: int) -> str:
    if dropped < 0:
        return (
            f"**{-dropped} patients are in more than one split (the dataset's own split, kept "
            "to reproduce its figures): the test metrics below are inflated by leakage.**"
        )
    if dropped:
        return (
            f"The dataset's split put patients in more than one split; {dropped} val/test "
            "samples of such patients were dropped, so no patient is in two splits."
        )
    return "Splits are by patient; the leakage check found no patient in two splits."


def _f(value: float) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )


def model_card(
    package: ModelConfig,
    config: RunConfig,
    data: LabelledData,
    parts: dict[str, list[Sample]],
    evaluation: Evaluation,
    results: dict[str, Any],
) -> str:
    """Write the card of a package exported by ``cxrnode train``."""
    arch = package.architecture
    text = arch.get("text_encoder", {}).get("kind", "none")
    splits = results["splits"]
    init = (
        "ImageNet-initialised"
        if results.get("image_pretrained")
        else "trained from random initialisation: no ImageNet weights were available"
    )
    lines = [
        f"# {package.name} {package.version}",
        "",
        f"**{package.disclaimer}.**",
        "",
        "## What this is",
        f"A{' multimodal' if text != 'none' else 'n image-only'} chest X-ray classifier trained by "
        f"`cxrnode train --config {config.source}`: image encoder `{arch['image_encoder']}` "
        f"({init}"
        f"), text encoder `{text}`, fusion `{arch.get('fusion')}`, head hidden size "
        f"{arch.get('hidden_dim')}; input {package.preprocessing.image_size}² px, "
        f"{package.preprocessing.channels} channel(s); labels: "
        + ", ".join(
            f"{label.name} ({label.coding_scheme} {label.code_value})" for label in package.labels
        )
        + ".",
        "",
        "## Training data",
        f"{data.name} — {data.source}",
        "",
        "| split | samples | patients | positives per label |",
        "|---|---|---|---|",
    ]
    for name, row in splits.items():
        lines.append(f"| {name} | {row['samples']} | {row['patients']} | {row['positives']} |")
    lines += [
        "",
        _leakage_line(results.get("leaked_samples_dropped", 0)),
        f"Loss `{config.loss.get('name', 'bce')}`; {results['epochs_run']} epochs run, best epoch "
        f"{results['best_epoch']} by validation {config.train.monitor}; "
        f"{results['seconds']:.0f} s on {results['device']}.",
        "",
        "## Test metrics",
        "Thresholds chosen on the validation split by "
        f"`{config.export.get('threshold', 'youden')}`; "
        "AUROC with a 95% bootstrap confidence interval (1,000 resamples).",
        "",
        "| label | n | positives | AUROC (95% CI) | AP | accuracy | precision | recall "
        "| specificity | F1 | threshold | ECE | Brier |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in evaluation.rows():
        lines.append(
            f"| {row['label']} | {row['n']} | {row['positives']} | {_f(row['auroc'])} "
            f"({_f(row['auroc_ci_low'])}–{_f(row['auroc_ci_high'])}) | "
            f"{_f(row['average_precision'])} | "
            f"{_f(row['accuracy'])} | {_f(row['precision'])} | {_f(row['recall'])} | "
            f"{_f(row['specificity'])} | {_f(row['f1'])} | {row['threshold']:.3f} | "
            f"{_f(row['ece'])} | {_f(row['brier'])} |"
        )
    lines += ["", "Confusion at the threshold (TP / FP / TN / FN):", ""]
    for row in evaluation.rows():
        lines.append(f"- {row['label']}: {row['tp']} / {row['fp']} / {row['tn']} / {row['fn']}")
    limits = config.export.get("limits", "")
    intended = config.export.get(
        "intended_use", "Research and integration testing of cxrnode; not for clinical use."
    )
    lines += [
        "",
        "## Intended use",
        intended,
        "",
        "## Limits",
        limits or "See the training data above.",
        "",
    ]
    return "\n".join(lines)
