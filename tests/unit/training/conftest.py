"""Fixtures for the training tests: paths into the staged real data."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def iu_dir(shared_data: Path) -> Path:
    return shared_data / "iu-xray-openi-reports"


@pytest.fixture(scope="session")
def nih_thumbs(shared_data: Path) -> Path:
    return shared_data / "nih-chestxray14-thumbs-kcr2019" / "NIH1000"


@pytest.fixture(scope="session")
def nih_data_entry(shared_data: Path) -> Path:
    return shared_data / "nih-chestxray14-samples" / "Data_Entry_2017_v2020.csv.gz"


@pytest.fixture(scope="session")
def nih512(shared_data: Path) -> Path:
    return shared_data / "nih-chestxray14-1000-darkcovidnet"


@pytest.fixture(scope="session")
def kermany(shared_data: Path) -> Path:
    return shared_data / "kermany-pediatric-pneumonia-224" / "dataset"
