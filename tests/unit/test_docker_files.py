"""The compose setup cannot run here (no Docker engine); check its wiring statically."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from node.config import Destination, Settings, load_settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_node_environment_is_valid_settings():
    env = compose()["services"]["node"]["environment"]
    known = {f"CXRNODE_{f.name.upper()}" for f in fields(Settings)}
    assert set(env) <= known
    given = {"CXRNODE_ADMIN_TOKEN": "0123456789abcdef"}
    settings = load_settings(None, {k: interpolated(str(v), given) for k, v in env.items()})
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


def interpolated(value: str, environ: dict[str, str]) -> str:
    """A compose value with its ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``
    references replaced as compose replaces them (an unset required one fails)."""

    def replace(match: re.Match) -> str:
        name, kind, rest = match["name"], match["kind"], match["rest"]
        if environ.get(name):
            return environ[name]
        assert kind != ":?", f"compose refuses to start without {name}: {rest}"
        return rest if kind == ":-" else ""

    pattern = r"\$\{(?P<name>\w+)(?:(?P<kind>:[-?])(?P<rest>[^}]*))?\}"
    return re.sub(pattern, replace, value)


def test_the_admin_token_comes_from_the_environment_and_is_required():
    env = compose()["services"]["node"]["environment"]
    assert "CXRNODE_ADMIN_TOKEN" in env["CXRNODE_ADMIN_TOKEN"]  # never a token in the file
    with pytest.raises(AssertionError, match="compose refuses to start"):
        interpolated(env["CXRNODE_ADMIN_TOKEN"], {})
    token = "0123456789abcdef0123"
    values = {k: interpolated(str(v), {"CXRNODE_ADMIN_TOKEN": token}) for k, v in env.items()}
    settings = load_settings(None, values)
    assert settings.admin_token == token and settings.metrics_require_token


def test_the_node_publishes_its_dicom_mllp_and_admin_ports():
    node = compose()["services"]["node"]
    values = {
        k: interpolated(str(v), {"CXRNODE_ADMIN_TOKEN": "x" * 16})
        for k, v in node["environment"].items()
    }
    settings = load_settings(None, values)
    published = {int(p.split(":")[-1]): p for p in node["ports"]}
    assert {settings.dicom_port, settings.hl7_port, settings.admin_port} <= set(published)
    # Listening on the container's interfaces, so the published ports reach it ...
    assert settings.hl7_host == settings.admin_host == "0.0.0.0"
    # ... and the admin API, plain HTTP without tls_cert, published on the host's loopback only.
    assert not settings.tls_cert and published[settings.admin_port].startswith("127.0.0.1:")
    assert str(settings.admin_port) in (DOCKER / "Dockerfile").read_text().split("EXPOSE")[1]


def test_the_csv_drop_folder_is_mounted_where_the_node_reads_it():
    node = compose()["services"]["node"]
    folder = node["environment"]["CXRNODE_CSV_FOLDER"]
    mounts = [interpolated(v, {}).split(":") for v in node["volumes"]]
    (mount,) = [m for m in mounts if m[1] == folder]
    assert mount[0].startswith("./")  # a host folder ...
    assert any("CXRNODE_CSV_DROP" in v for v in node["volumes"])  # ... the site can name
    assert mount[2:] == []  # writable: the node moves each file it read


def orthanc_config() -> dict:
    return json.loads((DOCKER / "orthanc.json").read_text())


def lua() -> str:
    return (DOCKER / "forward-chest-studies.lua").read_text()


def test_orthanc_loads_the_forwarding_script_compose_mounts():
    volumes = compose()["services"]["orthanc"]["volumes"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in volumes if v.startswith("./")}
    (script,) = orthanc_config()["LuaScripts"]
    assert mounted[script] == "./forward-chest-studies.lua"
    assert (DOCKER / mounted[script]).exists()
    assert "function OnStableStudy(" in lua()


def test_the_script_forwards_to_the_node_and_marks_with_declared_metadata():
    config = orthanc_config()
    node = re.search(r"^local NODE = '([^']+)'", lua(), flags=re.MULTILINE)[1]
    forwarded = re.search(r"^local FORWARDED = '([^']+)'", lua(), flags=re.MULTILINE)[1]
    assert config["DicomModalities"][node]["AET"] == "CXRNODE"
    # Orthanc refuses to set metadata it was not told of; user metadata lives in 1024-65535.
    assert 1024 <= config["UserMetadata"][forwarded] <= 65535
    # Orthanc accepts the results the node sends back, and the X-ray room's images.
    assert config["DicomAlwaysAllowStore"] is False
    assert all(m["AllowStore"] for m in config["DicomModalities"].values())


def test_the_script_reads_as_chest_what_the_node_reads_as_chest():
    from node.dicom.classify import CHEST_BODY_PARTS, RADIOGRAPH_MODALITIES

    table = re.search(r"^local CHEST = \{(.*?)^\}", lua(), flags=re.MULTILINE | re.DOTALL)[1]
    parts = set(re.findall(r"\['([^']*)'\] = true", table)) | set(
        re.findall(r"(\w+) = true", table)
    )
    assert parts == {"", *CHEST_BODY_PARTS}
    radiographs = re.search(r"^local RADIOGRAPHS = \{(.*?)\}", lua(), flags=re.MULTILINE)[1]
    assert set(re.findall(r"(\w+) = true", radiographs)) == RADIOGRAPH_MODALITIES
