"""The admin interface of a running node: a real study from Orthanc through the node, then the
admin page in headless Chromium, the API's token check, and ``cxrnode audit verify`` catching a
row changed in the database file."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.orthanc import free_port
from storage.run_summary import RunSummary
from support.chromium import dump_dom, need_chromium, screenshot
from support.peers import wait_for

pytestmark = pytest.mark.integration

TOKEN = "integration-admin-token-42"


def restamped(source: Path, accession: str, patient_id: str) -> tuple[bytes, str]:
    """A real chest X-ray as a new study (new UIDs, accession and patient ID)."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.AccessionNumber = accession
    ds.PatientID = patient_id
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.StudyInstanceUID)


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def audit_verify(node) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "audit", "verify"],
        env=node.env,
        cwd=node.workdir,
        capture_output=True,
        text=True,
    )


def test_admin_page_shows_the_study_just_processed_and_verify_catches_tampering(
    make_node, orthanc, shared_data, tmp_path
):
    need_chromium()
    admin_port = free_port()
    node = make_node(admin_port=admin_port, admin_token=TOKEN)
    base = f"http://127.0.0.1:{admin_port}"
    source = sorted((shared_data / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    data, study_uid = restamped(source[2], "ADMIN-0001", "PAT-ADMIN-1")
    uploaded = orthanc.upload(data)
    orthanc.send_study("cxrnode", uploaded["ParentStudy"])
    wait_for(
        lambda: node.audit("--study", study_uid, "--action", "study.done"),
        120,
        "the study to be done",
    )

    # Without the token: refused, and nothing about the study in the answer.
    for path in ("/", "/api/audit", f"/api/studies/{study_uid}/timeline", "/api/stats"):
        status, body = http_get(base + path)
        assert status == 401, path
        assert "ADMIN-0001" not in body and "PAT-ADMIN-1" not in body
    status, body = http_get(base + "/api/health")
    assert status == 200 and json.loads(body)["destinations"][0]["reachable"] is True
    assert "ADMIN-0001" not in body

    # With it: what the AI said, as the audit log recorded it.
    (inferred,) = node.audit("--study", study_uid, "--action", "inference.completed")
    top = RunSummary.from_json(inferred["detail"]).findings[0]
    status, body = http_get(f"{base}/api/studies/ADMIN-0001/timeline", TOKEN)
    assert status == 200 and json.loads(body)["study"]["state"] == "done"

    # The page, in a real browser: ?token= is traded for the session cookie.
    profile = tmp_path / "chromium-profile"
    dom = dump_dom(f"{base}/?token={TOKEN}", profile)
    assert "ADMIN-0001" in dom and study_uid in dom and "PAT-ADMIN-1" in dom
    assert f"{top.name} {top.probability:.2f}" in dom
    assert "done" in dom and inferred["detail"]["model"] in dom
    picture = screenshot(f"{base}/?token={TOKEN}", tmp_path / "admin_page.png", profile)
    shutil.copy(picture, Path("/tmp/admin_page.png"))

    # The chain is intact; a row changed in the database file is caught, and named.
    checked = audit_verify(node)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("audit chain intact")
    with sqlite3.connect(tmp_path / "node-data" / "cxrnode.db") as conn:
        conn.execute(
            "UPDATE audit_events SET detail = json_set(detail, '$.model', 'a-better-model') "
            "WHERE id = ?",
            (inferred["id"],),
        )
    broken = audit_verify(node)
    assert broken.returncode == 1
    assert f"first broken row: event id {inferred['id']} (edited)" in broken.stdout
