"""What ``cxrnode serve`` checks before it starts anything: the settings it cannot run with
are refused with one line naming the setting, before the node audits ``node.started`` and
before it opens a listener.
"""

from __future__ import annotations

import socket
from pathlib import Path

from models.default import bundled_default_package, ensure_reference_package
from models.errors import ModelPackageError
from models.package import LoadedPackage, load_package
from models.predictor import Predictor
from node.config import Destination, Settings, describe
from node.errors import CxrNodeError
from node.tls import client_context, server_context


class StartupError(CxrNodeError):
    """The node cannot start with its settings: a port is taken, the model does not load."""


def check_settings(settings: Settings, receives: bool) -> None:
    """Refuse settings the node would fail on once started: a listening port already taken
    (or given twice), TLS files that do not load, a malformed destination.

    Parameters
    ----------
    settings:
        The node's settings.
    receives:
        Whether this node runs the DICOM and HL7 listeners (roles "all" and "receiver").

    Raises
    ------
    StartupError
        A port cannot be listened on, or a destination is malformed.
    ConfigError
        A TLS file is missing or unusable.
    """
    check_ports_free(listeners(settings, receives))
    if settings.tls and (receives or settings.admin_port):  # the listeners' and admin's TLS
        server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
    if settings.tls_destinations:
        client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
    for destination in settings.dicom_destinations:  # the others are parsed from text only
        check_destination(destination)


def listeners(settings: Settings, receives: bool) -> list[tuple[str, str, int]]:
    """(setting, host, port) of every port this node listens on."""
    ports = []
    if receives:
        ports.append(("dicom_port", settings.dicom_host, settings.dicom_port))
        if settings.hl7_port:
            ports.append(("hl7_port", settings.hl7_host, settings.hl7_port))
        if settings.dicomweb_port:
            ports.append(("dicomweb_port", settings.dicomweb_host, settings.dicomweb_port))
    if settings.admin_port:
        ports.append(("admin_port", settings.admin_host, settings.admin_port))
    return ports


def check_ports_free(ports: list[tuple[str, str, int]]) -> None:
    """Bind each port for a moment, as its listener will (with ``SO_REUSEADDR``, so the
    closing connections of a node that just stopped do not count).

    Raises
    ------
    StartupError
        Two settings name one port, or a port is in use or not ours to take.
    """
    seen: dict[int, str] = {}
    for setting, host, port in ports:
        if port in seen:
            raise StartupError(f"{seen[port]} and {setting} are both {port}: give each its own")
        seen[port] = setting
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise StartupError(
                    f"{setting} {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                    f"stop what holds it or set {setting} to a free port"
                ) from None


def check_destination(destination: Destination) -> None:
    """Refuse a destination that would not parse back from its ``AE@host:port`` text (one
    built in code rather than read from the settings).

    Raises
    ------
    StartupError
        Its AE title, host or port is malformed.
    """
    try:
        parsed = Destination.parse(str(destination))
    except CxrNodeError as exc:
        raise StartupError(str(exc)) from None
    if parsed != destination or not destination.host.strip():
        raise StartupError(f"destination {destination} is not of the form AE@host:port")


def load_model(settings: Settings) -> Predictor:
    """Load and verify the model package ``model`` names, on the configured device.

    Raises
    ------
    StartupError
        The package is missing, malformed or does not match its recorded hashes, or the device
        cannot be used.
    """
    try:
        package = _load_package(settings)
        device = None if settings.device == "auto" else settings.device
        return Predictor(package, device=device)
    except (ModelPackageError, OSError, RuntimeError) as exc:
        raise StartupError(
            f"model {settings.model!r} cannot be loaded: {exc} (set model, or CXRNODE_MODEL, "
            'to a package directory or archive, "default" or "reference")'
        ) from None


def _load_package(settings: Settings) -> LoadedPackage:
    if settings.model == "default":
        return load_package(bundled_default_package())
    if settings.model == "reference":
        return load_package(ensure_reference_package(settings.data_dir))
    return load_package(Path(settings.model))


def summary(settings: Settings) -> str:
    """The settings a reader of the log needs to know which node this is, on one line
    (``cxrnode config`` prints them all)."""
    receives = settings.role != "worker"
    parts = [f"role {settings.role}", f"node {settings.effective_node_name}"]
    if receives:
        tls = " with TLS" if settings.tls else ""
        parts.append(f"{settings.ae_title} on {settings.dicom_host}:{settings.dicom_port}{tls}")
        parts.append(
            f"HL7 on {settings.hl7_host}:{settings.hl7_port}" if settings.hl7_port else "HL7 off"
        )
        if settings.csv_folder:
            parts.append(f"CSV from {settings.csv_folder}")
        parts.append("to " + ", ".join(str(d) for d in settings.destinations))
    if settings.admin_port:
        parts.append(f"admin on {settings.admin_host}:{settings.admin_port}")
    if settings.role != "receiver":
        parts.append(f"model {settings.model}")
    parts.append(f"database {describe(settings)['database_url']}")
    return ", ".join(parts)
