"""The classifier: every encoder x text encoder x fusion trains and infers, with or without text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.encoders.text import WordVocabulary
from models.network import ARCHITECTURE_DEFAULTS, CxrClassifier, build_model

IMAGE_ENCODERS = {"resnet18": 512, "densenet121": 1024, "swin_t": 768}
TEXTS = ["mild cardiomegaly.", None, "small left pleural effusion, no pneumothorax."]
VOCABULARY = WordVocabulary.fit([t for t in TEXTS if t], size=50)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _text_encoder(kind: str, tiny_bert_dir: Path, trainable: bool = False) -> dict:
    if kind == "hf":
        return {"kind": "hf", "path": str(tiny_bert_dir), "max_length": 32, "trainable": trainable}
    if kind == "token_ffn":
        return {"kind": "token_ffn", "vocab_size": 50, "max_length": 16, "hidden": 8, "out": 6}
    return {"kind": "none"}


COMBINATIONS = [
    (image, text, fusion)
    for image in IMAGE_ENCODERS
    for text in ("none", "hf", "token_ffn")
    for fusion in ("concat", "cross_attention")
    if not (text == "none" and fusion == "cross_attention")
]


@pytest.mark.parametrize(("image", "text", "fusion"), COMBINATIONS)
def test_every_combination_trains_and_infers(image, text, fusion, tiny_bert_dir):
    architecture = {
        "image_encoder": image,
        "text_encoder": _text_encoder(text, tiny_bert_dir),
        "fusion": fusion,
        "fusion_dim": 16,
        "fusion_heads": 2,
        "hidden_dim": 8,
    }
    model = build_model(architecture, n_labels=3, vocabulary=VOCABULARY)
    images = torch.rand(3, 3, 32, 32)
    batch = model.tokenize(TEXTS)
    assert (batch is None) == (text == "none")

    logits = model(images, batch)
    assert logits.shape == (3, 3)
    logits.sum().backward()
    assert model.output_layer.weight.grad is not None
    assert next(model.image_encoder.parameters()).grad is not None
    if text != "none":
        assert model.missing_text.grad is not None  # row 1 had no report
        assert model.missing_text.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        encoded = model.encode(images, batch)
        without_text = model(images)
    assert encoded.fused.shape == (3, model.embedding_dim)
    assert encoded.image.shape == (3, IMAGE_ENCODERS[image])
    assert encoded.text_present.tolist() == ([False] * 3 if text == "none" else [True, False, True])
    assert without_text.shape == (3, 3) and torch.isfinite(without_text).all()


def test_a_row_without_a_report_gets_exactly_the_no_report_embedding(tiny_bert_dir):
    model = build_model(
        {"text_encoder": _text_encoder("hf", tiny_bert_dir), "hidden_dim": 0}, n_labels=2
    ).eval()
    with torch.no_grad():
        model.missing_text.fill_(0.25)
        images = torch.rand(3, 3, 32, 32)
        mixed = model.encode(images, model.tokenize(TEXTS))
        none = model.encode(images)
        alone = model.encode(images[1:2])
    assert torch.all(mixed.text[1] == 0.25) and torch.all(none.text == 0.25)
    torch.testing.assert_close(mixed.fused[1], alone.fused[0], atol=1e-5, rtol=0)
    assert not torch.allclose(mixed.fused[0], none.fused[0])


def test_zeros_policy_leaves_the_no_report_embedding_untrained(tiny_bert_dir):
    model = build_model(
        {"text_encoder": _text_encoder("hf", tiny_bert_dir), "missing_text": "zeros"}, 2
    ).eval()
    assert "missing_text" not in dict(model.named_parameters())
    assert "missing_text" not in model.state_dict()
    assert torch.all(model.encode(torch.rand(1, 3, 32, 32)).text == 0)


def test_modality_dropout_hides_reports_in_training_only(tiny_bert_dir):
    architecture = {"text_encoder": _text_encoder("hf", tiny_bert_dir), "modality_dropout": 0.9}
    model = build_model(architecture, 2)
    batch = model.tokenize(["clear lungs"] * 64)
    with torch.no_grad():
        dropped = (~model.encode_text(batch, 64).present).sum()
        model.eval()
        kept = model.encode_text(batch, 64).present.all()
    assert 40 < dropped < 64 and kept


def test_only_a_trainable_text_encoder_learns(tiny_bert_dir):
    for trainable in (False, True):
        model = build_model(
            {"text_encoder": _text_encoder("hf", tiny_bert_dir, trainable)}, n_labels=2
        )
        model(torch.rand(2, 3, 32, 32), model.tokenize(["clear", "effusion"])).sum().backward()
        grads = [p.grad for p in model.text_encoder.parameters()]
        assert any(g is not None for g in grads) == trainable


def test_xavier_initialises_new_layers_only(tiny_bert_dir):
    torch.manual_seed(0)
    default = build_model({"text_encoder": _text_encoder("hf", tiny_bert_dir)}, 2)
    torch.manual_seed(0)
    xavier = build_model({"text_encoder": _text_encoder("hf", tiny_bert_dir), "init": "xavier"}, 2)
    assert torch.all(xavier.output_layer.bias == 0)
    assert not torch.equal(xavier.output_layer.weight, default.output_layer.weight)
    for a, b in zip(
        xavier.text_encoder.parameters(), default.text_encoder.parameters(), strict=True
    ):
        assert torch.equal(a, b)  # pretrained weights are kept


def test_architecture_is_fully_recorded_and_rebuildable(tiny_bert_dir):
    model = build_model(
        {
            "image_encoder": "resnet18",
            "dropout": 0.1,
            "text_encoder": _text_encoder("hf", tiny_bert_dir),
        },
        n_labels=4,
    )
    assert set(model.architecture) == set(ARCHITECTURE_DEFAULTS)
    assert model.architecture["dropout"] == 0.1
    assert model.architecture["text_encoder"]["hidden_size"] == 32
    assert len(model.architecture["text_encoder"]["weights_sha256"]) == 64
    rebuilt = build_model(model.architecture, 4)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ({"image_encoder": "vit-huge"}, "unknown image encoder"),
        ({"pretrained": True}, "unknown"),
        ({"fusion": "cross_attention"}, "needs a text encoder"),
        ({"text_encoder": {"kind": "hf"}}, "needs 'path'"),
        ({"text_encoder": {"kind": "lstm"}}, "kind"),
        ({"text_dim": 8}, "format 1"),
        ({"modality_dropout": 1.0}, r"\[0, 1\)"),
    ],
)
def test_unknown_or_invalid_architectures_are_refused(architecture: dict, message: str):
    with pytest.raises(ValueError, match=message):
        build_model(architecture, 2)


def test_image_only_model_refuses_text(tiny_bert_dir):
    model = build_model({}, n_labels=3)
    assert model.tokenize(["clear lungs"]) is None
    text_model = build_model({"text_encoder": _text_encoder("hf", tiny_bert_dir)}, 3)
    with pytest.raises(ValueError, match="image-only"):
        model(torch.rand(1, 3, 32, 32), text_model.tokenize(["clear lungs"]))


def test_classifier_needs_at_least_one_label():
    with pytest.raises(ValueError, match="n_labels"):
        build_model({}, 0)
    assert issubclass(CxrClassifier, torch.nn.Module)
