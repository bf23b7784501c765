"""Orthanc with its Web Viewer plugin (Debian ``orthanc-webviewer``), and a screenshot of a
series as a radiologist's browser shows it in that viewer.

The viewer is not ours: it fetches the instances over Orthanc's REST API and draws them on a
canvas with its own JavaScript (Cornerstone), so the screenshot shows what a person would see.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from node.orthanc import Orthanc
from support.chromium import _FLAGS, need_chromium

WEB_VIEWER_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so")
# Virtual time the page gets to run its scripts and fetch the images before the screenshot;
# virtual time only advances when the page is idle, so this is not a wall-clock wait.
_SCRIPT_BUDGET_MS = 30_000


def need_web_viewer() -> Path:
    """The plugin's path, or skip the test."""
    if not WEB_VIEWER_PLUGIN.exists():
        pytest.skip("Orthanc Web Viewer not installed (apt-get install orthanc-webviewer)")
    return WEB_VIEWER_PLUGIN


class OrthancWithViewer(Orthanc):
    """An `Orthanc` that loads the Web Viewer plugin, its cache beside the storage."""

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["Plugins"] = [str(need_web_viewer())]
        config["WebViewer"] = {"CachePath": str(self.workdir / "webviewer-cache")}
        return config

    def viewer_url(self, series_id: str) -> str:
        return f"{self.url}/web-viewer/app/viewer.html?series={series_id}"


def screenshot_viewer(url: str, path: Path, profile: Path, size: str = "1400,900") -> Path:
    """Load ``url`` in headless Chromium, let its scripts run, and save a PNG of the window."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [
        need_chromium(),
        *_FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={_SCRIPT_BUDGET_MS}",
        f"--window-size={size}",
        f"--screenshot={path}",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if result.returncode != 0 or not path.exists():
        raise AssertionError(f"chromium made no screenshot: {result.stderr[-2000:]}")
    return path
