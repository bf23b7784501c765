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


def test_series_description_fits_lo_and_keeps_the_warning_whole():
    long = AlgorithmInfo("a-very-long-model-name-" * 4, "10.20.30", "0" * 64, False, "untrained")

    text = series_description(long)

    assert len(text) <= 64
    assert text.startswith("UNTRAINED AI a-very-")
    assert text.endswith(" - not for diagnostic use without review")


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
