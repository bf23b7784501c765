"""TLS contexts for the DICOM and MLLP listeners and the DICOM sender, from configured files."""

from __future__ import annotations

import ssl
from pathlib import Path

from node.errors import ConfigError


def server_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    """A TLS server context; with ``ca``, peers must present a certificate that CA signed.

    Parameters
    ----------
    cert, key:
        PEM files of the node's certificate (chain) and private key.
    ca:
        PEM file of the CA(s) whose client certificates are accepted. Empty: no client
        certificate is asked for (encryption without peer authentication).

    Raises
    ------
    ConfigError
        A file is missing or unreadable, or the key does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if ca:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """A TLS client context trusting ``ca``, presenting ``cert``/``key`` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(context, ca)
    if cert:
        _load_chain(context, cert, key)
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    for name, path in (("certificate", cert), ("private key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"TLS {name} file {path!r} not found")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS certificate {cert!r} / key {key!r} unusable: {exc}") from exc


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    if not Path(ca).is_file():
        raise ConfigError(f"TLS CA file {ca!r} not found")
    try:
        context.load_verify_locations(ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS CA file {ca!r} unusable: {exc}") from exc
