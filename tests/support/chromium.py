"""Headless Chromium (Debian's ``chromium``) loading a page as a person's browser would: its DOM
after load, or a screenshot. Tests needing it are skipped when it is not installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

_NAMES = ("chromium", "chromium-browser", "google-chrome")
# No sandbox: the tests run as root in CI. No network beyond the page: no updates, sync,
# QUIC or background requests.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def need_chromium() -> str:
    """The browser's path, or skip the test."""
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium not installed (apt-get install chromium)")


def _run(args: list[str], profile: Path, timeout_s: float) -> subprocess.CompletedProcess:
    profile.mkdir(parents=True, exist_ok=True)
    command = [need_chromium(), *_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def dump_dom(url: str, profile: Path, timeout_s: float = 60) -> str:
    """The page's DOM after it loaded (redirects followed, cookies kept in ``profile``)."""
    result = _run(["--dump-dom", url], profile, timeout_s)
    if result.returncode != 0:
        raise AssertionError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def screenshot(url: str, path: Path, profile: Path, size: str = "1400,900", timeout_s: float = 60):
    """Save a PNG of the page as a browser window of ``size`` shows it."""
    result = _run([f"--screenshot={path}", f"--window-size={size}", url], profile, timeout_s)
    if result.returncode != 0 or not path.exists():
        raise AssertionError(f"chromium made no screenshot: {result.stderr[-2000:]}")
    return path
