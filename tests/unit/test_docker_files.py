"""The compose setup cannot run here (no Docker engine); check its wiring statically."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import yaml

from node.config import Destination, Settings, load_settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_node_environment_is_valid_settings():
    env = compose()["services"]["node"]["environment"]
    known = {f"CXRNODE_{f.name.upper()}" for f in fields(Settings)}
    assert set(env) <= known
    settings = load_settings(None, {k: str(v) for k, v in env.items()})
    assert settings.ae_title == "CXRNODE"


def test_node_and_orthanc_point_at_each_other():
    services = compose()["services"]
    env = services["node"]["environment"]
    orthanc = json.loads((DOCKER / "orthanc.json").read_text())
    (destination,) = load_settings(
        None, {"CXRNODE_DESTINATIONS": env["CXRNODE_DESTINATIONS"]}
    ).destinations
    assert destination == Destination(orthanc["DicomAet"], "orthanc", orthanc["DicomPort"])
    modality = orthanc["DicomModalities"]["cxrnode"]
    assert modality["AET"] == env["CXRNODE_AE_TITLE"]
    assert modality["Host"] == "node" and modality["Port"] == int(env["CXRNODE_DICOM_PORT"])
    assert any(str(modality["Port"]) in port for port in services["node"]["ports"])
    assert "./orthanc.json:/etc/orthanc/orthanc.json:ro" in services["orthanc"]["volumes"]


def test_dockerfile_copies_what_exists_and_runs_serve():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    root = DOCKER.parent
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.MULTILINE):
        assert (root / source).exists(), source
    assert 'CMD ["serve"]' in dockerfile and 'ENTRYPOINT ["cxrnode"]' in dockerfile
    pyproject = (root / "pyproject.toml").read_text()
    for pin in re.findall(r"(torch(?:vision)?==[\d.]+)", dockerfile):
        assert f'"{pin}"' in pyproject, f"Dockerfile pin {pin} differs from pyproject"
