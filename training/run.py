"""What ``cxrnode train`` and ``cxrnode evaluate`` do, from a :class:`training.config.RunConfig`.

``train``: read the data, split it by patient (or take the dataset's split), check for
leakage, fit the input normalisation (:mod:`training.normalization`), build the model, fit,
choose per-label thresholds on validation, evaluate on test (metrics with bootstrap CIs,
calibration), draw the run's figures (:mod:`training.plots`) into its ``report.md``, and export
a model package the node loads unchanged, with its model card.

``crossval``: k patient-level folds; each fold trains on the rest (a tenth of it held out for
early stopping and the threshold) and is evaluated on its own part. Variants (other encoders,
the indication-only ablation, the TF-IDF baseline) run on the very same folds.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import platform
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.encoders.text import WordVocabulary
from models.labels import VOCABULARIES
from models.network import CxrClassifier, build_model
from models.package import (
    CARD_FILE,
    CONFIG_FILE,
    LabelConfig,
    LoadedPackage,
    ModelConfig,
    load_package,
    save_package,
)
from models.predictor import Predictor
from models.preprocess import PreprocessSpec
from models.presets import PRESETS
from models.text import TextCleaning, label_mask_words
from training.baselines import tfidf_logreg_probabilities
from training.card import model_card, run_report, split_table
from training.config import REPO, RunConfig, expand, load_run_config
from training.contrastive import build_alignment
from training.datasets import LabelledData, Sample
from training.errors import TrainingError
from training.events import EventLog
from training.loader import SampleDataset, sample_text
from training.losses import build_loss
from training.metrics import Evaluation, choose_threshold, evaluate, view_check
from training.normalization import (
    DEFAULT_SAMPLE_IMAGES,
    FROM_TRAINING,
    choose_normalization,
    training_statistics,
)
from training.plots import (
    plot_class_distribution,
    plot_confusion_matrices,
    plot_grad_cams,
    plot_reliability,
    plot_top_terms,
    plot_word_counts,
    save_roc_curves,
)
from training.semisupervised import (
    UNLABELLED,
    describe,
    hide_labels,
    label_counts,
    make_trainer,
    unlabelled_part,
)
from training.splits import (
    check_for_leakage,
    drop_leaked,
    leaked_patients,
    patient_folds,
    patient_split,
)
from training.textmodel import TextOnlyClassifier
from training.trainer import Trainer, predict, seed_everything

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PREDICTIONS_FILE = "predictions_test.csv"


@dataclass
class ModelPlan:
    """What the config says the model is, before it is built."""

    architecture: dict[str, Any]
    spec: PreprocessSpec | None  # None: text-only
    cleaning: TextCleaning
    vocabulary: str
    text_only: bool
    normalization: str = "fixed"  # models.preprocess.NORMALIZATIONS


def plan_model(config: RunConfig, data: LabelledData) -> ModelPlan:
    """Resolve the preset, architecture overrides, preprocessing and text cleaning."""
    model = config.model
    preset = PRESETS.get(str(model.get("preset", "")))
    if model.get("preset") and preset is None:
        raise TrainingError(f"[model] preset must be one of {sorted(PRESETS)}")
    architecture = dict(preset.architecture) if preset else {}
    architecture.update(model.get("architecture", {}))
    text = dict(architecture.get("text_encoder") or {"kind": "none"})
    if text.get("kind") == "hf":
        text["path"] = text.get("path") or model.get("text_encoder_path")
        if not text["path"]:
            raise TrainingError(
                f"{config.name}: the hf text encoder needs [model] text_encoder_path "
                f"({preset.text_encoder_hint if preset else 'a model directory'}, or 'minilm')"
            )
    architecture["text_encoder"] = text
    cleaning = preset.text_cleaning if preset else TextCleaning()
    if model.get("mask_label_words"):
        names = [label.name for label in VOCABULARIES[data.vocabulary]]
        extra = tuple(model.get("mask_extra_words", ("normal", "abnormal")))
        cleaning = TextCleaning(
            cleaning.sections, label_mask_words(names, extra), cleaning.lowercase
        )
    spec = preset.preprocessing if preset else PreprocessSpec()
    if "image_size" in model:
        spec = replace(spec, image_size=int(model["image_size"]))
    normalization, spec = choose_normalization(spec, architecture, model)
    text_only = bool(model.get("text_only", False))
    return ModelPlan(
        architecture,
        None if text_only else spec,
        cleaning,
        data.vocabulary,
        text_only,
        normalization,
    )


def fit_normalization(
    config: RunConfig, plan: ModelPlan, train: list[Sample]
) -> tuple[ModelPlan, dict[str, Any]]:
    """The plan with the training split's input statistics where its normalisation takes
    them (``train_stats``, ``batch``), and what the normalisation is, for ``results.json``."""
    if plan.spec is None:
        return plan, {"method": "none (text only)"}
    summary: dict[str, Any] = {"method": plan.normalization}
    spec = plan.spec
    if plan.normalization in FROM_TRAINING:
        limit = config.model.get("normalization_images", DEFAULT_SAMPLE_IMAGES)
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise TrainingError(f"[model] normalization_images must be a number, not {limit!r}")
        statistics = training_statistics(train, spec, limit, config.train.seed)
        spec = replace(spec, mean=statistics.mean, std=statistics.std)
        summary["images"] = statistics.images
        log.info(
            "input mean %s, std %s over %d training images", spec.mean, spec.std, statistics.images
        )
    summary.update(mean=list(spec.mean), std=list(spec.std))
    return replace(plan, spec=spec), summary


def build_classifier(plan: ModelPlan, train: list[Sample], text_source: str) -> torch.nn.Module:
    """Build a fresh model for a training part (a word vocabulary is fitted on it)."""
    n_labels = len(VOCABULARIES[plan.vocabulary])
    vocabulary = None
    if plan.architecture["text_encoder"].get("kind") == "token_ffn":
        size = int(plan.architecture["text_encoder"].get("vocab_size", 5000))
        texts = [t for t in (sample_text(s, text_source, plan.cleaning) for s in train) if t]
        vocabulary = WordVocabulary.fit(texts, size)
    if plan.text_only:
        return TextOnlyClassifier(plan.architecture, n_labels, vocabulary)
    assert plan.spec is not None
    model = build_model(
        plan.architecture,
        n_labels,
        in_channels=plan.spec.channels,
        load_image_weights=True,
        vocabulary=vocabulary,
    )
    if not model.image_encoder.pretrained:
        log.warning(
            "%s starts from random weights: no ImageNet weights in the torch cache or by path",
            plan.architecture["image_encoder"],
        )
    return model


def _splits(config: RunConfig, data: LabelledData) -> tuple[dict[str, list[Sample]], int]:
    """The train/val/test parts the config asks for, and how many leaked samples were dropped
    (negative: how many leaked patients were kept, with ``leakage = "warn"``)."""
    how = config.data.get("split", "patient")
    dropped = 0
    if how == "given":
        parts = {name: data.split(name) for name in ("train", "val", "test")}
        if not parts["train"] or not parts["test"]:
            raise TrainingError(f"{data.name} has no given train/test split")
        if not parts["val"]:
            carved = patient_split(parts["train"], {"train": 0.9, "val": 0.1}, config.train.seed)
            parts["train"], parts["val"] = carved["train"], carved["val"]
        policy = config.data.get("leakage", "fail")
        if policy == "drop":
            parts, dropped = drop_leaked(parts)
            log.warning(
                "%s: the given split puts patients in more than one split; dropped %d samples "
                "of val/test whose patient is in an earlier split",
                data.name,
                dropped,
            )
        elif policy == "warn":
            # Only to reproduce a published split's figures: the card says they are inflated.
            dropped = -len(leaked_patients(parts))
            log.warning("%s: %d patients are in more than one split", data.name, -dropped)
            return parts, dropped
        elif policy != "fail":
            raise TrainingError("[data] leakage must be 'fail', 'drop' or 'warn'")
    elif how == "patient":
        fractions = config.data.get("fractions", {"train": 0.8, "val": 0.1, "test": 0.1})
        parts = patient_split(data.samples, fractions, config.train.seed)
    elif how == "mixed":
        parts = _mixed_split(config, data)
    else:
        raise TrainingError("[data] split must be 'given', 'patient' or 'mixed'")
    check_for_leakage(parts)
    return parts, dropped


def _mixed_split(config: RunConfig, data: LabelledData) -> dict[str, list[Sample]]:
    """Each source's given split where it has one (a tenth of its train patients carved out for
    validation when it has no val part), one patient-level split over all other samples
    together, so that a patient in two subsets of one population is on one side."""
    names = ("train", "val", "test")
    parts: dict[str, list[Sample]] = {name: [] for name in names}
    unlabelled = [s for s in data.samples if data.given_split.get(s.key) == UNLABELLED]
    given = [s for s in data.samples if data.given_split.get(s.key) in names]
    rest = [s for s in data.samples if s.key not in data.given_split]
    for source in sorted({s.source for s in given}):
        own = [s for s in given if s.source == source]
        split = {name: [s for s in own if data.given_split[s.key] == name] for name in names}
        if not split["val"]:
            carved = patient_split(split["train"], {"train": 0.9, "val": 0.1}, config.train.seed)
            split["train"], split["val"] = carved["train"], carved["val"]
        for name in names:
            parts[name] += split[name]
    if rest:
        fractions = config.data.get("fractions", {"train": 0.7, "val": 0.15, "test": 0.15})
        for name, samples in patient_split(rest, fractions, config.train.seed).items():
            parts[name] += samples
    if unlabelled:
        parts[UNLABELLED] = unlabelled_part(unlabelled, parts)
    return parts


def _arrays(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([s.targets for s in samples]), np.stack([s.mask for s in samples])


def _known_labels(samples: list[Sample]) -> np.ndarray:
    """``(N, L)`` targets with NaN where a label is unknown (masked)."""
    targets, mask = _arrays(samples)
    return np.where(mask > 0, targets, np.nan).astype(np.float32)


def _thresholds(
    config: RunConfig, targets: np.ndarray, mask: np.ndarray, probabilities: np.ndarray
) -> list[float]:
    method = str(config.export.get("threshold", "youden"))
    target = float(config.export.get("target_sensitivity", 0.9))
    return [
        choose_threshold(
            targets[mask[:, j] > 0, j], probabilities[mask[:, j] > 0, j], method, target
        )
        for j in range(targets.shape[1])
    ]


def _fit(
    config: RunConfig,
    plan: ModelPlan,
    train: list[Sample],
    val: list[Sample],
    run_dir: Path,
    resume: bool,
    unlabelled: list[Sample] | None = None,
) -> tuple[Trainer, Any]:
    seed_everything(config.train.seed)
    model = build_classifier(plan, train, config.text_source)
    loss = build_loss(
        str(config.loss.get("name", "bce")),
        train,
        **{k: v for k, v in config.loss.items() if k not in ("name", "contrastive_weight")},
    )
    unlabelled_set = SampleDataset(
        unlabelled or [], plan.spec, plan.cleaning, config.text_source, augment=True
    )
    trainer = make_trainer(
        model,
        loss,
        config.train,
        run_dir,
        config.semisupervised,
        unlabelled_set,
        device=str(config.model.get("device", "auto")),
        label_names=[label.name for label in VOCABULARIES[plan.vocabulary]],
        standardise_batches=plan.normalization == "batch" and plan.spec is not None,
        alignment=build_alignment(config.loss, model),
    )
    train_set = SampleDataset(
        train, plan.spec, plan.cleaning, config.text_source, config.train.augment
    )
    val_set = SampleDataset(val, plan.spec, plan.cleaning, config.text_source)
    result = trainer.fit(train_set, val_set, resume=resume)
    return trainer, result


def run_train(config: RunConfig, resume: bool = True) -> dict[str, Any]:
    """Train, evaluate and export one model; return the results written to ``results.json``."""
    began = time.monotonic()
    data = config.read_data()
    log.info("%s", data.summary())
    for line in data.missing[:20]:
        log.warning("missing: %s", line)
    parts, dropped = _splits(config, data)
    semi = config.semisupervised
    parts = hide_labels(parts, semi.labelled_fraction, config.train.seed)
    plan, normalization = fit_normalization(config, plan_model(config, data), parts["train"])
    run_dir = config.output
    run_dir.mkdir(parents=True, exist_ok=True)
    if semi.uses_unlabelled and not parts.get(UNLABELLED):
        raise TrainingError(
            f"{semi.method} needs unlabelled images: [semisupervised] labelled_fraction < 1 "
            "or a [[data.sources]] entry with split = 'unlabelled'"
        )
    trainer, fit = _fit(
        config, plan, parts["train"], parts["val"], run_dir, resume, parts.get(UNLABELLED)
    )
    names = [label.name for label in VOCABULARIES[data.vocabulary]]

    val_set = SampleDataset(parts["val"], plan.spec, plan.cleaning, config.text_source)
    val_targets, val_mask = _arrays(parts["val"])
    thresholds = _thresholds(config, val_targets, val_mask, trainer.predict(val_set))
    test_set = SampleDataset(parts["test"], plan.spec, plan.cleaning, config.text_source)
    test_probabilities = trainer.predict(test_set)
    test_targets, test_mask = _arrays(parts["test"])
    evaluation = evaluate(
        test_targets, test_mask, test_probabilities, names, thresholds, seed=config.train.seed
    )
    _write_predictions(run_dir / PREDICTIONS_FILE, parts["test"], test_probabilities, names)
    with EventLog(run_dir) as events:
        events.test(evaluation, fit.best_epoch + 1)
    seconds = time.monotonic() - began
    results = {
        "name": config.name,
        "data": data.summary(),
        "splits": split_table(parts),
        "leaked_samples_dropped": dropped,
        "normalization": normalization,
        "best_epoch": fit.best_epoch + 1,
        "epochs_run": len(fit.history),
        "stopped_early": fit.stopped_early,
        "test": evaluation.to_dict(),
        "test_by_source": _by_source(
            parts["test"], test_probabilities, names, thresholds, config.train.seed
        ),
        "view_check": _view_check(parts["test"], test_probabilities, names, config.train.seed),
        "thresholds": dict(zip(names, thresholds, strict=True)),
        "seconds": round(seconds, 1),
        "device": str(trainer.device),
        "image_pretrained": bool(
            isinstance(trainer.model, CxrClassifier) and trainer.model.image_encoder.pretrained
        ),
    }
    results["train_seconds"] = round(sum(row["seconds"] for row in fit.history), 1)
    results["semisupervised"] = {
        "method": semi.method,
        "labelled_fraction": semi.labelled_fraction,
        **label_counts(parts),
        "description": describe(semi, label_counts(parts), config.train.ema_decay),
    }
    results["weights"] = "ema" if config.train.ema_decay > 0 else "student"
    package_config = (
        _package_config(config, plan, trainer.model, data, thresholds, results)
        if isinstance(trainer.model, CxrClassifier)
        else None
    )
    drawing = time.monotonic()
    results["figures"] = _figures(
        config, plan, parts, names, evaluation, test_probabilities, trainer, package_config
    )
    results["figures_seconds"] = round(time.monotonic() - drawing, 1)
    results["roc_png"] = results["figures"]["roc"]
    if config.export and package_config is not None:
        assert isinstance(trainer.model, CxrClassifier)
        results["package"] = str(
            _export(config, package_config, trainer.model, data, parts, evaluation, results)
        )
    (run_dir / REPORT_FILE).write_text(run_report(results, config, evaluation), encoding="utf-8")
    (run_dir / "results.json").write_text(
        json.dumps(results, indent=2, default=_json_default) + "\n"
    )
    return results


def _write_predictions(
    path: Path, samples: list[Sample], probabilities: np.ndarray, names: list[str]
) -> None:
    """Each test sample's key, image and probabilities, for error analysis."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "image", *names])
        for sample, row in zip(samples, probabilities, strict=True):
            writer.writerow([sample.key, sample.image or "", *(f"{p:.6f}" for p in row)])


def _figures(
    config: RunConfig,
    plan: ModelPlan,
    parts: dict[str, list[Sample]],
    names: list[str],
    evaluation: Evaluation,
    probabilities: np.ndarray,
    trainer: Trainer,
    package_config: ModelConfig | None,
) -> dict[str, str]:
    """Draw the run's figures (:mod:`training.plots`) into its directory; name to path."""
    out = config.output
    targets, mask = _arrays(parts["test"])
    figures = {
        "class_distribution": plot_class_distribution(parts, names, out / "class_distribution.png"),
        "confusion": plot_confusion_matrices(evaluation, out / "confusion_test.png"),
        "roc": save_roc_curves(
            targets, mask, probabilities, names, out / "roc_test.png", f"{config.name}: test ROC"
        ),
        "calibration": plot_reliability(
            targets,
            mask,
            probabilities,
            names,
            out / "calibration_test.png",
            f"{config.name}: test calibration",
        ),
    }
    # The reports as the model reads them, or, for a model that reads none, as it would.
    source = "report" if config.text_source == "none" else config.text_source
    texts = {
        split: [t for t in (sample_text(s, source, plan.cleaning) for s in samples) if t]
        for split, samples in parts.items()
    }
    if any(texts.values()):
        figures["word_counts"] = plot_word_counts(texts, out / "report_word_counts.png")
        figures["top_terms"] = plot_top_terms(texts["train"], out / "report_top_terms.png")
    if package_config is not None:
        # A copy: the predictor freezes the model it is given, and export still needs it.
        model = copy.deepcopy(trainer.model)
        predictor = Predictor(LoadedPackage(package_config, model, out), str(trainer.device))
        reports = (
            [_model_text(s, config.text_source) for s in parts["test"]]
            if package_config.uses_text
            else None
        )
        maps = plot_grad_cams(predictor, parts["test"], reports, probabilities, out)
        figures.update({f"gradcam {name}": path for name, path in maps.items()})
    return {name: str(path) for name, path in figures.items()}


def _model_text(sample: Sample, text_source: str) -> str | None:
    """The text of a sample the predictor cleans as the training loader did."""
    return {"report": sample.report, "indication": sample.indication}.get(text_source)


def _by_source(
    samples: list[Sample],
    probabilities: np.ndarray,
    names: list[str],
    thresholds: list[float],
    seed: int,
) -> dict[str, Any]:
    """Test metrics of each source apart (adults and children are different populations)."""
    sources = sorted({s.source for s in samples})
    if len(sources) < 2:
        return {}
    by_source = {}
    for source in sources:
        rows = [i for i, s in enumerate(samples) if s.source == source]
        targets, mask = _arrays([samples[i] for i in rows])
        evaluation = evaluate(targets, mask, probabilities[rows], names, thresholds, seed=seed)
        by_source[source] = evaluation.to_dict()
    return by_source


def _view_check(
    samples: list[Sample], probabilities: np.ndarray, names: list[str], seed: int
) -> dict[str, Any]:
    """:func:`training.metrics.view_check` on the test samples whose dataset gives the view."""
    rows = [i for i, s in enumerate(samples) if s.view in ("AP", "PA")]
    if not rows:
        return {}
    targets, mask = _arrays([samples[i] for i in rows])
    views = [samples[i].view for i in rows]
    check = view_check(targets, mask, probabilities[rows], views, names, seed=seed)
    check["sources"] = sorted({samples[i].source for i in rows})
    return check


def _package_config(
    config: RunConfig,
    plan: ModelPlan,
    model: CxrClassifier,
    data: LabelledData,
    thresholds: list[float],
    results: dict[str, Any],
) -> ModelConfig:
    """The config the run's package gets (before its weights' sha256 is known)."""
    export = config.export
    assert plan.spec is not None
    labels = tuple(
        LabelConfig.from_label(label, threshold)
        for label, threshold in zip(VOCABULARIES[data.vocabulary], thresholds, strict=True)
    )
    return ModelConfig(
        name=str(export.get("name", config.name)),
        version=str(export.get("version", "0.1.0")),
        architecture=model.architecture,
        preprocessing=plan.spec,
        labels=labels,
        trained=True,
        disclaimer=str(
            export.get(
                "disclaimer",
                "Research model, not a medical device: every result requires review by a "
                "radiologist",
            )
        ),
        training_data=f"{data.name}: {data.source}"
        + (f" {results['semisupervised']['description']}" if config.semisupervised.active else ""),
        text_cleaning=plan.cleaning,
        label_vocabulary=data.vocabulary,
        uncertain_policy=config.data.get("uncertain") if data.vocabulary == "chexpert-14" else None,
        normalization=plan.normalization,
    )


def _export(
    config: RunConfig,
    package_config: ModelConfig,
    model: CxrClassifier,
    data: LabelledData,
    parts: dict[str, list[Sample]],
    evaluation: Evaluation,
    results: dict[str, Any],
) -> Path:
    export = config.export
    path = Path(export.get("path", config.output / "package"))
    if path.exists() and any(path.iterdir()):
        # Replace an earlier export of a package, never anything else that happens to be there.
        if not (path / CONFIG_FILE).is_file():
            raise TrainingError(f"export path {path} exists and is not a model package")
        shutil.rmtree(path)
    model.cpu().eval()
    card = model_card(package_config, config, data, parts, evaluation, results)
    written = save_package(model, package_config, path, card)
    load_package(path)  # the node's own loader must accept it, or the export failed
    log.info("exported %s to %s", written.package_id, path)
    external = _external_checks(config, path)
    if external:
        # The card gains what the exported package scored on data no split of the run held.
        results["external"] = external
        card = model_card(package_config, config, data, parts, evaluation, results)
        (path / CARD_FILE).write_text(card, encoding="utf-8")
    return path


def _external_checks(config: RunConfig, package: Path) -> dict[str, Any]:
    """Run each ``[[export.external]]`` check (``name``, ``config``, ``split``) on the
    exported package, the way ``cxrnode evaluate`` does: AUROC with its 95% CI per label."""
    checks = {}
    for entry in config.export.get("external", []):
        check = load_run_config(REPO / entry["config"])
        results = run_evaluate(package, check, str(entry.get("split", "all")))
        cells = [
            f"{row['label']} AUROC {row['auroc']:.3f} "
            f"({row['auroc_ci_low']:.3f}–{row['auroc_ci_high']:.3f}), "
            f"n {row['n']}, {row['positives']} positive"
            for row in results["metrics"]["labels"]
        ]
        source = f" (`cxrnode evaluate` on {entry['config']})"
        checks[str(entry["name"])] = "; ".join(cells) + source
    return checks


def run_crossval(config: RunConfig) -> dict[str, Any]:
    """K-fold cross-validation of the config and its variants on the same patient folds."""
    began = time.monotonic()
    data = config.read_data()
    log.info("%s", data.summary())
    k = int(config.data.get("folds", 5))
    folds = patient_folds(data.samples, k, config.train.seed)
    variants = [{"name": "model"}] + config.variants
    names = [label.name for label in VOCABULARIES[data.vocabulary]]
    results: dict[str, Any] = {
        "name": config.name,
        "data": data.summary(),
        "folds": k,
        "variants": {},
    }
    for overrides in variants:
        variant = config.variant(overrides) if overrides["name"] != "model" else config
        kind = overrides.get("kind", "model")
        per_fold = []
        for fold, (train_all, test) in enumerate(folds):
            carved = patient_split(train_all, {"train": 0.9, "val": 0.1}, config.train.seed + fold)
            train, val = carved["train"], carved["val"]
            check_for_leakage({"train": train, "val": val, "test": test})
            plan = plan_model(variant, data)
            if kind == "tfidf_logreg":
                val_p, test_p = _tfidf(variant, plan, train, val, test)
            elif kind == "model":
                plan, _ = fit_normalization(variant, plan, train)
                run_dir = config.output / overrides["name"] / f"fold{fold + 1}"
                trainer, _ = _fit(variant, plan, train, val, run_dir, resume=True)
                val_p = trainer.predict(
                    SampleDataset(val, plan.spec, plan.cleaning, variant.text_source)
                )
                test_p = trainer.predict(
                    SampleDataset(test, plan.spec, plan.cleaning, variant.text_source)
                )
            else:
                raise TrainingError(f"variant kind must be 'model' or 'tfidf_logreg', not {kind!r}")
            val_t, val_m = _arrays(val)
            thresholds = _thresholds(variant, val_t, val_m, val_p)
            test_t, test_m = _arrays(test)
            evaluation = evaluate(test_t, test_m, test_p, names, thresholds, bootstrap=0)
            per_fold.append(evaluation.to_dict())
            log.info(
                "%s fold %d: macro AUROC %.4f", variant.name, fold + 1, evaluation.macro("auroc")
            )
        results["variants"][overrides["name"]] = _summarise_folds(per_fold, overrides)
    results["seconds"] = round(time.monotonic() - began, 1)
    config.output.mkdir(parents=True, exist_ok=True)
    (config.output / "results.json").write_text(
        json.dumps(results, indent=2, default=_json_default) + "\n"
    )
    (config.output / "report.md").write_text(crossval_markdown(results))
    return results


def _tfidf(
    config: RunConfig, plan: ModelPlan, train: list[Sample], val: list[Sample], test: list[Sample]
) -> tuple[np.ndarray, np.ndarray]:
    def texts(samples: list[Sample]) -> list[str | None]:
        return [sample_text(s, config.text_source, plan.cleaning) for s in samples]

    targets, _ = _arrays(train)
    return (
        tfidf_logreg_probabilities(texts(train), targets, texts(val)),
        tfidf_logreg_probabilities(texts(train), targets, texts(test)),
    )


def _summarise_folds(per_fold: list[dict[str, Any]], overrides: dict[str, Any]) -> dict[str, Any]:
    keys = ("auroc", "average_precision", "accuracy", "precision", "recall", "f1")
    summary: dict[str, Any] = {"description": overrides.get("description", ""), "macro": {}}
    for key in keys:
        values = [fold["macro"][key] for fold in per_fold if not math.isnan(fold["macro"][key])]
        summary["macro"][key] = {"mean": float(np.mean(values)), "sd": float(np.std(values))}
    if len(per_fold[0]["labels"]) == 1:
        summary["specificity"] = float(np.mean([f["labels"][0]["specificity"] for f in per_fold]))
    summary["per_fold_auroc"] = [fold["macro"]["auroc"] for fold in per_fold]
    return summary


def crossval_markdown(results: dict[str, Any]) -> str:
    """The cross-validation results as a markdown table."""
    lines = [
        f"# {results['name']}",
        "",
        f"{results['data']}; {results['folds']}-fold patient-level cross-validation.",
        "",
        "| variant | AUROC | accuracy | recall (abnormal) | precision | F1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, summary in results["variants"].items():
        m = summary["macro"]
        cells = [
            f"{m[k]['mean']:.3f} ± {m[k]['sd']:.3f}"
            for k in ("auroc", "accuracy", "recall", "precision", "f1")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Macro means over labels, then mean ± sd over folds; thresholds by Youden's J on each "
        "fold's validation part.",
        "",
    ]
    return "\n".join(lines)


def run_evaluate(
    package_path: Path,
    config: RunConfig,
    split: str = "test",
    retrieval: bool = False,
    explanations: bool = False,
    ig_steps: int | None = None,
) -> dict[str, Any]:
    """Evaluate a model package on a config's data (its test part, or ``all``); with
    ``retrieval``, also its embeddings for case retrieval (``training.retrieval``); with
    ``explanations``, also the agreement of Grad-CAM and Integrated Gradients and their
    localisation on RSNA boxes (``training.explanations``, IG with ``ig_steps`` steps)."""
    package = load_package(package_path)
    data = config.read_data()
    if data.vocabulary != package.config.label_vocabulary:
        raise TrainingError(
            f"package predicts {package.config.label_vocabulary!r}, "
            f"data is labelled {data.vocabulary!r}"
        )
    splits = _splits(config, data)[0]
    samples = data.samples if split == "all" else splits[split]
    dataset = _dataset_for(package, config, samples)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probabilities = predict(package.model.to(device), dataset, 32, device)
    targets, mask = _arrays(samples)
    names = [label.name for label in package.config.labels]
    evaluation = evaluate(targets, mask, probabilities, names, package.config.thresholds)
    out = config.output / "evaluate"
    png = save_roc_curves(
        targets,
        mask,
        probabilities,
        names,
        out / f"roc_{split}.png",
        f"{package.config.package_id}: {split}",
    )
    results = {
        "package": package.config.package_id,
        "data": data.summary(),
        "split": split,
        "n": len(samples),
        "metrics": evaluation.to_dict(),
        "roc_png": str(png),
        "host": platform.node(),
    }
    if retrieval:
        results["retrieval"] = _retrieval(
            package, config, dataset, samples, splits["train"], device
        )
    if explanations:
        results["explanations"] = _explanations(package, config, samples, ig_steps, out)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    return results


def _dataset_for(package: Any, config: RunConfig, samples: list[Sample]) -> SampleDataset:
    """The samples as the package's model reads them."""
    return SampleDataset(
        samples,
        package.config.preprocessing,
        package.config.text_cleaning,
        config.text_source if package.config.uses_text else "none",
    )


def _retrieval(
    package: Any,
    config: RunConfig,
    dataset: SampleDataset,
    samples: list[Sample],
    train: list[Sample],
    device: torch.device,
) -> dict[str, Any]:
    """Seed 003's retrieval protocols over the package's embeddings
    (:func:`training.retrieval.retrieval_protocols`)."""
    from training.retrieval import retrieval_protocols

    model = package.model.to(device)
    if not isinstance(model, CxrClassifier):
        raise TrainingError("retrieval needs an image model's embeddings")
    gallery = _dataset_for(package, config, train)
    return retrieval_protocols(
        model, dataset, _known_labels(samples), gallery, _known_labels(train), device
    )


def _explanations(
    package: Any, config: RunConfig, samples: list[Sample], steps: int | None, out: Path
) -> dict[str, Any]:
    """Seed 003's attribution agreement, and localisation where the data has RSNA boxes."""
    from models.attribution import DEFAULT_STEPS
    from training.explanations import evaluate_explanations, explanations_report, read_rsna_boxes

    boxes = None
    if config.data.get("reader") == "rsna_pneumonia":
        root = expand(str(config.data["root"]))
        if (root / "example_train_labels.csv").is_file():
            boxes = read_rsna_boxes(root)
    figures = evaluate_explanations(package, samples, boxes, steps=steps or DEFAULT_STEPS)
    report = out / "explanations.md"
    report.write_text(explanations_report(package.config.package_id, figures))
    return {**figures, "report": str(report)}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
