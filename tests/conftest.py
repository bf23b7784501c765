"""Fixtures shared by every test: where the real public data lives."""

from __future__ import annotations

import os
from pathlib import Path

# Before any test module imports torch: see models/__init__.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The staged public chest X-ray data (``../shared/data`` beside the repo by default)."""
    return Path(os.environ.get("CXRNODE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "MANIFEST.md").exists():
        pytest.skip(f"shared public data not found at {path} (set CXRNODE_SHARED_DATA)")
    return path
