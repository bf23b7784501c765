"""Evaluation metrics, operating thresholds, calibration and bootstrap confidence intervals.

Written on numpy so that what the card reports is computed here, in one place, and checked
against scikit-learn by the tests. Every per-label figure skips the entries a mask leaves out
(ignored uncertain labels); a label with one class only in the evaluated data has no AUROC
(``nan``) and is left out of macro means, which the card says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.errors import TrainingError

THRESHOLD_METHODS = ("youden", "sensitivity", "fixed")


def _checked(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(y, dtype=np.float64).ravel(), np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise TrainingError(f"targets {y.shape} and scores {s.shape} differ in shape")
    return y, s


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores at half), ``nan`` if one class."""
    y, s = _checked(y, s)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_aurocs(targets: np.ndarray, mask: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """AUROC of each label of ``(N, L)`` arrays, masked entries left out (``nan``: one class)."""
    return [
        roc_auc(targets[mask[:, j] > 0, j], probabilities[mask[:, j] > 0, j])
        for j in range(targets.shape[1])
    ]


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the values that are not ``nan`` (``nan`` when none is): a macro mean over the
    labels that have the figure."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at each distinct score taken as threshold (descending)."""
    y, s = _checked(y, s)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision, ``sum_n (R_n - R_{n-1}) P_n`` ; ``nan`` without positives."""
    y, s = _checked(y, s)
    if (y == 1).sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class Confusion:
    """Counts at one threshold and what follows from them."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def at(cls, y: np.ndarray, s: np.ndarray, threshold: float) -> Confusion:
        y, s = _checked(y, s)
        pred = s >= threshold
        return cls(
            int((pred & (y == 1)).sum()),
            int((pred & (y == 0)).sum()),
            int((~pred & (y == 0)).sum()),
            int((~pred & (y == 1)).sum()),
        )

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.tp + self.fp + self.tn + self.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 or math.isnan(p + r) else 2 * p * r / (p + r)


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def choose_threshold(
    y: np.ndarray, s: np.ndarray, method: str = "youden", target_sensitivity: float = 0.9
) -> float:
    """Choose an operating threshold on validation data.

    ``youden`` maximises sensitivity + specificity - 1; ``sensitivity`` takes the highest
    threshold whose sensitivity reaches ``target_sensitivity``. With one class only, 0.5.
    """
    if method not in THRESHOLD_METHODS:
        raise TrainingError(f"threshold method must be one of {THRESHOLD_METHODS}")
    y, s = _checked(y, s)
    if method == "fixed" or (y == 1).sum() == 0 or (y == 0).sum() == 0:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, s)
    if method == "youden":
        best = int(np.argmax(tpr[1:] - fpr[1:])) + 1
    else:
        reaching = np.flatnonzero(tpr >= target_sensitivity)
        best = int(reaching[0]) if len(reaching) else len(tpr) - 1
        best = max(best, 1)
    return float(min(max(thresholds[best], 0.0), 1.0))


@dataclass(frozen=True)
class Calibration:
    """Reliability of probabilities: expected calibration error, Brier score, per-bin table."""

    ece: float
    brier: float
    bins: tuple[
        tuple[float, float, float, int], ...
    ]  # (mean predicted, observed rate, upper edge, n)


def calibration(y: np.ndarray, s: np.ndarray, n_bins: int = 10) -> Calibration:
    """Expected calibration error over ``n_bins`` equal-width bins, and the Brier score."""
    y, s = _checked(y, s)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        chosen = which == b
        n = int(chosen.sum())
        if n:
            mean_p, rate = float(s[chosen].mean()), float(y[chosen].mean())
            ece += n / len(s) * abs(mean_p - rate)
            bins.append((mean_p, rate, float(edges[b + 1]), n))
    return Calibration(float(ece), float(np.mean((s - y) ** 2)), tuple(bins))


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: np.ndarray,
    s: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric (resamples with one class skipped)."""
    y, s = _checked(y, s)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        pick = rng.integers(0, len(y), len(y))
        value = metric(y[pick], s[pick])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


@dataclass
class LabelMetrics:
    """Every figure of one label at its threshold."""

    name: str
    n: int
    positives: int
    threshold: float
    auroc: float
    auroc_ci: tuple[float, float]
    average_precision: float
    confusion: Confusion
    calibration: Calibration

    def row(self) -> dict[str, Any]:
        c = self.confusion
        return {
            "label": self.name,
            "n": self.n,
            "positives": self.positives,
            "threshold": round(self.threshold, 4),
            "auroc": self.auroc,
            "auroc_ci_low": self.auroc_ci[0],
            "auroc_ci_high": self.auroc_ci[1],
            "average_precision": self.average_precision,
            "accuracy": c.accuracy,
            "precision": c.precision,
            "recall": c.recall,
            "specificity": c.specificity,
            "f1": c.f1,
            "tp": c.tp,
            "fp": c.fp,
            "tn": c.tn,
            "fn": c.fn,
            "ece": self.calibration.ece,
            "brier": self.calibration.brier,
        }


@dataclass
class Evaluation:
    """Per-label metrics and their macro means (labels without an AUROC left out)."""

    labels: list[LabelMetrics] = field(default_factory=list)

    def macro(self, key: str) -> float:
        return nan_mean([row[key] for row in self.rows()])

    def rows(self) -> list[dict[str, Any]]:
        return [label.row() for label in self.labels]

    def to_dict(self) -> dict[str, Any]:
        keys = ("auroc", "average_precision", "accuracy", "precision", "recall", "f1", "ece")
        return {"labels": self.rows(), "macro": {k: self.macro(k) for k in keys}}


def evaluate(
    targets: np.ndarray,
    mask: np.ndarray,
    probabilities: np.ndarray,
    names: Sequence[str],
    thresholds: Sequence[float],
    bootstrap: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Evaluate ``(N, L)`` probabilities against targets at the given thresholds."""
    result = Evaluation()
    for j, name in enumerate(names):
        kept = mask[:, j] > 0
        y, s = targets[kept, j], probabilities[kept, j]
        result.labels.append(
            LabelMetrics(
                name=name,
                n=int(kept.sum()),
                positives=int(y.sum()),
                threshold=float(thresholds[j]),
                auroc=roc_auc(y, s),
                auroc_ci=bootstrap_ci(roc_auc, y, s, bootstrap, seed)
                if bootstrap
                else (math.nan, math.nan),
                average_precision=average_precision(y, s),
                confusion=Confusion.at(y, s, thresholds[j]),
                calibration=calibration(y, s),
            )
        )
    return result


def view_check(
    targets: np.ndarray,
    mask: np.ndarray,
    probabilities: np.ndarray,
    views: Sequence[str | None],
    names: Sequence[str],
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Whether a model reads the finding or the view: per label, the AUROC of the view alone
    (score 1 for AP, 0 for PA: 0.5 means the view says nothing about the label, far from it in
    either direction means it does) beside the model's AUROC within AP and within PA images.

    Samples without a PA/AP view are left out. Every AUROC comes with a 95% bootstrap CI.
    """
    views = np.array([(v or "").upper() for v in views])
    known = np.isin(views, ("AP", "PA"))
    result: dict[str, Any] = {
        "n": int(known.sum()),
        "ap": int((views == "AP").sum()),
        "pa": int((views == "PA").sum()),
        "labels": {},
    }

    def auroc_with_ci(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
        low, high = bootstrap_ci(roc_auc, y, s, bootstrap, seed) if bootstrap else (math.nan,) * 2
        return {"auroc": roc_auc(y, s), "ci": [low, high], "n": len(y), "positives": int(y.sum())}

    for j, name in enumerate(names):
        kept = known & (mask[:, j] > 0)
        y, s, v = targets[kept, j], probabilities[kept, j], views[kept]
        result["labels"][name] = {
            "view_alone": auroc_with_ci(y, (v == "AP").astype(float)),
            "model_within_ap": auroc_with_ci(y[v == "AP"], s[v == "AP"]),
            "model_within_pa": auroc_with_ci(y[v == "PA"], s[v == "PA"]),
            "model_all": auroc_with_ci(y, s),
        }
    return result
