"""The admin HTTP server: uvicorn in a thread of ``cxrnode serve``."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from node.admin.app import create_app
from node.admin.auth import MIN_TOKEN_LENGTH
from node.admin.probe import DestinationProbe
from node.config import Settings
from node.errors import ConfigError, CxrNodeError
from storage.database import Database

log = logging.getLogger(__name__)


class AdminServerError(CxrNodeError):
    """The admin HTTP server could not start (port taken, TLS files unreadable)."""


class AdminServer:
    """Serves the admin API and pages on ``admin_host:admin_port`` until ``stop``.

    HTTPS with the node's ``tls_cert``/``tls_key`` when the node has them, plain HTTP
    otherwise (keep it on loopback or a management network then).

    Parameters
    ----------
    settings:
        ``admin_host``, ``admin_port``, ``admin_token`` and the TLS files.
    db:
        The node's database.
    probe:
        Destination reachability for the health check.
    port:
        Overrides ``admin_port`` (0: any free port, for tests).

    Raises
    ------
    ConfigError
        Without an ``admin_token`` of at least 16 characters: the API never runs open.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        probe: DestinationProbe | None = None,
        port: int | None = None,
    ) -> None:
        if not settings.admin_token:
            raise ConfigError(
                "admin_port is set but admin_token is empty: the admin API does not start "
                "without a token (set CXRNODE_ADMIN_TOKEN, or admin_port = 0)"
            )
        if len(settings.admin_token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"admin_token must be at least {MIN_TOKEN_LENGTH} characters long")
        self.settings = settings
        self.host = settings.admin_host
        self.port = settings.admin_port if port is None else port
        self.app = create_app(db, settings, probe)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> AdminServer:
        """Bind (so a taken port fails here, not in the thread), then serve in a thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise AdminServerError(
                f"admin API cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        sock.listen(64)
        self.port = sock.getsockname()[1]
        tls = self.settings.tls_cert
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the node's logging stays as configured
            log_level="warning",
            access_log=False,  # paths and queries carry identifiers: never logged
            server_header=False,
            lifespan="off",
            ssl_certfile=tls or None,
            ssl_keyfile=self.settings.tls_key or None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="admin-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise AdminServerError("admin API did not start; see the log")
            time.sleep(0.02)
        log.info("admin API on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
        self.app.state.admin.refusals.flush()  # the refusals counted since the last event
