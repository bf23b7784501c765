"""``GET /api/health``: open without the token, for monitoring; no identifiers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from node.admin.dependencies import Admin
from storage import queries

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/api/health")
def health(admin: Admin) -> JSONResponse:
    """Queue depth, delivery backlog, the last study's time and state, destination
    reachability; 503 when the database does not answer (so not a ReadSession, whose failure
    would be a 500)."""
    try:
        with admin.db.reading() as session:
            backlog = queries.to_json(queries.queue_health(session))
    except Exception:
        log.exception("health check: database unavailable")
        return JSONResponse({"status": "error", "database": {"ok": False}}, status_code=503)
    destinations = [queries.to_json(r) for r in admin.probe.check()] if admin.probe else []
    healthy = all(d["reachable"] for d in destinations)
    settings = admin.settings
    return JSONResponse(
        {
            "status": "ok" if healthy else "degraded",
            "time": queries.iso_utc(datetime.now(UTC)),
            "node": {
                "ae_title": settings.ae_title,
                "role": settings.role,
                "node_name": settings.effective_node_name,
            },
            "database": {"ok": True, "dialect": admin.db.engine.dialect.name},
            "queue": backlog,
            "destinations": destinations,
        }
    )
