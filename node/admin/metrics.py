"""``GET /metrics``: the node's figures for Prometheus (``node.metrics``), behind the admin
token unless ``metrics_require_token`` is off.

The figures hold no patient data, only counts, ages and the names of the destinations (which
say where the hospital's PACS are): so the token by default, which Prometheus sends as a bearer
token (``authorization: {credentials_file: ...}`` in its scrape config). A scrape is not
recorded as an access (no patient data leaves); a refused one is, like any refused request.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from node.admin.dependencies import Admin, require_token
from node.metrics import NodeMetrics

router = APIRouter()


def registry(metrics: NodeMetrics) -> CollectorRegistry:
    """The app's own registry (not the library's global one): the node's figures, and the
    serving process's CPU, memory and open files."""
    found = CollectorRegistry(auto_describe=False)
    found.register(metrics)
    ProcessCollector(registry=found)
    return found


def warm_up(metrics: NodeMetrics) -> None:
    """Fold the audit log in a thread now, rather than in the first scrape: on a database of
    many runs that fold takes seconds, past a Prometheus scrape timeout. The admin server
    calls it once it listens (a refused start leaves no thread behind)."""
    threading.Thread(target=metrics.catch_up, name="metrics-warm-up", daemon=True).start()


@router.get("/metrics")
def metrics(request: Request, admin: Admin) -> Response:
    if admin.settings.metrics_require_token:
        require_token(request, admin)
    # OpenMetrics when the scraper asks for it (Prometheus does), the text format otherwise.
    encode, content_type = choose_encoder(request.headers.get("accept"))
    return Response(encode(request.app.state.metrics), headers={"Content-Type": content_type})
