"""Fixtures for the models tests: the reference package, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.default import build_reference_package
from models.package import LoadedPackage, load_package
from models.predictor import Predictor


@pytest.fixture(scope="session")
def reference_package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reference_package(tmp_path_factory.mktemp("packages") / "reference")


@pytest.fixture
def reference_package(reference_package_dir: Path) -> LoadedPackage:
    return load_package(reference_package_dir)


@pytest.fixture
def predictor(reference_package: LoadedPackage) -> Predictor:
    return Predictor(reference_package, device="cpu")
