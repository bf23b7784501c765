"""Our metrics equal scikit-learn's on fixed inputs (ties included)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from training.metrics import (
    Confusion,
    average_precision,
    bootstrap_ci,
    calibration,
    choose_threshold,
    evaluate,
    roc_auc,
    roc_curve,
)

rng = np.random.default_rng(7)
Y = rng.integers(0, 2, 300).astype(float)
S = np.round(np.clip(Y * 0.3 + rng.normal(0.4, 0.25, 300), 0, 1), 2)  # rounded: many ties


def test_auroc_roc_curve_and_average_precision_match_sklearn() -> None:
    assert roc_auc(Y, S) == pytest.approx(skm.roc_auc_score(Y, S), abs=1e-12)
    assert average_precision(Y, S) == pytest.approx(skm.average_precision_score(Y, S), abs=1e-12)
    fpr, tpr, _ = roc_curve(Y, S)
    sk_fpr, sk_tpr, _ = skm.roc_curve(Y, S, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    assert np.isnan(roc_auc(np.zeros(5), np.arange(5.0)))


def test_threshold_metrics_match_sklearn() -> None:
    c = Confusion.at(Y, S, 0.55)
    predicted = S >= 0.55
    assert c.accuracy == pytest.approx(skm.accuracy_score(Y, predicted))
    assert c.precision == pytest.approx(skm.precision_score(Y, predicted))
    assert c.recall == pytest.approx(skm.recall_score(Y, predicted))
    assert c.f1 == pytest.approx(skm.f1_score(Y, predicted))
    tn, fp, fn, tp = skm.confusion_matrix(Y, predicted).ravel()
    assert (c.tp, c.fp, c.tn, c.fn) == (tp, fp, tn, fn)


def test_youden_and_sensitivity_thresholds() -> None:
    youden = choose_threshold(Y, S, "youden")
    fpr, tpr, thresholds = skm.roc_curve(Y, S)
    assert youden == pytest.approx(thresholds[np.argmax(tpr - fpr)])
    sensitive = choose_threshold(Y, S, "sensitivity", target_sensitivity=0.95)
    assert Confusion.at(Y, S, sensitive).recall >= 0.95


def test_calibration_and_bootstrap() -> None:
    perfect = calibration(np.array([0, 0, 1, 1.0]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert perfect.ece == 0.0 and perfect.brier == 0.0
    assert calibration(Y, S).brier == pytest.approx(skm.brier_score_loss(Y, S))
    low, high = bootstrap_ci(roc_auc, Y, S, n=200, seed=0)
    assert low < roc_auc(Y, S) < high


def test_evaluate_skips_masked_entries() -> None:
    targets = np.stack([Y, 1 - Y], axis=1)
    scores = np.stack([S, 1 - S], axis=1)
    mask = np.ones_like(targets)
    mask[:100, 1] = 0
    result = evaluate(targets, mask, scores, ["a", "b"], [0.5, 0.5], bootstrap=0)
    assert result.labels[1].n == 200
    assert result.labels[1].auroc == pytest.approx(skm.roc_auc_score(1 - Y[100:], 1 - S[100:]))
