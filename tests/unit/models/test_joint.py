"""The joint image-text space: what embed gives, what a package keeps, what old packages keep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.default import bundled_default_package
from models.labels import ABNORMAL_PNEUMONIA
from models.network import build_model, normalize_architecture
from models.package import LabelConfig, ModelConfig, load_package, save_package
from models.predictor import Predictor
from models.preprocess import PreprocessSpec

SIZE = 32
TEXTS = ["patchy right lower lobe opacity.", None, "lungs are clear. no effusion."]


def _architecture(tiny_bert_dir: Path, joint_dim: int = 8) -> dict:
    return {
        "text_encoder": {"kind": "hf", "path": str(tiny_bert_dir), "max_length": 32},
        "fusion": "cross_attention",
        "fusion_dim": 16,
        "fusion_heads": 2,
        "hidden_dim": 0,
        "joint_dim": joint_dim,
    }


@pytest.fixture
def joint_model(tiny_bert_dir: Path):
    torch.manual_seed(0)
    return build_model(_architecture(tiny_bert_dir), n_labels=2).eval()


def test_embed_is_the_joint_image_embedding_and_reads_no_report(joint_model) -> None:
    images = torch.rand(3, 3, SIZE, SIZE)
    text = joint_model.tokenize(TEXTS)
    with torch.no_grad():
        encoded = joint_model.encode(images, text)
        embedded = joint_model.embed(images, text)
        alone = joint_model.embed(images)
    assert embedded.shape == (3, 8) == (3, joint_model.retrieval_dim)
    torch.testing.assert_close(embedded, encoded.joint.image)
    torch.testing.assert_close(alone, embedded)  # an image without its report lands the same
    torch.testing.assert_close(embedded.norm(dim=1), torch.ones(3))
    assert encoded.joint.present.tolist() == [True, False, True]


def test_a_report_alone_is_placed_in_the_same_space(joint_model) -> None:
    text = joint_model.tokenize(TEXTS)
    with torch.no_grad():
        reports = joint_model.embed_text(text)
        encoded = joint_model.encode(torch.rand(3, 3, SIZE, SIZE), text)
    assert reports.shape == (2, 8)  # the two rows that have a report
    torch.testing.assert_close(reports, encoded.joint.text[[0, 2]])


def test_a_model_without_a_joint_space_embeds_as_before(tiny_bert_dir: Path) -> None:
    torch.manual_seed(0)
    model = build_model(_architecture(tiny_bert_dir, joint_dim=0), n_labels=2).eval()
    images, text = torch.rand(2, 3, SIZE, SIZE), model.tokenize(TEXTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(model.embed(images, text), model.encode(images, text).fused)
    assert model.joint is None and model.retrieval_dim == model.embedding_dim
    with pytest.raises(ValueError, match="no joint"):
        model.embed_text(text)


def test_a_joint_space_without_a_text_encoder_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a text encoder"):
        normalize_architecture({"joint_dim": 16})
    with pytest.raises(ValueError, match="joint_dim must be >= 0"):
        normalize_architecture({"joint_dim": -1})


def test_a_package_keeps_the_joint_space_and_serves_its_embedding(
    joint_model, tmp_path: Path
) -> None:
    with torch.no_grad():
        joint_model.joint.log_logit_scale.fill_(2.5)  # a trained temperature travels too
    config = ModelConfig(
        name="joint",
        version="0.1.0",
        architecture=joint_model.architecture,
        preprocessing=PreprocessSpec(image_size=SIZE, channels=3),
        labels=tuple(LabelConfig.from_label(label, 0.5) for label in ABNORMAL_PNEUMONIA),
        trained=False,
        disclaimer="test model",
        training_data="none",
        label_vocabulary="abnormal-pneumonia",
    )
    save_package(joint_model, config, tmp_path / "pkg", "# card\n")
    loaded = load_package(tmp_path / "pkg")
    assert loaded.config.architecture["joint_dim"] == 8
    assert loaded.model.joint.log_logit_scale.item() == 2.5

    displays = [np.random.default_rng(i).random((40, 48)).astype(np.float32) for i in range(2)]
    predictor = Predictor(loaded, device="cpu")
    predictions = predictor.predict(displays, [TEXTS[0], None])
    prepared = predictor.prepare(displays)
    with torch.no_grad():
        expected = joint_model.embed(prepared.images)
    for prediction, row in zip(predictions, expected.numpy(), strict=True):
        assert prediction.embedding.shape == (8,)
        np.testing.assert_allclose(prediction.embedding, row, atol=1e-5)


def test_an_old_package_loads_unchanged_without_a_joint_space() -> None:
    path = bundled_default_package()
    assert "joint_dim" not in (path / "config.json").read_text()  # written before it existed
    package = load_package(path)
    assert package.model.joint is None and package.model.architecture["joint_dim"] == 0
    display = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    predictor = Predictor(package, device="cpu")
    (prediction,) = predictor.predict([display])
    with torch.no_grad():
        fused = package.model.encode(predictor.prepare([display]).images).fused[0]
    np.testing.assert_allclose(prediction.embedding, fused.numpy(), atol=1e-5)
    assert prediction.embedding.shape == (package.model.embedding_dim,)
