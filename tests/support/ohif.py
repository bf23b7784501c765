"""OHIF Viewer 3 (the npm package ``@ohif/app``, its built ``dist/``) on one origin with Orthanc's
DICOMweb (Debian ``orthanc-dicomweb``), driven in headless Chromium by ``playwright-core``.

``scripts/setup`` fetches the viewer and playwright-core into ``.cache/ohif``; the tests that need
them skip with the reason when they, Chromium, node or the DICOMweb plugin are missing. The
viewer and the renderer are not ours: what the screenshots show is what a radiologist's OHIF
shows.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from node.orthanc import Orthanc
from support.chromium import need_chromium

REPO = Path(__file__).resolve().parents[2]
OHIF_VERSION = "3.13.2"
CACHE = REPO / ".cache" / "ohif"
OHIF_DIST = CACHE / f"app-{OHIF_VERSION}" / "dist"
PLAYWRIGHT = CACHE / "node_modules" / "playwright-core"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DRIVER = Path(__file__).with_name("ohif_driver.js")
# Software WebGL (no GPU here); no network beyond the page.
CHROMIUM_ARGS = (
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)
_PROXIED = ("/dicom-web/", "/wado")


def need_ohif() -> tuple[Path, Path, str]:
    """(OHIF's dist folder, the node executable, Chromium's path), or skip the test."""
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
    if not (OHIF_DIST / "index.html").exists():
        pytest.skip(
            f"OHIF {OHIF_VERSION} is not in {OHIF_DIST} (scripts/setup fetches it from npm)"
        )
    if not (PLAYWRIGHT / "package.json").exists():
        pytest.skip(f"playwright-core is not in {PLAYWRIGHT.parent} (scripts/setup installs it)")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js) is not on PATH (apt-get install npm)")
    return OHIF_DIST, Path(node), need_chromium()


class OrthancWithDicomWeb(Orthanc):
    """An `Orthanc` that serves DICOMweb at ``/dicom-web/`` and WADO-URI at ``/wado``."""

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
        }
        return config


def app_config(name: str = "cxrnode-test") -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source on this origin, no prompts.

    ``disableConfirmationPrompts`` makes OHIF hydrate a rehydratable SR as soon as it is shown,
    as a radiologist's "yes, load the measurements" would.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": name,
            "name": "orthanc",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "wadoUriRoot": "/wado",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "name": name,
        "routerBasename": None,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "disableConfirmationPrompts": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class OhifServer:
    """OHIF's static files and Orthanc's DICOMweb on one loopback origin.

    Requests under ``/dicom-web/`` and ``/wado`` go to Orthanc with the Host header kept (so the
    bulk data URIs Orthanc writes point back here); ``/app-config.js`` is `app_config`; any other
    path is a file of ``dist`` or, for the viewer's own routes, its ``index.html``.
    """

    def __init__(self, dist: Path, orthanc: Orthanc) -> None:
        self.dist = dist.resolve()
        self.orthanc = orthanc
        self._config = app_config().encode()
        handler = self._handler()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OhifServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: pytest shows failures
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.startswith(_PROXIED):
                    server._proxy(self)
                elif self.path.split("?")[0] == "/app-config.js":
                    server._send(self, 200, "application/javascript", server._config)
                else:
                    server._static(self)

        return Handler

    def _proxy(self, request: BaseHTTPRequestHandler) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.orthanc.http_port, timeout=120)
        headers = {
            key: value
            for key, value in request.headers.items()
            if key.lower() in ("accept", "host", "range")
        }
        try:
            upstream.request("GET", request.path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
            self._send(request, answer.status, answer.getheader("Content-Type", ""), body)
        finally:
            upstream.close()

    def _static(self, request: BaseHTTPRequestHandler) -> None:
        relative = request.path.split("?")[0].lstrip("/")
        path = (self.dist / relative).resolve()
        if not path.is_relative_to(self.dist) or not path.is_file():
            path = self.dist / "index.html"  # the viewer's client-side routes
        self._send(request, 200, _content_type(path), path.read_bytes())

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes) -> None:
        request.send_response(status)
        if ctype:
            request.send_header("Content-Type", ctype)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


_TYPES = {
    ".js": "application/javascript",
    ".mjs": "application/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}


def _content_type(path: Path) -> str:
    return _TYPES.get(path.suffix, "application/octet-stream")


def drive(plan: dict[str, Any], workdir: Path, timeout_s: float = 240) -> dict[str, Any]:
    """Run ``ohif_driver.js`` (playwright-core, headless Chromium) on ``plan``; its report.

    ``plan`` holds ``url`` (the OHIF origin), ``out`` (where screenshots go), ``chromium`` and
    ``steps`` (see the driver). The report holds per step the page text, the screenshot path
    and what the viewer logged.
    """
    _, node, chromium = need_ohif()
    plan = {**plan, "chromium": chromium, "args": list(CHROMIUM_ARGS)}
    plan_path = workdir / "ohif-plan.json"
    plan_path.write_text(json.dumps(plan))
    done = subprocess.run(
        [str(node), str(DRIVER), str(plan_path)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={"NODE_PATH": str(PLAYWRIGHT.parent), "PATH": "/usr/bin:/bin", "HOME": str(workdir)},
    )
    if done.returncode != 0:
        raise AssertionError(f"the OHIF driver failed ({done.returncode}): {done.stderr[-4000:]}")
    return json.loads(done.stdout)


PageBox = tuple[float, float, float, float]  # (left, top, right, bottom), page CSS pixels


def overlay_text_boxes(geometry: dict[str, Any]) -> list[tuple[str, str, PageBox]]:
    """What OHIF itself draws over its viewports, from a driver step's ``geometry``: per text
    line of its corner overlays and orientation markers (and the whole box of its action
    corners' icons and of the cine player), the overlay's kind, the text and its box on the
    page."""
    return [
        (overlay["kind"], overlay["text"], tuple(line))
        for overlay in geometry["overlays"]
        for line in overlay["textBoxes"]
    ]


def image_box_on_page(viewport: dict[str, Any], box: tuple[int, int, int, int]) -> PageBox:
    """Where a box of the viewport's image (pixels, right/bottom exclusive) lies on the page.

    The driver gives the page position of the image's outer corners through Cornerstone's own
    transform; an unrotated, unflipped image (the default) maps each axis linearly.
    """
    (x0, y0), (x1, y1) = viewport["imageTopLeft"], viewport["imageBottomRight"]
    sx, sy = (x1 - x0) / viewport["columns"], (y1 - y0) / viewport["rows"]
    if sx <= 0 or sy <= 0:
        raise AssertionError(f"the viewport shows its image flipped or rotated: {viewport}")
    left, top, right, bottom = box
    return (x0 + left * sx, y0 + top * sy, x0 + right * sx, y0 + bottom * sy)


def overlaps(a: PageBox, b: PageBox) -> bool:
    """Whether two boxes share any area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
