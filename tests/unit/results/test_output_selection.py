"""Which result kinds each destination gets, and the result-series settings, as configured."""

from __future__ import annotations

import pytest

from node.config import Destination, load_settings
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
    assert settings.sc_series_number == 7002
    assert settings.finding_sc_series_description == "AI findings"
    assert settings.region_level == 0.3
