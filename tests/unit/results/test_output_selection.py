"""Which result kinds each destination gets, and the result-series settings, as configured."""

from __future__ import annotations

import pytest

from node.config import (
    DEFAULT_RESULT_SERIES,
    Destination,
    ResultSeries,
    Settings,
    describe,
    load_settings,
)
from node.errors import ConfigError

PACS, VIEWER = "PACS@10.0.0.1:104", "VIEWER@10.0.0.2:11112"


def _settings(**env: str):
    return load_settings(environ={f"CXRNODE_{k.upper()}": v for k, v in env.items()})


def test_every_destination_gets_everything_by_default():
    settings = _settings(destinations=f"{PACS},{VIEWER}")
    for destination in settings.destinations:
        assert settings.outputs_for(destination) == ("SR", "SC", "GSPS")


def test_destination_outputs_by_ae_title_or_full_address_override_the_default():
    settings = _settings(
        destinations=f"{PACS},{VIEWER}",
        outputs="sr",
        destination_outputs=f"PACS=SR+GSPS,{VIEWER}=SC",
    )
    assert settings.outputs_for(Destination.parse(PACS)) == ("SR", "GSPS")
    assert settings.outputs_for(Destination.parse(VIEWER)) == ("SC",)
    assert settings.wanted_outputs == ("SR", "SC", "GSPS")
    assert _settings(destinations=PACS, outputs="SR").wanted_outputs == ("SR",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"outputs": "SR,PDF"}, "PDF"),
        ({"destination_outputs": "ARCHIVE=SR"}, "not one of the destinations"),
        ({"destination_outputs": "PACS"}, "AE=SR"),
        ({"destination_outputs": "PACS="}, "no result at all"),
        ({"region_level": "1.5"}, "region_level"),
        ({"gsps_series_description": "x" * 65}, "gsps_series_description"),
    ],
)
def test_bad_result_settings_are_refused_with_the_key_named(env, message):
    with pytest.raises(ConfigError, match=message):
        _settings(destinations=PACS, **env)


def test_series_numbers_and_descriptions_are_read_from_the_environment():
    settings = _settings(
        sc_series_number="7002", finding_sc_series_description="AI findings", region_level="0.3"
    )
    assert settings.series("sc") == ResultSeries("sc", 7002, "")
    assert settings.series("finding_sc") == ResultSeries("finding_sc", 9903, "AI findings")
    assert settings.region_level == 0.3


def test_series_keys_of_a_config_file_set_their_series_and_the_environment_wins(tmp_path):
    config = tmp_path / "cxrnode.toml"
    config.write_text('gsps_series_number = 7004\nsr_series_description = "AI report"\n')
    settings = load_settings(config, environ={"CXRNODE_GSPS_SERIES_NUMBER": "7044"})
    assert settings.result_series == (
        ResultSeries("sr", 9901, "AI report"),
        ResultSeries("gsps", 7044),
        ResultSeries("sc", 9902),
        ResultSeries("finding_sc", 9903),
        ResultSeries("ig_sc", 9905),
    )
    assert [s.output for s in settings.result_series] == ["SR", "GSPS", "SC", "SC", "SC"]
    shown = describe(settings)
    assert "result_series" not in shown
    assert (shown["gsps_series_number"], shown["sr_series_description"]) == (7044, "AI report")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sr_series_number", "-1", "sr_series_number -1 is not a DICOM IS value"),
        ("sc_series_number", str(2**31), "sc_series_number 2147483648 is not a DICOM IS"),
        ("sc_series_number", "ninety", "setting 'sc_series_number'"),
        ("finding_sc_series_description", "AI\\regions", "finding_sc_series_description"),
        ("result_series", "sr", "unknown setting 'result_series'"),
    ],
)
def test_bad_series_settings_are_refused_with_the_key_named(tmp_path, key, value, message):
    config = tmp_path / "cxrnode.toml"
    config.write_text(f"{key} = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=message):
        load_settings(config, environ={})
    if key != "result_series":
        with pytest.raises(ConfigError, match=message):
            _settings(**{key: value})


def test_settings_without_every_series_once_are_refused():
    with pytest.raises(ConfigError, match="result_series"):
        Settings(result_series=DEFAULT_RESULT_SERIES[:3]).validate()
    twice = (*DEFAULT_RESULT_SERIES[:3], DEFAULT_RESULT_SERIES[0])
    with pytest.raises(ConfigError, match="result_series"):
        Settings(result_series=twice).validate()
