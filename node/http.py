"""An ASGI application served by uvicorn in a thread of ``cxrnode serve``.

The admin API and the STOW-RS endpoint both run this way. The socket is bound before the
thread starts, so a port already taken fails at start with one clear error rather than in
the thread; HTTPS with the node's ``tls_cert``/``tls_key`` when it has them.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from node.errors import CxrNodeError


class HttpServerError(CxrNodeError):
    """An HTTP listener could not start (port taken, TLS files unreadable)."""


class ThreadedHttpServer:
    """Serves ``app`` on ``host:port`` (0: any free port) until ``stop``."""

    def __init__(
        self, app, host: str, port: int, name: str, tls_cert: str = "", tls_key: str = ""
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.name = name  # "admin API", "STOW-RS": how errors and the log name it
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind (so a taken port fails here, not in the thread), then serve in a thread.

        Raises
        ------
        HttpServerError
            The port cannot be bound, or the server did not start (e.g. unreadable TLS files).
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise HttpServerError(
                f"{self.name} cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        sock.listen(64)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the node's logging stays as configured
            log_level="warning",
            access_log=False,  # paths and queries carry identifiers: never logged
            server_header=False,
            lifespan="off",
            ssl_certfile=self.tls_cert or None,
            ssl_keyfile=self.tls_key or None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=self.name.replace(" ", "-"),
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise HttpServerError(f"{self.name} did not start; see the log")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
