"""The classifier: encoders, optional text input, fusion, Grad-CAM target layer."""

from __future__ import annotations

import pytest
import torch

from models.network import CxrClassifier, build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(("encoder", "image_dim"), [("resnet18", 512), ("densenet121", 1024)])
def test_encoders_give_logits_embeddings_and_a_conv_target_layer(encoder: str, image_dim: int):
    model = build_model({"image_encoder": encoder}, n_labels=5).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert model(images).shape == (2, 5)
        assert model.embed(images).shape == (2, image_dim)
        activations = []
        handle = model.target_layer().register_forward_hook(
            lambda module, args, output: activations.append(output)
        )
        model(images)
        handle.remove()
    assert activations[0].ndim == 4 and activations[0].shape[1] == image_dim


def test_a_text_model_without_a_report_uses_its_learned_no_report_input():
    model = build_model({"text_dim": 8, "hidden_dim": 0}, n_labels=3).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model.no_report.fill_(0.25)
        embedding = model.embed(images)
        assert embedding.shape == (2, 512 + 8)
        assert torch.all(embedding[:, 512:] == 0.25)
        with_text = model(images, torch.ones(2, 8))
        without = model(images)
    assert not torch.allclose(with_text, without)


def test_image_only_model_refuses_text_features():
    model = build_model({}, n_labels=3)
    with pytest.raises(ValueError, match="image-only"):
        model(torch.rand(1, 3, 32, 32), torch.ones(1, 4))


def test_architecture_is_fully_recorded_and_rebuildable():
    model = build_model({"image_encoder": "resnet18", "dropout": 0.1}, n_labels=4)
    assert model.architecture == {
        "image_encoder": "resnet18",
        "text_dim": 0,
        "hidden_dim": 256,
        "dropout": 0.1,
    }
    rebuilt = build_model(model.architecture, 4)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    ("architecture", "message"),
    [({"image_encoder": "vit-huge"}, "unknown image encoder"), ({"pretrained": True}, "unknown")],
)
def test_unknown_architectures_are_refused(architecture: dict, message: str):
    with pytest.raises(ValueError, match=message):
        build_model(architecture, 2)


def test_classifier_needs_at_least_one_label():
    with pytest.raises(ValueError, match="n_labels"):
        CxrClassifier("resnet18", n_labels=0)
