"""The model card (``MODEL_CARD.md``) of an exported package: data, splits, metrics with
confidence intervals, thresholds, calibration, limits. Every figure comes from the run.

Also the run's own ``report.md`` (:func:`run_report`): the same test table with the run's
figures beside it. The figures stay in the run directory and out of the package: the Grad-CAM
ones show training patients' images, which a package shipped elsewhere must not carry.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.encoders.image import weights_provenance
from models.package import ModelConfig
from training.datasets import LabelledData, Sample
from training.metrics import Evaluation
from training.semisupervised import UNLABELLED

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


def _ci(entry: dict[str, Any]) -> str:
    low, high = (
        entry.get("ci", (None, None))
        if "ci" in entry
        else (
            entry.get("auroc_ci_low"),
            entry.get("auroc_ci_high"),
        )
    )
    return f"{_f(entry.get('auroc'))} ({_f(low)}–{_f(high)})"


def _by_source_lines(by_source: dict[str, Any]) -> list[str]:
    if not by_source:
        return []
    lines = [
        "",
        "### Test metrics by source",
        "Each source's own test part (a paediatric and an adult population are reported apart).",
        "",
        "| source | label | n | positives | AUROC (95% CI) | recall | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for source, evaluation in by_source.items():
        for row in evaluation["labels"]:
            if row["n"] == 0:
                continue
            lines.append(
                f"| {source} | {row['label']} | {row['n']} | {row['positives']} | {_ci(row)} | "
                f"{_f(row['recall'])} | {_f(row['specificity'])} |"
            )
    return lines


def _view_lines(check: dict[str, Any]) -> list[str]:
    if not check:
        return []
    lines = [
        "",
        "### View-position check",
        f"Test images whose dataset gives the view ({', '.join(check.get('sources', []))}): "
        f"{check['ap']} AP, {check['pa']} PA. *View alone* scores an image 1 if AP, 0 if PA: "
        "its AUROC far from 0.5 means the view predicts the label in this data, so a model "
        "could score well by detecting the view. The model's AUROC *within* one view cannot "
        "come from the view.",
        "",
        "| label | view alone | model, all | model within AP | model within PA |",
        "|---|---|---|---|---|",
    ]
    for label, row in check["labels"].items():
        lines.append(
            f"| {label} | {_ci(row['view_alone'])} | {_ci(row['model_all'])} | "
            f"{_ci(row['model_within_ap'])} (n={row['model_within_ap']['n']}) | "
            f"{_ci(row['model_within_pa'])} (n={row['model_within_pa']['n']}) |"
        )
    return lines


def _external_lines(external: dict[str, Any]) -> list[str]:
    """Checks on data the model never saw in any split (e.g. RSNA DICOMs, serving route)."""
    if not external:
        return []
    lines = ["", "### External checks", ""]
    for name, entry in external.items():
        lines.append(f"- {name}: {entry}")
    return lines


def _split_rows(splits: dict[str, dict[str, Any]]) -> list[str]:
    """The split table (:func:`split_table`) in markdown; an unlabelled part's labels hidden."""
    lines = ["| split | samples | patients | positives per label |", "|---|---|---|---|"]
    for name, row in splits.items():
        positives = "hidden" if name == UNLABELLED else row["positives"]
        lines.append(f"| {name} | {row['samples']} | {row['patients']} | {positives} |")
    return lines


def _method_lines(config: RunConfig, results: dict[str, Any]) -> list[str]:
    """Which training method ran, on how many labelled and unlabelled samples, and whether the
    figures and the package are the EMA weights."""
    lines = []
    if "semisupervised" in results:
        lines += ["", results["semisupervised"]["description"]]
    if results.get("weights") == "ema":
        lines += [
            "",
            f"Validation, thresholds, test metrics and the exported weights are the exponential "
            f"moving average of the weights (seed 001; decay {config.train.ema_decay}), "
            "at the best epoch.",
        ]
    return lines


def _normalization_line(normalization: dict[str, Any]) -> str:
    """How the inputs were normalised, as ``results.json``'s ``normalization`` says."""
    method = normalization.get("method", "fixed")
    how = {
        "fixed": "fixed values (the config's or the preset's)",
        "imagenet": "the statistics the encoder's ImageNet weights were trained with",
        "train_stats": "the training split's statistics",
        "batch": "each training batch's own statistics during training (seed 004), the "
        "training split's statistics at validation, test and serving",
    }.get(method, method)
    images = (
        f", computed over {normalization['images']} training images"
        if "images" in normalization
        else ""
    )
    return f"normalisation `{method}`: {how}{images}"


def _test_rows(evaluation: Evaluation) -> list[str]:
    lines = [
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
    return lines


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
        f"initialised from {weights_provenance(arch['image_encoder'])}"
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
        f"{package.preprocessing.channels} channel(s), normalised with mean "
        f"{[round(v, 4) for v in package.preprocessing.mean]} and std "
        f"{[round(v, 4) for v in package.preprocessing.std]} "
        f"({_normalization_line(results.get('normalization', {}))}); labels: "
        + ", ".join(
            f"{label.name} ({label.coding_scheme} {label.code_value})" for label in package.labels
        )
        + ".",
        "",
        "## Training data",
        f"{data.name} — {data.source}",
        "",
        *_split_rows(splits),
        "",
        _leakage_line(results.get("leaked_samples_dropped", 0)),
        f"Loss `{config.loss.get('name', 'bce')}`; {results['epochs_run']} epochs run, best epoch "
        f"{results['best_epoch']} by validation {config.train.monitor}; "
        f"{results.get('train_seconds', results['seconds']):.0f} s of training epochs "
        f"on {results['device']}.",
        *_method_lines(config, results),
        "",
        "## Test metrics",
        "Thresholds chosen on the validation split by "
        f"`{config.export.get('threshold', 'youden')}`; "
        "AUROC with a 95% bootstrap confidence interval (1,000 resamples).",
        "",
        *_test_rows(evaluation),
    ]
    lines += ["", "Confusion at the threshold (TP / FP / TN / FN):", ""]
    for row in evaluation.rows():
        lines.append(f"- {row['label']}: {row['tp']} / {row['fp']} / {row['tn']} / {row['fn']}")
    lines += _by_source_lines(results.get("test_by_source") or {})
    lines += _view_lines(results.get("view_check") or {})
    lines += _external_lines(results.get("external") or {})
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


def run_report(results: dict[str, Any], config: RunConfig, evaluation: Evaluation) -> str:
    """The run directory's ``report.md``: data, normalisation, test metrics and every figure
    of ``results["figures"]``, linked relative to the run directory."""
    out = Path(config.output)
    lines = [
        f"# {results['name']}",
        "",
        f"{results['data']}; {_normalization_line(results['normalization'])}; "
        f"{results['epochs_run']} epochs run, best epoch {results['best_epoch']}, "
        f"{results['seconds']:.0f} s on {results['device']}.",
        "",
        f"Training curves: `tensorboard --logdir {out}` (per-epoch losses, validation AUROC per "
        "label, learning rate; the test figures at the best epoch); per epoch also "
        "`epochs.csv`. Test probabilities per image: `predictions_test.csv`.",
        "",
        *_split_rows(results["splits"]),
        "",
        "## Test metrics",
        "",
        *_test_rows(evaluation),
        "",
        "## Figures",
    ]
    for name, path in results["figures"].items():
        link = Path(os.path.relpath(path, out)).as_posix()
        lines += ["", f"### {name.replace('_', ' ')}", "", f"![{name}]({link})"]
    if "package" in results:
        lines += ["", f"Package: `{results['package']}` (its `MODEL_CARD.md`)."]
    return "\n".join(lines) + "\n"
