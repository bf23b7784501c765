"""An admin re-sends a run's results and re-runs a study, from the CLI and the admin API, on a
running node delivering to a real Orthanc."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pydicom
import pytest

from node.orthanc import free_port
from support.peers import wait_for
from support.rsna import rsna_case_path

pytestmark = pytest.mark.integration

TOKEN = "reprocess-admin-token-0123"


def _cli(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        env=node.env,
        cwd=node.workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _post(url: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_resend_and_rerun_from_the_cli_and_the_api(make_node, orthanc, shared_data) -> None:
    admin_port = free_port()
    node = make_node(admin_port=admin_port, admin_token=TOKEN)
    source = rsna_case_path(shared_data)
    study = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    orthanc.send_study("cxrnode", orthanc.upload(source.read_bytes())["ParentStudy"])

    def events(action: str) -> list[dict]:
        return node.audit("--study", study, "--action", action)

    wait_for(lambda: events("study.done"), 180, "the first run to be delivered")
    sent_first = len(events("result.sent"))

    resent = _cli(node, "resend", study)
    assert resent.returncode == 0, resent.stderr
    assert f"{sent_first} objects queued again" in resent.stdout
    wait_for(lambda: len(events("study.done")) == 2, 120, "the resent results to be confirmed")
    assert len(events("result.sent")) == 2 * sent_first
    (requested,) = events("result.resend_requested")
    assert requested["actor_user"]

    base = f"http://127.0.0.1:{admin_port}/api/studies/{study}"
    status, answer = _post(f"{base}/rerun")
    assert (status, answer["run"], answer["replaces_run"]) == (202, 2, 1)
    wait_for(lambda: len(events("study.done")) == 3, 180, "the re-run to be delivered")
    # Each run stored its image's embedding: the study is searched by the re-run's.
    similar = _cli(node, "similar", study, "--format", "json")
    assert similar.returncode == 0, similar.stderr
    answer = json.loads(similar.stdout)
    assert (answer["run"], answer["cases"]) == (2, [])  # the only study: nothing else to name
    assert answer["model_id"].startswith("cxrnode-")
    status, answer = _post(f"{base}/resend?destination=NOWHERE")
    assert status == 409 and "not a configured destination" in answer["detail"]
    refused = _cli(node, "rerun", "1.2.3.4.5")
    assert refused.returncode == 2 and "no study with" in refused.stderr
