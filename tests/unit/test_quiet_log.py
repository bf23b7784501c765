"""An idle node logs nothing: ``cxrnode serve`` in a subprocess with its assembly polling every
0.2 s says what it started, once, then stays silent until it is told to stop. No library
chatter (Alembic's migration steps) and the settings in one short line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
IDLE_S = 6.0


def test_an_idle_node_logs_its_start_once_and_then_nothing(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CXRNODE_DATA_DIR": str(tmp_path),  # a new database: the migrations run
        "CXRNODE_DICOM_HOST": "127.0.0.1",
        "CXRNODE_DICOM_PORT": str(free_port()),
        "CXRNODE_HL7_HOST": "127.0.0.1",
        "CXRNODE_HL7_PORT": str(free_port()),
        "CXRNODE_STABLE_AGE_S": "0.4",  # assembly polls every 0.2 s
        "CXRNODE_DESTINATIONS": f"PACS@127.0.0.1:{free_port()}",
        "CXRNODE_LOG_LEVEL": "INFO",
    }
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve"], env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 180
            while "node ready" not in log_path.read_text():
                assert node.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            ready_at = len(log_path.read_text().splitlines())
            time.sleep(IDLE_S)
            idle = log_path.read_text().splitlines()[ready_at:]
        finally:
            node.send_signal(signal.SIGTERM)
            code = node.wait(timeout=60)
    lines = log_path.read_text().splitlines()
    assert code == 0, lines
    assert idle == [], idle  # nothing while idle: no skipped ticks, no polling chatter
    (ready,) = [line for line in lines if "node ready" in line]
    assert len(ready) < 400 and "role all" in ready and "PACS@127.0.0.1" in ready
    assert "max_decoded_mb" not in ready  # a summary, not the settings dictionary
    assert not [line for line in lines if "alembic" in line or "apscheduler" in line], lines
    # What started, each said once: the model, the two listeners, ready; then stopping.
    assert len(lines) <= 6, lines
    assert lines[-1].endswith("shutting down"), lines
