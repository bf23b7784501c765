"""``cxrnode serve`` refuses a setting it cannot run with before it starts anything: one line on
stderr, a non-zero exit, no ``node.started`` in the audit log, nothing listening; a receiver
never loads the model. Real CLI in a subprocess, real sockets, real SQLite file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import Destination, Settings
from node.errors import ConfigError
from node.orthanc import free_port
from node.service import Node
from node.startup import StartupError
from storage import audit
from storage.database import Database

REPO = Path(__file__).resolve().parents[2]
TOKEN = "a-long-enough-admin-token"


def serve(tmp_path: Path, **settings: object) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CXRNODE_DATA_DIR": str(tmp_path),
        "CXRNODE_DICOM_HOST": "127.0.0.1",
        "CXRNODE_DICOM_PORT": str(free_port()),
        "CXRNODE_HL7_PORT": "0",
        **{f"CXRNODE_{k.upper()}": str(v) for k, v in settings.items()},
    }
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def started_events(tmp_path: Path) -> list[str]:
    db = Database(f"sqlite:///{tmp_path / 'cxrnode.db'}")
    db.create_schema()
    with db.transaction() as session:
        return [e.action for e in audit.query(session, audit.AuditFilter(action="node."))]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_missing_model_is_one_line_and_no_node_started(tmp_path):
    line = one_line(serve(tmp_path, model="/nonexistent"))
    assert line.startswith("cxrnode: model '/nonexistent' cannot be loaded: ")
    assert "/nonexistent does not exist" in line and "CXRNODE_MODEL" in line
    assert started_events(tmp_path) == []


def test_an_admin_port_in_use_is_one_line_and_no_node_started(tmp_path, taken_port):
    done = serve(tmp_path, admin_host="127.0.0.1", admin_port=taken_port, admin_token=TOKEN)
    line = one_line(done)
    assert line == (
        f"cxrnode: admin_port {taken_port}: cannot listen on 127.0.0.1:{taken_port} "
        "(Address already in use); stop what holds it or set admin_port to a free port"
    )
    assert started_events(tmp_path) == []


def node_settings(tmp_path: Path, **values: object) -> Settings:
    defaults = {"dicom_host": "127.0.0.1", "dicom_port": free_port(), "hl7_port": 0}
    return Settings(data_dir=tmp_path, **{**defaults, **values})


def can_listen(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_refused_start_leaves_nothing_listening_or_running(tmp_path, taken_port):
    hl7_port = free_port()
    settings = node_settings(
        tmp_path,
        hl7_host="127.0.0.1",
        hl7_port=hl7_port,
        admin_host="127.0.0.1",
        admin_port=taken_port,
        admin_token=TOKEN,
    )
    threads = set(threading.enumerate())
    with pytest.raises(StartupError, match="admin_port"):
        Node(settings).start()
    assert can_listen(settings.dicom_port) and can_listen(hl7_port)
    assert set(threading.enumerate()) <= threads
    assert started_events(tmp_path) == []


def test_two_listeners_on_one_port_are_refused(tmp_path):
    port = free_port()
    settings = node_settings(tmp_path, dicom_port=port, hl7_host="127.0.0.1", hl7_port=port)
    with pytest.raises(StartupError, match="dicom_port and hl7_port are both"):
        Node(settings).start()


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"}, ConfigError, "TLS"),
        ({"destinations": (Destination("PACS", "", 104),)}, StartupError, "PACS@:104"),
        ({"destinations": (Destination("PACS", "pacs", 70000),)}, StartupError, "out of range"),
    ],
    ids=["TLS file missing", "destination without host", "destination port"],
)
def test_unusable_tls_files_and_malformed_destinations_stop_the_start(
    tmp_path, values, error, message
):
    with pytest.raises(error, match=message):
        Node(node_settings(tmp_path, **values)).start()
    assert started_events(tmp_path) == []


def test_a_receiver_never_loads_the_model(tmp_path):
    node = Node(node_settings(tmp_path, role="receiver", model="/nonexistent"))
    node.start()
    try:
        assert node.worker is None and sorted(node.loops) == ["assemble", "deliver", "retention"]
        assert not can_listen(node.settings.dicom_port)
    finally:
        node.stop()
    assert started_events(tmp_path) == ["node.started", "node.stopped"]


def test_a_taken_stow_rs_port_stops_the_start_before_anything_listens(tmp_path, taken_port):
    settings = node_settings(
        tmp_path, dicomweb_host="127.0.0.1", dicomweb_port=taken_port, dicomweb_token=TOKEN
    )
    with pytest.raises(StartupError, match="dicomweb_port"):
        Node(settings).start()
    assert can_listen(settings.dicom_port)
    assert started_events(tmp_path) == []


def test_a_stow_rs_port_without_a_long_token_is_a_config_error():
    with pytest.raises(ConfigError, match="dicomweb_token"):
        Settings(dicomweb_port=8081, dicomweb_token="short").validate()
