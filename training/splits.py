"""Patient-level splits, the leakage check, and class balancing.

A patient's images look alike; with one patient on both sides of a split the test set measures
memory, not diagnosis (seed 004's ``check_for_leakage``). Every split here is made of whole
patients, and every run calls :func:`check_for_leakage` on what it is about to use.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from training.datasets import Sample
from training.errors import LeakageError, TrainingError


def check_for_leakage(splits: Mapping[str, Sequence[Sample]]) -> None:
    """Raise if any patient appears in more than one split.

    Raises
    ------
    LeakageError
        Naming the splits and up to five of the patients they share.
    """
    owner: dict[str, str] = {}
    shared: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, samples in splits.items():
        for patient in sorted({s.patient_id for s in samples}):
            first = owner.setdefault(patient, name)
            if first != name:
                shared[(first, name)].append(patient)
    if shared:
        parts = [
            f"{a}/{b}: {len(p)} patients (e.g. {', '.join(p[:5])})" for (a, b), p in shared.items()
        ]
        raise LeakageError("patients appear in more than one split: " + "; ".join(parts))


def leaked_patients(splits: Mapping[str, Sequence[Sample]]) -> set[str]:
    """Patients found in more than one split."""
    seen: dict[str, str] = {}
    leaked = set()
    for name, samples in splits.items():
        for patient in {s.patient_id for s in samples}:
            if seen.setdefault(patient, name) != name:
                leaked.add(patient)
    return leaked


def drop_leaked(splits: Mapping[str, Sequence[Sample]]) -> tuple[dict[str, list[Sample]], int]:
    """Repair a given split: drop from each later split the samples of patients an earlier one
    holds (the order of ``splits``: train, then val, then test).

    Returns
    -------
    (dict, int)
        The repaired splits and how many samples were dropped.
    """
    seen: set[str] = set()
    repaired: dict[str, list[Sample]] = {}
    dropped = 0
    for name, samples in splits.items():
        kept = [s for s in samples if s.patient_id not in seen]
        dropped += len(samples) - len(kept)
        repaired[name] = kept
        seen |= {s.patient_id for s in kept}
    check_for_leakage(repaired)
    return repaired, dropped


def _patients(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_patient[sample.patient_id].append(sample)
    return by_patient


def _stratified_patient_order(by_patient: Mapping[str, list[Sample]], seed: int) -> list[str]:
    """Patients shuffled, then grouped by their rarest positive label, so that dealing them
    round-robin spreads every label's positives evenly over the parts."""
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    totals = np.sum([s.targets for s in sum(by_patient.values(), [])], axis=0)

    def stratum(patient: str) -> int:
        positives = np.max([s.targets for s in by_patient[patient]], axis=0) > 0
        if not positives.any():
            return -1
        return int(np.argmin(np.where(positives, totals, np.inf)))

    return sorted(patients, key=stratum)  # stable: the shuffle order is kept within a stratum


def patient_split(
    samples: Sequence[Sample],
    fractions: Mapping[str, float],
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """Split samples into named parts of whole patients, label-stratified.

    Parameters
    ----------
    samples : sequence of Sample
    fractions : mapping of str to float
        E.g. ``{"train": 0.8, "val": 0.1, "test": 0.1}``; they must sum to 1.
    seed : int
        The split is a function of the samples and the seed only.
    """
    if not fractions or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise TrainingError(f"split fractions must sum to 1: {dict(fractions)}")
    by_patient = _patients(samples)
    order = _stratified_patient_order(by_patient, seed)
    names = list(fractions)
    weights = np.array([fractions[n] for n in names])
    counts = np.zeros(len(names))
    parts: dict[str, list[Sample]] = {name: [] for name in names}
    for patient in order:
        # Deal each patient to the part furthest below its share so far.
        deficit = weights * (counts.sum() + 1) - counts
        choice = int(np.argmax(deficit))
        counts[choice] += 1
        parts[names[choice]].extend(by_patient[patient])
    check_for_leakage(parts)
    return parts


def patient_folds(
    samples: Sequence[Sample], k: int, seed: int = 0
) -> list[tuple[list[Sample], list[Sample]]]:
    """K-fold cross-validation folds of whole patients, label-stratified.

    Returns
    -------
    list of (train, test)
        ``k`` pairs; every sample is in exactly one test part.
    """
    if k < 2:
        raise TrainingError(f"k-fold needs k >= 2, not {k}")
    by_patient = _patients(samples)
    if len(by_patient) < k:
        raise TrainingError(f"{len(by_patient)} patients cannot make {k} folds")
    order = _stratified_patient_order(by_patient, seed)
    fold_of = {patient: i % k for i, patient in enumerate(order)}
    folds = []
    for fold in range(k):
        test = [s for s in samples if fold_of[s.patient_id] == fold]
        train = [s for s in samples if fold_of[s.patient_id] != fold]
        check_for_leakage({"train": train, "test": test})
        folds.append((train, test))
    return folds


def positive_frequencies(samples: Sequence[Sample]) -> np.ndarray:
    """Fraction of positives per label, over the entries the masks keep."""
    targets = np.stack([s.targets for s in samples])
    mask = np.stack([s.mask for s in samples])
    return (targets * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1.0)


def seed004_weights(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 004's balancing weights: ``w_pos = freq_negative``, ``w_neg = freq_positive``.

    With them positives and negatives of every label contribute equally to the loss.
    """
    freq_pos = torch.tensor(positive_frequencies(samples), dtype=torch.float32)
    return 1.0 - freq_pos, freq_pos


def class_weights(samples: Sequence[Sample]) -> torch.Tensor:
    """Per label, the ``(negative, positive)`` class weights ``n / (2 n_class)`` (seed 000's
    class-weighted cross-entropy; sklearn's "balanced")."""
    freq_pos = torch.tensor(positive_frequencies(samples), dtype=torch.float32).clamp(
        1e-6, 1 - 1e-6
    )
    return torch.stack([0.5 / (1.0 - freq_pos), 0.5 / freq_pos], dim=-1)


def balanced_sampler(
    samples: Sequence[Sample], generator: torch.Generator
) -> WeightedRandomSampler:
    """A sampler drawing normal and abnormal (any positive label) studies equally often."""
    abnormal = np.array([float(s.targets.max() > 0) for s in samples])
    n_abnormal = max(abnormal.sum(), 1.0)
    n_normal = max(len(samples) - abnormal.sum(), 1.0)
    weights = np.where(abnormal > 0, 0.5 / n_abnormal, 0.5 / n_normal)
    return WeightedRandomSampler(
        torch.tensor(weights, dtype=torch.double), len(samples), generator=generator
    )
