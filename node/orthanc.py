"""A private Orthanc on loopback ports, with its own config and storage, driven over REST.

Used by ``cxrnode demo`` and by the integration tests: the real PACS on the other side of the
node, started and stopped like any other process.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import CxrNodeError


class OrthancError(CxrNodeError):
    """Orthanc could not be started or refused a request."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Modality:
    """A DICOM peer Orthanc knows by name (``/modalities/{name}``)."""

    name: str
    ae_title: str
    host: str
    port: int


class Orthanc:
    """An Orthanc server process.

    Parameters
    ----------
    workdir:
        Holds the generated config, the storage and the log.
    modalities:
        Peers Orthanc may send to and accept from.
    ae_title:
        Orthanc's own AE title.
    tcp_nodelay:
        Start Orthanc with ``TCP_NODELAY=1``: dcmtk, which Orthanc's DICOM side is built on,
        leaves Nagle's algorithm on unless told, and its C-STORE responses then wait out the
        peer's delayed ACK (~40 ms an instance). A PACS tuned for throughput runs with it.
    users:
        User name to password: Orthanc then requires HTTP Basic authentication, and this
        client's own REST calls authenticate as the first user.
    """

    def __init__(
        self,
        workdir: Path,
        modalities: list[Modality] = (),
        ae_title: str = "ORTHANC",
        http_port: int | None = None,
        dicom_port: int | None = None,
        executable: str | None = None,
        tcp_nodelay: bool = True,
        users: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.users = dict(users or {})
        self.ae_title = ae_title
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.modalities = list(modalities)
        self.executable = executable or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.tcp_nodelay = tcp_nodelay
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        storage = str(self.workdir / "storage")
        return {
            "Name": "cxrnode-test-orthanc",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAet": False,
            # Accept results only from the peers we declared, as a hospital PACS would.
            "DicomAlwaysAllowStore": False,
            "DicomModalities": {
                m.name: {"AET": m.ae_title, "Host": m.host, "Port": m.port, "AllowStore": True}
                for m in self.modalities
            },
            "Plugins": [],
            "StableAge": 1,
        }

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        if not Path(self.executable).exists():
            raise OrthancError(f"Orthanc not found at {self.executable} (apt-get install orthanc)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - owned by the process
        self._process = subprocess.Popen(
            [self.executable, str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1" if self.tcp_nodelay else "0"},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancError(f"Orthanc exited at start; see {self.workdir / 'orthanc.log'}")
            try:
                self.get("/system")
                return self
            except (OSError, OrthancError):
                time.sleep(0.2)
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # REST ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str = "") -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if self.users:  # the REST calls authenticate as the first registered user
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=120) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"{method} {path}: HTTP {exc.code} {exc.read()[:300]!r}") from exc

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, payload: Any) -> Any:
        answer = self.request("POST", path, json.dumps(payload).encode(), "application/json")
        return json.loads(answer) if answer else None

    def upload(self, dicom: bytes) -> dict[str, Any]:
        """Store one DICOM file (``POST /instances``); returns Orthanc's answer with its IDs."""
        return json.loads(self.request("POST", "/instances", dicom, "application/dicom"))

    def send_study(self, modality: str, study_id: str) -> Any:
        """C-STORE a study to a declared modality, synchronously."""
        return self.post_json(
            f"/modalities/{modality}/store", {"Resources": [study_id], "Synchronous": True}
        )

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        return self.get(f"/studies/{study_id}/instances")

    def instance_file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        return self.get(f"/instances/{instance_id}/simplified-tags")
