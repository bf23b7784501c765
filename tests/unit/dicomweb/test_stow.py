"""What the STOW-RS sender makes of each answer a DICOMweb server can give."""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

from node.dicomweb.stow import MAX_RESPONSE_BYTES, StowSender, StowTarget
from node.errors import ConfigError


@pytest.fixture
def files(shared_data: Path) -> list[Path]:
    folder = shared_data / "rsna-pneumonia-sample" / "stage_1_train_images"
    return sorted(folder.glob("*.dcm"))[:3]


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _sequence(uids, reason: int | None = None) -> dict:
    items = []
    for uid in uids:
        item = {"00081155": {"vr": "UI", "Value": [uid]}}
        if reason is not None:
            item["00081197"] = {"vr": "US", "Value": [reason]}
        items.append(item)
    return {"vr": "SQ", "Value": items}


@contextmanager
def _server(status: int, answer: bytes) -> Iterator[tuple[int, list]]:
    requests: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            requests.append((self.path, dict(self.headers), body))
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], requests
    finally:
        server.shutdown()
        server.server_close()


def test_the_body_is_multipart_related_with_each_file_byte_for_byte(files) -> None:
    with _server(200, b"{}") as (port, requests):
        deliveries = StowSender().send(StowTarget.parse(f"http://127.0.0.1:{port}/dw"), files)
    assert all(d.ok for d in deliveries)
    ((path, headers, body),) = requests
    assert path == "/dw/studies"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    )
    parts = [part.get_payload(decode=True) for part in message.iter_parts()]
    assert parts == [f.read_bytes() for f in files]


def test_a_partial_store_delivers_only_what_the_server_confirmed(files) -> None:
    stored, failed, unmentioned = files
    answer = {
        "00081199": _sequence([_uid(stored)]),
        "00081198": _sequence([_uid(failed)], reason=0xA700),
    }
    with _server(202, json.dumps(answer).encode()) as (port, _):
        deliveries = StowSender().send(StowTarget.parse(f"http://127.0.0.1:{port}"), files)
    assert [d.ok for d in deliveries] == [True, False, False]
    assert "refused, failure reason 0xA700" in deliveries[1].error
    assert "HTTP 202, not confirmed" in deliveries[2].error


def test_a_conflict_fails_every_file_with_its_reason(files) -> None:
    answer = {"00081198": _sequence([_uid(f) for f in files], reason=0xC122)}
    with _server(409, json.dumps(answer).encode()) as (port, _):
        deliveries = StowSender().send(StowTarget.parse(f"http://127.0.0.1:{port}"), files)
    assert [d.error.endswith("failure reason 0xC122") for d in deliveries] == [True] * 3


def test_a_server_error_fails_every_file_and_quotes_the_server(files) -> None:
    with _server(503, b"maintenance until 10:00") as (port, _):
        deliveries = StowSender().send(StowTarget.parse(f"http://127.0.0.1:{port}"), files[:1])
    assert deliveries[0].error.endswith("HTTP 503: maintenance until 10:00")


def test_an_oversized_answer_is_not_read_into_memory(files) -> None:
    with _server(202, b"[" + b" " * (MAX_RESPONSE_BYTES + 10) + b"]") as (port, _):
        deliveries = StowSender().send(StowTarget.parse(f"http://127.0.0.1:{port}"), files[:1])
    assert "exceeds" in deliveries[0].error


def test_nobody_listening_fails_without_raising(files) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deliveries = StowSender(timeout_s=2).send(StowTarget.parse(f"http://127.0.0.1:{port}"), files)
    assert [d.ok for d in deliveries] == [False] * 3
    assert "unreachable" in deliveries[0].error


def test_credentials_go_into_the_header_and_never_into_what_is_logged(files) -> None:
    target = StowTarget.parse("https://ai:p%40ss@pacs.example:8443/dicom-web/")
    assert str(target) == "https://pacs.example:8443/dicom-web/studies"
    with _server(200, b"") as (port, requests):
        local = StowTarget.parse(f"http://ai:p%40ss@127.0.0.1:{port}/dicom-web")
        StowSender().send(local, files[:1])
    assert requests[0][1]["Authorization"] == "Basic YWk6cEBzcw=="  # ai:p@ss


@pytest.mark.parametrize(
    "url", ["ftp://pacs/dicom-web", "pacs:8042", "http:///studies", "http://pacs/dw?x=1"]
)
def test_a_destination_that_is_not_an_http_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="STOW-RS destination"):
        StowTarget.parse(url)
