"""Explanations beside Grad-CAM: Integrated Gradients on the image and on the report's words,
and the cross-attention fusion's maps, on tiny models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.attribution import (
    attention_maps,
    black_baseline,
    explain,
    image_attributions,
    saliency,
)
from models.default import reference_config
from models.encoders.text import WordVocabulary
from models.network import build_model
from models.package import LoadedPackage
from models.predictor import Predictor

REPORT = "FINDINGS: Large right pleural effusion. IMPRESSION: Effusion, unchanged."
VOCABULARY = WordVocabulary.fit([REPORT.lower()], size=20)
SIZE = 64  # model input: resnet18 gives a 2 x 2 grid


def _predictor(architecture: dict) -> Predictor:
    config = reference_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(
            {"image_encoder": "resnet18", "hidden_dim": 0, **architecture},
            len(config.labels),
            vocabulary=VOCABULARY,
        ).eval()
    config = replace(
        config,
        architecture=model.architecture,
        preprocessing=replace(config.preprocessing, image_size=SIZE),
    )
    return Predictor(LoadedPackage(config, model, Path("synthetic")), device="cpu")


@pytest.fixture(scope="module")
def cross_attention(tiny_bert_dir: Path) -> Predictor:
    text = {"kind": "hf", "path": str(tiny_bert_dir), "max_length": 32}
    return _predictor(
        {"text_encoder": text, "fusion": "cross_attention", "fusion_dim": 16, "fusion_heads": 2}
    )


def _displays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((90, 120), dtype=np.float32), rng.random((80, 80), dtype=np.float32)]


def test_integrated_gradients_are_complete_within_their_convergence_delta(cross_attention):
    prepared = cross_attention.prepare(_displays(), [REPORT, None])
    results = image_attributions(cross_attention, prepared, [[2, 5], [5]], steps=16)
    baseline = black_baseline(cross_attention)
    with torch.no_grad():
        model = cross_attention.model
        image_map = model.image_encoder(prepared.images)
        at_image = model.classify(model.fuse(image_map, prepared.context))
        base_rows = baseline.expand_as(prepared.images)
        at_base = model.classify(model.fuse(model.image_encoder(base_rows), prepared.context))
    for image, (labels, result) in enumerate(zip([[2, 5], [5]], results, strict=True)):
        assert result.attributions.shape == (len(labels), 3, SIZE, SIZE)
        for slot, label in enumerate(labels):
            change = float(at_image[image, label] - at_base[image, label])
            total = float(result.attributions[slot].sum(dtype=np.float64))
            assert total - float(result.delta[slot]) == pytest.approx(change, abs=1e-3)


def test_ig_maps_are_in_unit_range_on_each_display_and_follow_the_ig_sign():
    predictor = _predictor({})
    displays = _displays()
    prepared = predictor.prepare(displays)
    explanations = explain(
        predictor, prepared, [[0, 3], []], ("gradcam", "integrated_gradients"), steps=4
    )
    for display, explanation in zip(displays, explanations, strict=True):
        for method in ("gradcam", "integrated_gradients"):
            maps = explanation.maps[method]
            assert maps.shape == (len(explanation.labels), *display.shape)
            assert maps.dtype == np.float32 and np.all((maps >= 0.0) & (maps <= 1.0))
    assert explanations[0].maps["integrated_gradients"].max() == pytest.approx(1.0)
    assert explanations[0].convergence_delta.shape == (2,)
    assert explanations[0].words is None and explanations[0].attention is None
    # Positive evidence only, scaled by its 99th percentile: a pixel against the label is 0.
    attributions = np.zeros((1, 3, 4, 4), np.float32)
    attributions[0, :, 0, 0] = -1.0
    attributions[0, 0, 1:, :] = np.arange(12, dtype=np.float32).reshape(3, 4)
    heat = saliency(attributions)[0]
    assert heat[0, 0] == 0.0 and heat.max() == 1.0 and 0.0 < heat[1, 1] < heat[3, 2]


def test_word_pieces_are_merged_into_the_reports_words(cross_attention):
    prepared = cross_attention.prepare(_displays(), [REPORT, None])
    (with_report, without) = explain(
        cross_attention,
        prepared,
        [[2], [2]],
        ("integrated_gradients",),
        texts=[REPORT, None],
        steps=4,
    )
    (words,) = with_report.words
    cleaned = cross_attention.package.config.text_cleaning(REPORT)
    # The cleaned report's words in reading order, whole ("effusion" is several word pieces).
    assert [w.word for w in words] == cleaned.replace(".", " .").replace(",", " ,").split()
    assert all(np.isfinite(w.score) for w in words) and any(w.score != 0 for w in words)
    assert without.words is None


def test_the_seed_002_encoder_gets_one_attribution_per_word():
    predictor = _predictor(
        {
            "text_encoder": {
                "kind": "token_ffn",
                "vocab_size": 20,
                "max_length": 8,
                "hidden": 8,
                "out": 6,
            }
        }
    )
    prepared = predictor.prepare(_displays()[:1], [REPORT])
    (explanation,) = explain(
        predictor, prepared, [[1]], ("integrated_gradients",), texts=[REPORT], steps=4
    )
    (words,) = explanation.words
    cleaned = predictor.package.config.text_cleaning(REPORT)
    assert [w.word for w in words] == cleaned.replace(".", "").replace(",", "").split()[:8]


def test_attention_weights_are_a_distribution_over_each_reports_tokens(cross_attention):
    displays = _displays()
    prepared = cross_attention.prepare(displays, [REPORT, None])
    with_report, without = attention_maps(cross_attention, prepared, [REPORT, None])
    tokens = with_report.tokens
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(tokens) > 8
    grid = (2, 2)
    assert with_report.weights.shape == (grid[0] * grid[1], len(tokens))
    np.testing.assert_allclose(with_report.weights.sum(axis=1), 1.0, atol=1e-5)
    assert with_report.grid.maps.shape == (len(tokens), *grid)
    assert without.tokens == ("[no report]",) and without.weights.shape == (4, 1)
    # Per-token maps are drawn on the display as Grad-CAM's are.
    drawn = cross_attention.on_display(with_report.grid.maps[:3], with_report.grid.size)
    assert drawn.shape == (3, *displays[0].shape) and drawn.min() >= 0 and drawn.max() <= 1
    # The default path, which asks no weights, fuses what the weighted one does.
    model = cross_attention.model
    with torch.no_grad():
        image_map = model.image_encoder(prepared.images)
        fused = model.fuse(image_map, prepared.context)
        again = model.fusion._attend(image_map, prepared.context, need_weights=True)[0]
    torch.testing.assert_close(fused, again)


def test_unknown_methods_and_labels_are_refused(cross_attention):
    prepared = cross_attention.prepare(_displays()[:1])
    with pytest.raises(ValueError, match="unknown explanation methods"):
        explain(cross_attention, prepared, [[0]], ("lime",))
    with pytest.raises(IndexError, match="out of range"):
        explain(cross_attention, prepared, [[99]], ("integrated_gradients",))
    with pytest.raises(ValueError, match="steps >= 1"):
        image_attributions(cross_attention, prepared, [[0]], steps=0)
