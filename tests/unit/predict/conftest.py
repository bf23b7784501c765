"""Fixtures for trying a model without a PACS: the shipped default package's predictor (small,
image-only: the package a person tries first), the reference package's (multimodal: it reads
report text) and the real images the tests upload."""

from __future__ import annotations

from pathlib import Path

import pytest
from unit.models.conftest import (  # noqa: F401 - fixtures
    predictor,
    reference_package_dir,
    tiny_bert_dir,
)
from unit.models.test_attribution import cross_attention  # noqa: F401 - a fixture

from models.default import bundled_default_package
from models.package import load_package
from models.predictor import Predictor
from support.rsna import rsna_case_path

NIH_PNG = Path("nih-chestxray14-samples") / "00000013_003.png"


@pytest.fixture(scope="session")
def default_predictor() -> Predictor:
    """The shipped default package on the CPU, shared: tests must leave it as they found it."""
    return Predictor(load_package(bundled_default_package()), device="cpu")


@pytest.fixture
def rsna_dicom(shared_data: Path) -> Path:
    return rsna_case_path(shared_data)


@pytest.fixture
def nih_png(shared_data: Path) -> Path:
    return shared_data / NIH_PNG
