"""What the writers refuse, and what they leave alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from node.results import (
    AlgorithmInfo,
    Finding,
    ImageResult,
    ResultInputError,
    build_overview,
    build_structured_report,
)
from node.results.notices import series_description

pytestmark = pytest.mark.filterwarnings("ignore:The string .* person name:UserWarning")


@pytest.mark.parametrize("probability", [-0.01, 1.2, float("nan")])
def test_probability_outside_zero_to_one_is_refused(probability):
    with pytest.raises(ResultInputError, match="probability"):
        Finding("Cardiomegaly", "8186001", "SCT", "Cardiomegaly", probability, 0.5)


def test_heatmap_on_another_grid_is_refused(sources, read_source, make_result):
    image = make_result(read_source(sources.barre))

    with pytest.raises(ResultInputError, match="heatmaps.* shape"):
        dataclasses.replace(image, heatmaps={"Pneumothorax": np.zeros((224, 224), np.float32)})


def test_heatmap_must_explain_one_of_the_findings(sources, read_source, make_result):
    image = make_result(read_source(sources.barre))

    with pytest.raises(ResultInputError, match="'Fracture'.* not one of its findings"):
        ImageResult(image.source, image.display, image.findings, {"Fracture": image.display})


def test_untrained_algorithm_needs_its_disclaimer():
    with pytest.raises(ResultInputError, match="disclaimer"):
        AlgorithmInfo("m", "1", "0" * 64, trained=False, disclaimer=" ")


def test_series_description_fits_lo_and_keeps_what_and_the_warning_whole():
    long = AlgorithmInfo("a-very-long-model-name-" * 4, "10.20.30", "0" * 64, False, "untrained")

    texts = {kind: series_description(long, kind) for kind in ("sr", "gsps", "sc", "finding_sc")}

    assert texts["sr"] == "UNTRAINED AI findings (SR) - a-very-long-mo... - requires review"
    for text in texts.values():
        assert len(text) <= 64 and text.isascii()
        assert text.endswith(" - requires review")
    # The name is left out rather than cut to a stub; what the series is stays.
    assert texts["finding_sc"] == "UNTRAINED AI heatmap per finding - a-very-l... - requires review"


def test_every_result_series_says_what_it_is_and_which_ai_made_it():
    # Before, all four series read "AI cxrnode-nih-normal... - not for diagnostic use without
    # review": SR, presentation state and both captures could not be told apart.
    model = AlgorithmInfo("cxrnode-abnormal-pneumonia", "1.0.0", "0" * 64, True, "")

    texts = [series_description(model, kind) for kind in ("sr", "gsps", "sc", "finding_sc")]

    assert texts == [
        "AI findings (SR) - cxrnode-abnormal-pneumonia - requires review",
        "AI outlines (GSPS) - cxrnode-abnormal-pneum... - requires review",
        "AI heatmap overview - cxrnode-abnormal-pneu... - requires review",
        "AI heatmap per finding - cxrnode-abnormal-p... - requires review",
    ]
    short = AlgorithmInfo("cxr-densenet", "2.3.1", "0" * 64, True, "")
    assert (
        series_description(short, "sr") == "AI findings (SR) - cxr-densenet 2.3.1 - requires review"
    )
    assert all(len(text) <= 64 for text in texts)
    with pytest.raises(ValueError, match="series kind"):
        series_description(model, "report")


def test_writers_leave_the_received_dataset_untouched(
    sources, read_source, make_result, untrained, uids
):
    source = read_source(sources.barre)
    before = source.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _: "")
    image = make_result(source)

    build_structured_report(
        [image], untrained, sop_instance_uid=uids("sr"), series_instance_uid=uids("s")
    )
    build_overview(image, untrained, sop_instance_uid=uids("sc"), series_instance_uid=uids("c"))

    after = source.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _: "")
    assert after == before
    assert source.InstanceCreationDate == "1995.07.20"
