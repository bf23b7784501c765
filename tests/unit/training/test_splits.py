"""Patient-level splits and the leakage check, on real NIH patients."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from training.datasets import read_nih_folders
from training.errors import LeakageError
from training.splits import (
    check_for_leakage,
    class_weights,
    drop_leaked,
    patient_folds,
    patient_split,
    seed004_weights,
)


@pytest.fixture(scope="module")
def nih(nih_thumbs: Path, nih_data_entry: Path):
    return read_nih_folders(nih_thumbs, data_entry_csv=nih_data_entry)


def test_patient_split_keeps_patients_whole_and_is_reproducible(nih) -> None:
    parts = patient_split(nih.samples, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    check_for_leakage(parts)
    patients = {n: {s.patient_id for s in p} for n, p in parts.items()}
    assert not patients["train"] & patients["test"]
    assert sum(len(p) for p in parts.values()) == len(nih.samples)
    again = patient_split(nih.samples, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert [s.key for s in again["test"]] == [s.key for s in parts["test"]]
    # Stratified: each part has abnormal and normal studies.
    assert all(0 < sum(s.targets[0] for s in p) < len(p) for p in parts.values())


def test_leakage_check_catches_a_planted_overlap(nih) -> None:
    parts = patient_split(nih.samples, {"train": 0.8, "test": 0.2}, seed=0)
    planted = replace(parts["test"][0], key="planted.png", patient_id=parts["train"][0].patient_id)
    with pytest.raises(LeakageError, match="train/test: 1 patients"):
        check_for_leakage({"train": parts["train"], "test": [*parts["test"], planted]})


def test_leakage_check_finds_the_real_overlap_in_the_course_split(nih) -> None:
    given = {n: nih.split(n) for n in ("train", "val", "test")}
    with pytest.raises(LeakageError, match="train/test"):
        check_for_leakage(given)
    repaired, dropped = drop_leaked(given)
    check_for_leakage(repaired)
    assert dropped > 0 and len(repaired["train"]) == 600


def test_folds_cover_every_sample_once(nih) -> None:
    folds = patient_folds(nih.samples, 5, seed=0)
    tested = [s.key for _, test in folds for s in test]
    assert sorted(tested) == sorted(s.key for s in nih.samples)


def test_seed004_and_class_weights_balance_the_classes(nih) -> None:
    w_pos, w_neg = seed004_weights(nih.split("train"))
    assert float(w_pos[0] + w_neg[0]) == pytest.approx(1.0)
    assert float(w_pos[0]) == pytest.approx(0.5)  # 300 of 600 abnormal
    weights = class_weights(nih.split("train"))
    assert weights[0].tolist() == pytest.approx([1.0, 1.0])
