"""The admin HTTP API and pages (FastAPI): token-protected, server-rendered HTML; read-only
but for the two actions an admin takes on a study (resend, rerun), which are audited.

=====================================  =======================================================
``GET /api/health``                    no token: queue depth, last study (time and state),
                                       delivery backlog, destination reachability; no
                                       identifiers
``GET /api/audit``                     events; filters ``study_uid accession patient_id
                                       action outcome model since until limit``;
                                       ``format=json|csv``
``GET /api/audit/verify``              the hash chain check
``GET /api/studies``                   recent studies with findings (``q``, ``limit``)
``GET /api/studies/{key}/timeline``    a study's timeline (Study UID or accession)
``GET /api/studies/{key}/similar``     the ``k`` nearest studies of the same model by
                                       embedding, with their findings; 409 without one
``GET /api/stats``                     per-day counts and turnaround (``since``, ``until``)
``GET /api/openapi.json``              the API's OpenAPI schema
``POST /api/predict``                  the node's model on an uploaded DICOM/PNG/JPEG (and
                                       report text): findings, regions, overlays; audited
``POST /api/studies/{key}/resend``     re-deliver the latest finished run's results
                                       (``destination``: one, default all); 202, 409 why not
``POST /api/studies/{key}/rerun``      queue a new run of the study; 202, 409 why not
``GET /``, ``GET /studies/{key}``      the same as HTML pages, usable without JavaScript
``GET|POST /try``                      the upload form and its result as a page
``GET|POST /login``, ``GET /logout``   the browser's token form and session cookie
``GET /metrics``                       Prometheus figures (``node.metrics``); the token unless
                                       ``metrics_require_token`` is off
=====================================  =======================================================

Every answer carrying patient data is recorded in the audit log (``admin.query``, with the
client's address), and so are refused requests (``admin.auth_failed``: one event per client
address and ``refusal_audit_window_s``, with the count of requests it stands for).

The routes are grouped in routers by what they serve: ``api`` (the JSON API, behind the
token), ``pages`` (the HTML pages, behind the session cookie), ``login`` (the token form and
the cookie) and ``health`` (open). What they share (the token checks, a read-only database
session, the access record) are the dependencies of ``node.admin.dependencies``; this module
only puts them together.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape

from node.admin import api, health, login, metrics, pages, render
from node.admin.auth import TokenCheck
from node.admin.dependencies import AdminContext, AnswerInstead, answer_instead
from node.admin.probe import DestinationProbe
from node.config import Settings
from node.metrics import NodeMetrics
from node.predict import ServingModel
from node.refusals import RefusalAudit
from storage import queries
from storage.database import Database

_TEMPLATES = Path(__file__).parent / "templates"
_SECURITY_HEADERS = {
    # Patient data must not linger in caches, be framed, or leak through a Referer.
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        # Images only as data: URIs, the /try page's overlays, embedded in the page.
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
}


def create_app(
    db: Database,
    settings: Settings,
    probe: DestinationProbe | None = None,
    model: ServingModel | None = None,
) -> FastAPI:
    """Build the admin application over the node's database.

    Parameters
    ----------
    db:
        The node's database (only read, except for the audit events of admin access).
    settings:
        ``admin_token`` (required), and the node's identity shown by the health check.
    probe:
        Checks the result destinations for ``/api/health``; None leaves them out.
    model:
        The model ``/api/predict`` and ``/try`` run; None: the settings' model, loaded on the
        first request (``AdminServer.serve_model`` hands it the node's).

    Returns
    -------
    FastAPI
        The application; ``app.state.admin`` holds the routes' shared
        :class:`~node.admin.dependencies.AdminContext` (``AdminServer.stop`` flushes its
        refusal counts); ``app.state.metrics``, the registry ``/metrics`` answers from.
    """
    app = FastAPI(title="cxrnode admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.admin = AdminContext(
        db=db,
        settings=settings,
        tokens=TokenCheck(settings.admin_token),
        refusals=RefusalAudit(db, settings.refusal_audit_window_s),
        pages=_templates(),
        model=model or ServingModel(settings),
        probe=probe,
    )
    app.state.node_metrics = NodeMetrics(db, settings)
    app.state.metrics = metrics.registry(app.state.node_metrics)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    app.add_exception_handler(AnswerInstead, answer_instead)
    for router in (health.router, api.router, pages.router, login.router, metrics.router):
        app.include_router(router)
    return app


def _templates() -> Environment:
    """The pages' templates, escaping every value, with the filters they use."""
    templates = Environment(
        loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(default=True)
    )
    templates.filters.update(
        iso=lambda v: queries.iso_utc(v).replace("T", " ")[:19] if v else "–",
        p=lambda v: f"{v:.2f}",
        summarize=render.summarize,
        findings=render.findings_line,
    )
    return templates
