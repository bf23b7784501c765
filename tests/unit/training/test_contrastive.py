"""The contrastive alignment: the loss by hand, who takes part, where its gradient goes, and a
tiny real training run that aligns images with reports and exports the joint space."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.encoders.text import WordVocabulary
from models.joint import JointEmbeddings
from models.network import build_model
from models.package import load_package
from models.preprocess import PreprocessSpec
from models.text import TextCleaning
from training.cli import parse_overrides
from training.config import load_run_config
from training.contrastive import ContrastiveAlignment, build_alignment, clip_loss
from training.errors import TrainingError
from training.label_pairs import read_nih_iu_paired_by_label, report_pools
from training.loader import SampleDataset, collate
from training.losses import build_loss
from training.run import run_evaluate, run_train
from training.splits import patient_split
from training.trainer import Trainer, TrainSettings, model_inputs, seed_everything

CONFIG = Path(__file__).parents[3] / "training" / "configs" / "nih-iu-paired-joint.toml"
SPEC = PreprocessSpec(image_size=32, channels=3)
TINY = {
    "image_encoder": "resnet18",
    "text_encoder": {"kind": "token_ffn", "vocab_size": 400, "max_length": 48, "hidden": 16},
    "hidden_dim": 0,
    "joint_dim": 8,
}


def _joint(image, text, present=None, scale=1.0) -> JointEmbeddings:
    image, text = torch.as_tensor(image, dtype=torch.float32), torch.as_tensor(text)
    present = torch.ones(len(image), dtype=torch.bool) if present is None else present
    return JointEmbeddings(image, text.float(), torch.as_tensor(present), torch.tensor(scale))


def test_the_loss_of_a_hand_made_batch_is_worked_out_by_hand() -> None:
    r = 1 / math.sqrt(2)
    # Similarities [[1, r], [0, r]] at scale 1: image 0 is its report's, report 1 is halfway.
    loss = clip_loss(_joint([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [r, r]]))
    images_to_reports = (-math.log(math.e / (math.e + math.exp(r))) - math.log(0.5)) / 2
    reports_to_images = (
        -math.log(math.e / (math.e + 1)) - math.log(math.exp(r) / (1 + math.exp(r)))
    ) / 2
    assert loss.item() == pytest.approx((images_to_reports + reports_to_images) / 2, abs=1e-6)
    # Matched orthonormal pairs at scale s: each row's loss is log(1 + (n - 1) e^-s).
    eye = torch.eye(3)
    assert clip_loss(_joint(eye, eye, scale=2.0)).item() == pytest.approx(
        math.log(1 + 2 * math.exp(-2.0)), abs=1e-6
    )


def test_the_loss_is_symmetric_in_images_and_reports() -> None:
    torch.manual_seed(0)
    image, text = (F.normalize(torch.randn(5, 4), dim=1) for _ in range(2))
    assert clip_loss(_joint(image, text, scale=3.0)).item() == pytest.approx(
        clip_loss(_joint(text, image, scale=3.0)).item(), abs=1e-6
    )
    assert clip_loss(_joint(image, text)).item() != pytest.approx(
        clip_loss(_joint(image, text.roll(1, dims=0))).item()
    )


def test_rows_without_a_report_take_no_part() -> None:
    eye = torch.eye(3)
    alone = clip_loss(_joint(eye[:2], eye[:2], scale=2.0))
    # A third row with no report: its image would be a perfect negative, and is left out.
    with_missing = clip_loss(_joint(eye, eye[[0, 1, 0]], torch.tensor([True, True, False]), 2.0))
    assert with_missing.item() == pytest.approx(alone.item(), abs=1e-6)
    image = torch.eye(2, requires_grad=True)
    single = clip_loss(_joint(image, torch.eye(2), torch.tensor([True, False])))
    assert single.item() == 0.0
    single.backward()  # nothing to contrast with, and still a loss the trainer can add


def test_the_gradient_reaches_both_projections_and_the_temperature() -> None:
    torch.manual_seed(0)
    texts = ["patchy opacity right base.", "lungs are clear.", None, "left effusion."]
    model = build_model(TINY, 2, vocabulary=WordVocabulary.fit([t for t in texts if t], 400))
    encoded = model.encode(torch.rand(4, 3, 32, 32), model.tokenize(texts))
    ContrastiveAlignment(0.5)(encoded.joint).backward()
    for name in ("image_proj.weight", "text_proj.weight", "log_logit_scale"):
        grad = model.joint.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert next(model.text_encoder.parameters()).grad.abs().sum() > 0
    assert model.head[-1].weight.grad is None  # the classification head is not its business


def test_a_config_that_cannot_train_the_space_is_refused() -> None:
    texts = ["clear."]
    joint = build_model(TINY, 2, vocabulary=WordVocabulary.fit(texts, 400))
    plain = build_model({**TINY, "joint_dim": 0}, 2, vocabulary=WordVocabulary.fit(texts, 400))
    assert build_alignment({"contrastive_weight": 0.5}, joint).weight == 0.5
    assert build_alignment({}, plain) is None
    with pytest.raises(TrainingError, match="needs a joint space"):
        build_alignment({"contrastive_weight": 0.5}, plain)
    with pytest.raises(TrainingError, match="needs \\[loss\\] contrastive_weight > 0"):
        build_alignment({}, joint)
    with pytest.raises(TrainingError, match=">= 0"):
        build_alignment({"contrastive_weight": -1}, joint)


# --- real images and reports, paired by label --------------------------------------------


@pytest.fixture(scope="module")
def paired(nih512: Path, iu_dir: Path):
    return read_nih_iu_paired_by_label(nih512, iu_dir / "indiana_reports.csv")


def test_each_image_gets_a_distinct_report_of_its_own_class(paired, iu_dir: Path) -> None:
    pools = {k: Counter(v) for k, v in report_pools(iu_dir / "indiana_reports.csv").items()}
    assert None not in (s.report for s in paired.samples) and len(paired.samples) == 796
    for pool in ("normal", "airspace"):
        drawn = Counter(
            s.report for s in paired.samples if bool(s.targets[1]) == (pool != "normal")
        )
        # Each report (study) once: a wording is drawn at most as often as studies share it
        # (normal IU reports often repeat word for word).
        assert drawn and all(drawn[text] <= pools[pool][text] for text in drawn), pool
    assert "artificial" in paired.name and "CC BY-NC-ND" in paired.source


def _tiny_parts(paired):
    return patient_split(paired.samples[::16], {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)


def _train_alignment(model, samples) -> float:
    """The contrastive loss of the whole set as one batch, in eval mode."""
    dataset = SampleDataset(samples, SPEC, TextCleaning(), "report")
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        encoded = model.eval().encode(*model_inputs(model, batch, torch.device("cpu")))
    return clip_loss(encoded.joint).item()


def test_a_tiny_training_run_with_the_loss_aligns_images_with_reports(paired, tmp_path) -> None:
    parts = _tiny_parts(paired)
    texts = [TextCleaning()(s.report) for s in parts["train"]]
    seed_everything(0)
    model = build_model(TINY, 2, vocabulary=WordVocabulary.fit(texts, 400))
    before = _train_alignment(model, parts["train"])
    settings = TrainSettings(epochs=3, batch_size=16, lr=3e-3, schedule="none", patience=0)
    trainer = Trainer(
        model,
        build_loss("bce", parts["train"]),
        settings,
        tmp_path,
        device="cpu",
        progress=False,
        alignment=ContrastiveAlignment(1.0),
    )
    cleaning = TextCleaning()
    trainer.fit(
        SampleDataset(parts["train"], SPEC, cleaning, "report"),
        SampleDataset(parts["val"], SPEC, cleaning, "report"),
    )
    assert _train_alignment(trainer.model, parts["train"]) < before - 0.05


def test_the_config_trains_exports_and_retrieves_across_modalities(paired, tmp_path) -> None:
    manifest = tmp_path / "paired.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "image", "report", "labels"])
        for s in paired.samples[::16]:
            labels = "|".join(n for n, t in zip(paired.label_names, s.targets, strict=True) if t)
            writer.writerow([s.patient_id, s.image, s.report, labels])
    config = load_run_config(
        CONFIG,
        parse_overrides(
            [
                f'run.output="{tmp_path / "run"}"',
                f'export.path="{tmp_path / "package"}"',
                "model.image_size=32",
                "train.epochs=1",
                "train.batch_size=16",
            ]
        ),
    )
    # The tiny model and the manifest in place of the paired reader; the loss is the config's.
    config.data = {**config.data, "reader": "manifest", "manifest_csv": str(manifest)}
    config.data["vocabulary"] = "abnormal-pneumonia"
    for key in ("root", "reports_csv"):
        config.data.pop(key)
    config.model["architecture"] = TINY
    results = run_train(config)
    package = load_package(results["package"])
    assert package.config.architecture["joint_dim"] == 8
    retrieval = run_evaluate(Path(results["package"]), config, retrieval=True)["retrieval"]
    assert retrieval["embedding"].startswith("joint image embedding")
    names = [p["protocol"] for p in retrieval["protocols"]]
    assert names == [
        "generalization (test -> test)",
        "historical (test -> train)",
        "image -> report (test -> test)",
        "report -> image (test -> test)",
        "image -> report (test -> train)",
        "report -> image (test -> train)",
    ]
    assert all(0.0 <= p["p_at_5"] <= 1.0 for p in retrieval["protocols"])
