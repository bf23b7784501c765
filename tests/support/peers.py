"""Real peers for integration tests: the node as a separate process, the Orthanc that
docker/compose.yaml runs, dcmtk tools, polling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.orthanc import Modality, Orthanc

NODE_AE = "CXRNODE"
DOCKER = Path(__file__).resolve().parents[2] / "docker"


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, step_s: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(step_s)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (apt-get install orthanc dcmtk dicom3tools)")
    return path


def node_env(orthanc: Orthanc, data_dir: Path, model: Path) -> dict[str, str]:
    """The ``CXRNODE_*`` settings of a node that stores under ``data_dir``, runs ``model`` and
    delivers to ``orthanc``; no report feed, so studies run as soon as they are stable."""
    return {
        "CXRNODE_AE_TITLE": NODE_AE,
        "CXRNODE_DICOM_HOST": "127.0.0.1",
        "CXRNODE_DESTINATIONS": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        "CXRNODE_DATA_DIR": str(data_dir),
        "CXRNODE_MODEL": str(model),
        "CXRNODE_STABLE_AGE_S": "1",
        "CXRNODE_PAIRING_WINDOW_S": "0",
        "CXRNODE_HL7_PORT": "0",
        "CXRNODE_DELIVERY_RETRY_INITIAL_S": "1",
        "CXRNODE_LOG_LEVEL": "INFO",
    }


def storescu(
    port: int, path: Path, calling_ae: str = "ORTHANC", options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Send ``path`` to the node on 127.0.0.1:``port`` with dcmtk's storescu (called AE
    ``NODE_AE``); ``options`` go before the AE titles (e.g. ``("-xs",)`` to propose the file's
    own transfer syntax). The caller checks the exit status."""
    command = [need("storescu"), *options, "-aet", calling_ae, "-aec", NODE_AE]
    return subprocess.run(
        [*command, "127.0.0.1", str(port), str(path)], capture_output=True, text=True
    )


class NodeProcess:
    """``cxrnode serve`` in its own process, configured through ``CXRNODE_*`` variables."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.port = int(env["CXRNODE_DICOM_PORT"])
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "node.log"

    def start(self, timeout_s: float = 60.0) -> NodeProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_for(self._answers_echo, timeout_s, "the node to answer C-ECHO", step_s=0.3)
        return self

    def _answers_echo(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"node exited with {self.process.returncode}:\n{self.log()}")
        ae = AE(ae_title="ORTHANC")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AE)
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and status.Status == 0

    def stop(self) -> int | None:
        """SIGTERM and wait: the graceful path."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def audit(self, *args: str) -> list[dict]:
        """Query the audit log through the admin's own command."""
        out = subprocess.run(
            [sys.executable, "-m", "node.cli", "audit", "--format", "json", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)


def results_in_orthanc(orthanc: Orthanc, study_id: str, expected: int) -> list[dict] | None:
    """The study's instances once it holds ``expected`` of them (sources + SR + SC)."""
    instances = orthanc.study_instances(study_id)
    return instances if len(instances) >= expected else None


class ComposeOrthanc(Orthanc):
    """Orthanc run natively with docker/orthanc.json and the Lua script it loads, as compose
    runs them: every key as the file has it, but for the ports, the storage, the paths of the
    mounted files and the hosts of its modalities (compose's service names), which become
    ``modalities``' loopback addresses.

    Parameters
    ----------
    modalities:
        Where each of the file's ``DicomModalities`` entries listens here, by its name there;
        an entry not given keeps the file's host and port.
    """

    def __init__(self, workdir: Path, modalities: list[Modality] = ()) -> None:
        super().__init__(workdir, modalities)
        self.compose_config = json.loads((DOCKER / "orthanc.json").read_text())

    def config(self) -> dict:
        storage = str(self.workdir / "storage")
        config = json.loads(json.dumps(self.compose_config))
        config.update(
            HttpPort=self.http_port,
            DicomPort=self.dicom_port,
            StorageDirectory=storage,
            IndexDirectory=storage,
            LuaScripts=[
                str(compose_mounts("orthanc")[path]) for path in config.get("LuaScripts", [])
            ],
        )
        here = {m.name: m for m in self.modalities}
        for name, entry in config.get("DicomModalities", {}).items():
            if name in here:
                entry.update(Host=here[name].host, Port=here[name].port)
        return config

    def log(self) -> str:
        return (self.workdir / "orthanc.log").read_text(errors="replace")


def compose_mounts(service: str) -> dict[str, Path]:
    """The files of the repository that docker/compose.yaml mounts into ``service``, by the
    path they have there."""
    import yaml

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    mounts = {}
    for volume in compose["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = DOCKER / source.removeprefix("./")
    return mounts
