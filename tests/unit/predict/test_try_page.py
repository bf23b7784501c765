"""The admin's /try page in headless Chromium (playwright-core, as the OHIF tests drive it): log
in, upload a real RSNA DICOM with report text, see the findings and the images; the screenshot
is kept under /tmp/cxrnode-artifacts/ (skipped where Chromium, Node.js or playwright-core is
missing). The similar cases and the model card's escaping are read from the HTML itself."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from unit.predict.test_predict_api import multipart, post

from node.admin.pages import card_html
from node.admin.server import AdminServer
from node.config import Settings
from node.predict import SimilarCase
from storage.database import Database
from support.chromium import need_chromium
from support.ohif import CHROMIUM_ARGS, PLAYWRIGHT

TOKEN = "test-token-0123456789abcdef"
DRIVER = Path(__file__).parents[2] / "support" / "try_page_driver.js"
ARTIFACTS = Path("/tmp/cxrnode-artifacts")


def drive(url: str, file: Path, screenshot: Path, workdir: Path) -> dict:
    chromium = need_chromium()
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js) is not on PATH (apt-get install npm)")
    if not (PLAYWRIGHT / "package.json").exists():
        pytest.skip(f"playwright-core is not in {PLAYWRIGHT.parent} (scripts/setup installs it)")
    plan = {
        "url": url,
        "token": TOKEN,
        "file": str(file),
        "report": "FINDINGS: Patchy opacity in the right lower lobe.",
        "screenshot": str(screenshot),
        "chromium": chromium,
        "args": list(CHROMIUM_ARGS),
    }
    (workdir / "plan.json").write_text(json.dumps(plan))
    done = subprocess.run(
        [node, str(DRIVER), str(workdir / "plan.json")],
        capture_output=True,
        text=True,
        timeout=180,
        env={"NODE_PATH": str(PLAYWRIGHT.parent), "PATH": "/usr/bin:/bin", "HOME": str(workdir)},
    )
    if done.returncode != 0:
        raise AssertionError(f"the /try driver failed ({done.returncode}): {done.stderr[-4000:]}")
    return json.loads(done.stdout)


@pytest.fixture
def admin(tmp_path: Path, default_predictor):
    """The admin server with the shipped default package, as the node hands it its model."""
    settings = Settings(admin_token=TOKEN, data_dir=tmp_path / "var")
    db = Database(settings.database_url)
    db.create_schema()
    server = AdminServer(settings, db, port=0)
    server.serve_model(default_predictor)
    yield server
    server.stop()
    db.dispose()


def test_a_person_uploads_an_rsna_dicom_and_sees_findings_images_and_the_model_card(
    tmp_path: Path, admin: AdminServer, rsna_dicom: Path
):
    admin.start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "try-page.png"
    page = drive(admin.url, rsna_dicom, screenshot, tmp_path)

    assert page["title"].startswith("Try the model")
    names = [row[1] for row in page["findings"]]
    assert sorted(names) == ["Abnormal", "Pneumonia"]
    probabilities = [float(row[2]) for row in page["findings"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(row[4] in ("present", "absent") for row in page["findings"])
    overview = next(image for image in page["images"] if image["id"] == "overview")
    assert overview["loaded"] and overview["width"] == 1024  # the CSP lets data: images in
    assert len(page["images"]) >= 2  # the overview and at least the top finding's map
    assert "<h1>cxrnode-abnormal-pneumonia" in page["card"] and "<table>" in page["card"]
    assert page["similar"] == "No earlier cases stored."
    assert screenshot.stat().st_size > 10_000


def test_similar_cases_are_listed_from_the_context_value_and_the_card_is_shown_not_run(
    admin: AdminServer, rsna_dicom: Path
):
    # What the lead wires to node/similar.py: the cases near a prediction.
    case = SimilarCase("ACC-<1001>", ("Pneumonia",), 0.125)
    context = admin.app.state.admin
    admin.app.state.admin = replace(context, similar_cases=lambda prediction: [case])
    admin.start()
    body, content_type = multipart(rsna_dicom.name, rsna_dicom.read_bytes())
    status, _, html = post(admin.port, "/try", body, content_type)
    assert status == 200
    assert "ACC-&lt;1001&gt;" in html.decode() and "0.125" in html.decode()
    assert "No earlier cases stored" not in html.decode()

    card = card_html("# Card\n<script>alert(1)</script>\n\n[link](javascript:alert(1))")
    assert "<script>" not in card and "&lt;script&gt;" in card and "href" not in card
