"""The predict core on real images: the shipped default package on an RSNA DICOM, a text model
on an NIH PNG with report text, and the files it refuses (each with its kind)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from models.preprocess import dicom_to_display, image_file_to_display
from node.predict import (
    EXPLAINERS,
    ImageFile,
    PredictInputError,
    check_methods,
    predict_image,
    read_display,
)

LIMIT = 256 * 1024 * 1024


def test_shipped_package_on_an_rsna_dicom_answers_as_the_worker_would(
    default_predictor, rsna_dicom: Path
):
    result = predict_image(default_predictor, ImageFile.read(rsna_dicom), max_decoded_bytes=LIMIT)

    # The serving route: the worker's display image and the predictor's probabilities.
    display = dicom_to_display(dcmread(rsna_dicom))
    np.testing.assert_array_equal(result.display, display)
    (served,) = default_predictor.predict([display])
    labels = [label.name for label in default_predictor.package.config.labels]
    by_name = {f.name: f.probability for f in result.findings}
    assert by_name == pytest.approx(dict(zip(labels, served.probabilities.tolist(), strict=True)))
    probabilities = [f.probability for f in result.findings]
    assert probabilities == sorted(probabilities, reverse=True)
    for finding in result.findings:
        assert finding.present == (finding.probability >= finding.threshold)

    # Every present finding and the top one are explained, the present ones outlined.
    explained = {e.label for e in result.explanations}
    assert explained == {result.findings[0].name, *(f.name for f in result.present)}
    for explanation in result.explanations:
        assert explanation.heat.shape == (1024, 1024) and explanation.heat.min() >= 0
        assert (explanation.region is not None) == (
            explanation.label in {f.name for f in result.present}
        )
        overlay = result.overlay(explanation)
        assert overlay.shape == (1024, 1024, 3) and overlay.dtype == np.uint8
    assert result.overview().shape == (1024, 1024, 3)

    answer = result.to_json(heatmaps=True)
    assert answer["format"] == "dicom" and answer["model"]["name"] == "cxrnode-abnormal-pneumonia"
    assert [f["name"] for f in answer["findings"]] == [f.name for f in result.findings]
    for explanation in answer["explanations"]:
        png = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"])))
        assert png.size == (1024, 1024)
        if explanation["region"] is not None:
            points = np.asarray(explanation["region"]["points"])
            assert points.min() >= 0 and points.max() <= 1024
    assert answer["report"] == {"given": False, "read": False, "cleaned": None}
    assert set(EXPLAINERS) == {"gradcam", "integrated_gradients"}
    assert result.embedding.shape == (default_predictor.model.embedding_dim,)
    assert answer["words"] == {}


def test_a_png_is_read_as_training_reads_it_and_report_text_cleaned_by_the_package(
    predictor, nih_png: Path
):
    report = "FINDINGS: Heart size XXXX normal.\nIMPRESSION: No acute disease."
    result = predict_image(predictor, ImageFile.read(nih_png), report, max_decoded_bytes=LIMIT)

    np.testing.assert_array_equal(result.display, image_file_to_display(nih_png))
    assert result.format == "png"
    cleaning = predictor.package.config.text_cleaning
    assert result.report == {"given": True, "read": True, "cleaned": cleaning(report)}
    assert "xxxx" in result.report["cleaned"]
    # The report changes what the multimodal model says.
    alone = predict_image(predictor, ImageFile.read(nih_png), max_decoded_bytes=LIMIT)
    assert alone.report["read"] is False
    assert [f.probability for f in alone.findings] != [f.probability for f in result.findings]


def test_integrated_gradients_maps_each_explained_label_and_scores_the_reports_words(
    predictor, nih_png: Path
):
    report = "FINDINGS: Patchy opacity at the right base. IMPRESSION: Pneumonia."
    result = predict_image(
        predictor,
        ImageFile.read(nih_png),
        report,
        max_decoded_bytes=LIMIT,
        methods=("gradcam", "integrated_gradients"),
        ig_steps=4,
    )
    by_method = {}
    for explanation in result.explanations:
        by_method.setdefault(explanation.method, []).append(explanation.label)
        assert explanation.heat.shape == result.display.shape
        assert explanation.heat.min() >= 0 and explanation.heat.max() <= 1
    assert by_method["integrated_gradients"] == by_method["gradcam"]
    assert set(result.words) == set(by_method["gradcam"])
    for words in result.words.values():
        assert {"opacity", "pneumonia"} <= {w.word for w in words}
    assert result.to_json()["words"].keys() == result.words.keys()


def _without_pixels(path: Path) -> bytes:
    ds = dcmread(path)
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "limit", "kind", "says"),
    [
        ("empty.dcm", lambda dicom, png: b"", LIMIT, "empty", "empty"),
        ("notes.txt", lambda dicom, png: b"not an image\n", LIMIT, "unreadable", "neither"),
        ("cut.png", lambda dicom, png: png.read_bytes()[:2000], LIMIT, "unreadable", "neither"),
        ("header.dcm", lambda dicom, png: _without_pixels(dicom), LIMIT, "not_image", "pixel"),
        ("big.dcm", lambda dicom, png: dicom.read_bytes(), 1 << 19, "too_large", "limit"),
        ("big.png", lambda dicom, png: png.read_bytes(), 1 << 19, "too_large", "limit"),
    ],
)
def test_bad_files_are_refused_with_what_is_wrong(
    rsna_dicom: Path, nih_png: Path, name, make, limit, kind, says
):
    with pytest.raises(PredictInputError) as refused:
        read_display(ImageFile(name, make(rsna_dicom, nih_png)), limit)
    assert refused.value.kind == kind
    assert name in str(refused.value) and says in str(refused.value)


def test_attention_is_the_fusions_weights_over_the_reports_tokens_where_the_model_has_them(
    cross_attention, default_predictor, nih_png: Path
):
    report = "FINDINGS: Large right pleural effusion."
    result = predict_image(
        cross_attention,
        ImageFile.read(nih_png),
        report,
        max_decoded_bytes=LIMIT,
        methods=("gradcam", "attention"),
    )
    attention = result.attention
    assert attention.tokens[0] == "[CLS]" and "right" in attention.tokens  # word pieces
    np.testing.assert_allclose(attention.weights.sum(axis=1), 1.0, atol=1e-4)
    answer = result.to_json()["attention"]
    assert answer["tokens"] == list(attention.tokens) and answer["grid"] == [2, 2]
    assert len(answer["weights"]) == 4 and len(answer["weights"][0]) == len(attention.tokens)
    assert {e.method for e in result.explanations} == {"gradcam"}
    # The shipped package fuses by concatenation: it has no attention to show.
    with pytest.raises(ValueError, match="cross-attention"):
        check_methods(default_predictor, ("attention",))
    with pytest.raises(ValueError, match="unknown explanation methods"):
        check_methods(default_predictor, ("magic",))
