"""Fixtures for integration tests: a private Orthanc, the node as a separate process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.orthanc import Modality, Orthanc, free_port
from support.peers import NODE_AE, NodeProcess, need, node_env


@pytest.fixture(scope="session")
def reference_model(tmp_path_factory) -> Path:
    """The bundled untrained reference package, built once for the whole session."""
    from models.default import build_reference_package

    return build_reference_package(tmp_path_factory.mktemp("model") / "reference")


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def orthanc_kind() -> type[Orthanc]:
    """Which Orthanc the node delivers to; a module that needs a plugin overrides it."""
    return Orthanc


@pytest.fixture
def orthanc(tmp_path, node_port, orthanc_kind) -> Iterator[Orthanc]:
    need("Orthanc")
    server = orthanc_kind(
        tmp_path / "orthanc", [Modality("cxrnode", NODE_AE, "127.0.0.1", node_port)]
    ).start()
    yield server
    server.stop()


@pytest.fixture
def make_node(
    tmp_path, node_port, orthanc, reference_model
) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: a node wired to the test's Orthanc; extra keyword arguments become settings."""
    started: list[NodeProcess] = []
    data_dir = tmp_path / "node-data"

    def make(**settings) -> NodeProcess:
        # No report feed unless a test asks for one (node_env's default).
        env = node_env(orthanc, data_dir, reference_model)
        env["CXRNODE_DICOM_PORT"] = str(node_port)
        env.update({f"CXRNODE_{k.upper()}": str(v) for k, v in settings.items()})
        node = NodeProcess(tmp_path, env)
        started.append(node)
        return node.start()

    yield make
    for node in started:
        node.stop()
