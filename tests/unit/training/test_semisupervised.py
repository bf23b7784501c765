"""Semi-supervised training on tiny real NIH subsets: hidden labels, the EMA teacher, the
mean-teacher and pseudo-label terms, and a run whose package the node's predictor serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.network import build_model
from models.package import load_package
from models.predictor import Predictor
from models.preprocess import PreprocessSpec, image_file_to_display
from models.text import TextCleaning
from support.training_runs import tiny_run_config
from training.config import load_run_config
from training.datasets import read_nih_folders
from training.errors import TrainingError
from training.loader import SampleDataset
from training.losses import MaskedBCE
from training.run import _splits, run_train
from training.semisupervised import (
    UNLABELLED,
    SemiSupervisedSettings,
    SemiSupervisedTrainer,
    consistency_loss,
    hide_labels,
    label_counts,
    pseudo_labels,
    sigmoid_rampup,
)
from training.splits import check_for_leakage, patient_split
from training.trainer import Trainer, TrainSettings, predict, seed_everything

REPO = Path(__file__).parents[3]
SPEC = PreprocessSpec(image_size=32, channels=3)
SHARED_NIH_PATIENTS = {"61", "150", "165", "193", "211", "218"}
ARCH = {"image_encoder": "resnet18", "hidden_dim": 0, "dropout": 0.1}


@pytest.fixture(scope="module")
def parts(nih_thumbs: Path, nih_data_entry: Path):
    data = read_nih_folders(nih_thumbs, data_entry_csv=nih_data_entry)
    return patient_split(data.samples[::5], {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)


def test_hidden_labels_are_a_seeded_fraction_of_the_training_patients(parts) -> None:
    hidden = hide_labels(parts, 0.25, seed=1)
    check_for_leakage(hidden)  # by patient: nobody is both labelled and unlabelled
    counts = label_counts(hidden)
    patients = len({s.patient_id for s in parts["train"]})
    assert counts["labelled_patients"] + counts["unlabelled_patients"] == patients
    assert abs(counts["labelled_patients"] - 0.25 * patients) <= 1
    assert counts["labelled_samples"] + counts["unlabelled_samples"] == len(parts["train"])
    # Nothing of a hidden label is left to learn from; val and test keep theirs.
    assert all(not s.targets.any() and not s.mask.any() for s in hidden[UNLABELLED])
    assert hidden["val"] is parts["val"] and hidden["test"] is parts["test"]
    # Stratified: the labelled part has both classes.
    assert 0 < sum(s.targets[0] for s in hidden["train"]) < len(hidden["train"])
    keys = [s.key for s in hidden["train"]]
    assert keys == [s.key for s in hide_labels(parts, 0.25, seed=1)["train"]]
    assert keys != [s.key for s in hide_labels(parts, 0.25, seed=2)["train"]]
    assert hide_labels(parts, 1.0, seed=1) is parts


def test_bad_semisupervised_settings_are_refused_with_the_key(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="method must be one of"):
        SemiSupervisedSettings(method="fixmatch")
    with pytest.raises(TrainingError, match="unknown \\[semisupervised\\] keys"):
        SemiSupervisedSettings.from_dict({"labeled_fraction": 0.1})
    config = REPO / "training" / "configs" / "semisup-abnormal-pneumonia-10pct.toml"
    with pytest.raises(TrainingError, match="EMA teacher: set \\[train\\] ema_decay"):
        load_run_config(config, {"train": {"ema_decay": 0.0}})
    with pytest.raises(TrainingError, match="need \\[run\\] kind = 'train'"):
        load_run_config(config, {"run": {"kind": "crossval"}})
    nothing_unlabelled = tiny_run_config(tmp_path, 'semisupervised.method="mean_teacher"')
    with pytest.raises(TrainingError, match="mean_teacher needs unlabelled images"):
        run_train(nothing_unlabelled)


def test_a_source_of_unlabelled_images_joins_without_labels_or_test_patients(
    tmp_path: Path, shared_data: Path
) -> None:
    config = tmp_path / "mixed.toml"
    config.write_text(
        f"""
[run]
output = "{tmp_path / "run"}"
[data]
reader = "mixed"
vocabulary = "abnormal-pneumonia"
split = "mixed"
[[data.sources]]
reader = "nih_labelled_folders"
population = "nih"
root = "${{CXRNODE_SHARED_DATA}}/nih-chestxray14-1000-darkcovidnet"
[[data.sources]]
reader = "nih_folders"
population = "nih"
split = "unlabelled"
vocabulary = "abnormal-pneumonia"
root = "${{CXRNODE_SHARED_DATA}}/nih-chestxray14-thumbs-kcr2019/NIH1000"
data_entry_csv = "${{CXRNODE_SHARED_DATA}}/nih-chestxray14-samples/Data_Entry_2017_v2020.csv.gz"
"""
    )
    with pytest.raises(TrainingError, match="unlabelled sources need"):
        load_run_config(config, {"run": {"kind": "crossval"}})
    run = load_run_config(config)
    data = run.read_data()
    parts, _ = _splits(run, data)
    check_for_leakage(parts)
    thumbs = [s for s in data.samples if data.given_split.get(s.key) == UNLABELLED]
    labelled = {s.patient_id for name in ("train", "val", "test") for s in parts[name]}
    unlabelled = parts[UNLABELLED]
    # The thumbnails of the six patients both NIH sets hold (MANIFEST) are in a labelled split.
    left_out = [s for s in thumbs if s.patient_id in labelled]
    assert {s.patient_id for s in left_out} == {f"nih:{p}" for p in SHARED_NIH_PATIENTS}
    assert len(unlabelled) == len(thumbs) - len(left_out)
    assert not {s.patient_id for s in unlabelled} & labelled
    assert all(not s.targets.any() and not s.mask.any() for s in unlabelled)


def test_ema_update_is_the_decayed_average_of_weights_and_buffers(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    trainer = Trainer(model, MaskedBCE(), TrainSettings(ema_decay=0.9), tmp_path, device="cpu")
    assert trainer.ema is not None
    weights = [torch.full((2, 3), 1.0), torch.full((2, 3), 3.0), torch.full((2, 3), -2.0)]
    running = [torch.zeros(2), torch.full((2,), 10.0), torch.full((2,), 20.0)]
    for weight, mean in zip(weights, running, strict=True):
        with torch.no_grad():
            model[0].weight.copy_(weight)
            model[1].running_mean.copy_(mean)
        trainer.ema.update_parameters(model)
    # The first update copies; each later one is 0.9 * average + 0.1 * current.
    expected = 0.9 * (0.9 * 1.0 + 0.1 * 3.0) + 0.1 * -2.0
    assert torch.allclose(trainer.ema.module[0].weight, torch.full((2, 3), expected))
    expected_mean = 0.9 * (0.9 * 0.0 + 0.1 * 10.0) + 0.1 * 20.0
    assert torch.allclose(trainer.ema.module[1].running_mean, torch.full((2,), expected_mean))


def _datasets(parts, fraction: float = 0.5):
    hidden = hide_labels(parts, fraction, seed=0)
    cleaning = TextCleaning()
    return (
        SampleDataset(hidden["train"], SPEC, cleaning, "none", augment=True),
        SampleDataset(hidden["val"], SPEC, cleaning, "none"),
        SampleDataset(hidden.get(UNLABELLED, []), SPEC, cleaning, "none", augment=True),
    )


class FirstEpochBest(Trainer):
    """Validation that ranks the first epoch best, so that the best EMA is not the last one."""

    def _validation(self, dataset: SampleDataset) -> tuple[float, list[float]]:
        loss, aurocs = super()._validation(dataset)
        self.validated = getattr(self, "validated", 0) + 1
        return loss, [1.0 / self.validated for _ in aurocs]


def test_predictions_and_export_are_the_best_epochs_ema_weights(parts, tmp_path: Path) -> None:
    seed_everything(0)
    train, val, _ = _datasets({**parts, "val": parts["val"][:16]}, 1.0)
    settings = TrainSettings(
        epochs=2, batch_size=8, lr=3e-3, patience=0, ema_decay=0.5, max_steps_per_epoch=2
    )
    model = build_model(ARCH, 1, in_channels=3)
    trainer = FirstEpochBest(model, MaskedBCE(), settings, tmp_path, device="cpu")
    last_ema: list[np.ndarray] = []
    result = trainer.fit(train, val, on_epoch=lambda row: last_ema.append(trainer.predict(val)))
    assert result.best_epoch == 0
    # What run_train evaluates (trainer.predict) is what it exports (trainer.model): the
    # first epoch's averaged weights, not the last epoch's.
    exported = predict(trainer.model, val, 8, trainer.device)
    assert np.allclose(trainer.predict(val), exported, atol=1e-6)
    assert np.allclose(exported, last_ema[0], atol=1e-6)
    assert not np.allclose(exported, last_ema[1], atol=1e-4)


def test_consistency_is_zero_for_equal_outputs_and_trains_only_the_student() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.0]])
    assert float(consistency_loss(logits, logits.clone())) == 0.0
    student = logits.clone().requires_grad_(True)
    teacher = (logits + 1.0).requires_grad_(True)
    loss = consistency_loss(student, teacher)
    loss.backward()
    assert loss > 0 and student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert sigmoid_rampup(0.0) == pytest.approx(np.exp(-5.0))
    assert sigmoid_rampup(1.0) == 1.0 == sigmoid_rampup(3.0)


def test_only_confident_pseudo_labels_enter_the_masked_loss() -> None:
    p = torch.tensor([[0.96, 0.94], [0.5, 0.04], [0.06, 0.951]])
    targets, mask = pseudo_labels(torch.logit(p), threshold=0.95)
    assert mask.tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    assert targets.tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    student = torch.zeros(3, 2, requires_grad=True)
    MaskedBCE()(student, targets, mask).backward()
    assert student.grad is not None
    assert torch.equal(student.grad != 0, mask.bool())  # the unsure entries teach nothing


def test_pseudo_labels_of_the_teacher_train_the_student(parts, tmp_path: Path) -> None:
    seed_everything(0)
    train, val, unlabelled = _datasets(parts)
    semi = SemiSupervisedSettings("pseudo_label", 0.5, threshold=0.55, rampup_epochs=0)
    settings = TrainSettings(
        epochs=1, batch_size=8, lr=1e-3, ema_decay=0.9, max_steps_per_epoch=3, patience=0
    )
    model = build_model(ARCH, 1, in_channels=3)
    trainer = SemiSupervisedTrainer(model, MaskedBCE(), settings, tmp_path, semi, unlabelled, "cpu")
    trainer.fit(train, val)
    (row,) = [json.loads(line) for line in (tmp_path / "semisupervised.jsonl").open()]
    assert row["weight"] == 1.0
    assert row["unlabelled_loss"] > 0 and 0 < row["confident"] <= 1
    # The teacher is the EMA of the student, not trained by the optimiser.
    assert trainer.ema is not None
    assert all(not p.requires_grad or p.grad is None for p in trainer.ema.module.parameters())


def test_a_semisupervised_run_exports_a_package_the_node_serves(
    shared_data: Path, tmp_path: Path
) -> None:
    config = tiny_run_config(
        tmp_path, 'semisupervised.method="mean_teacher"', "semisupervised.labelled_fraction=0.5"
    )
    results = run_train(config)
    semi = results["semisupervised"]
    assert semi["method"] == "mean_teacher" and semi["unlabelled_samples"] > 0
    assert results["splits"][UNLABELLED]["samples"] == semi["unlabelled_samples"]
    assert results["splits"]["train"]["samples"] == semi["labelled_samples"]
    # The consistency term's weight ramps up over the epochs and the term is never zero.
    rows = [json.loads(line) for line in (tmp_path / "run" / "semisupervised.jsonl").open()]
    assert 0 < rows[0]["weight"] < rows[1]["weight"] <= 10.0
    assert all(row["unlabelled_loss"] > 0 for row in rows)
    package = load_package(results["package"])
    assert "mean teacher" in package.config.training_data
    card = (Path(results["package"]) / "MODEL_CARD.md").read_text()
    assert f"on {semi['labelled_samples']} labelled training samples" in card
    assert "exponential moving average of the weights" in card
    dicom = sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    (prediction,) = Predictor(package, device="cpu").predict([image_file_to_display(dicom[0])])
    assert 0.0 <= float(prediction.probabilities[0]) <= 1.0
