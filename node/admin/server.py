"""The admin HTTP server: the admin application served in a thread of ``cxrnode serve``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from node.admin.app import create_app
from node.admin.auth import MIN_TOKEN_LENGTH
from node.admin.metrics import warm_up
from node.admin.probe import DestinationProbe
from node.config import Settings
from node.errors import ConfigError
from node.http import ThreadedHttpServer
from storage.database import Database

if TYPE_CHECKING:
    from models.predictor import Predictor

log = logging.getLogger(__name__)


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
        self.http = ThreadedHttpServer(
            self.app,
            settings.admin_host,
            self.port,
            "admin API",
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
        )

    def serve_model(self, predictor: Predictor) -> None:
        """Try uploads on ``predictor`` (the node's worker's) rather than loading one."""
        self.app.state.admin.model.provide(predictor)

    @property
    def url(self) -> str:
        return self.http.url

    def start(self, timeout_s: float = 10.0) -> AdminServer:
        """Bind and serve in a thread; raises ``HttpServerError`` when it cannot."""
        self.http.start(timeout_s)
        self.port = self.http.port
        warm_up(self.app.state.node_metrics)
        log.info("admin API on %s", self.url)
        return self

    def stop(self) -> None:
        self.http.stop()
        self.app.state.admin.refusals.flush()  # the refusals counted since the last event
