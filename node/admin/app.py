"""The admin HTTP API and pages (FastAPI): read-only, token-protected, server-rendered HTML.

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
``GET /api/stats``                     per-day counts and turnaround (``since``, ``until``)
``GET /``, ``GET /studies/{key}``      the same as HTML pages, usable without JavaScript
``GET|POST /login``, ``GET /logout``   the browser's token form and session cookie
=====================================  =======================================================

Every answer carrying patient data is recorded in the audit log (``admin.query``, with the
client's address), and so are refused requests (``admin.auth_failed``: one event per client
address and ``refusal_audit_window_s``, with the count of requests it stands for).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from node.admin import render
from node.admin.auth import COOKIE, TokenCheck
from node.admin.probe import DestinationProbe
from node.admin.timespec import parse_time
from node.config import Settings
from node.refusals import RefusalAudit
from storage import audit, queries
from storage.audit_chain import verify
from storage.database import Database

log = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).parent / "templates"
_SECURITY_HEADERS = {
    # Patient data must not linger in caches, be framed, or leak through a Referer.
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}
_SESSION_HOURS = 12
# Bounds of the numeric query parameters; outside them the answer is 422 naming the bound
# (an unbounded integer once reached the database and came back as a 500).
MAX_AUDIT_EVENTS = 10_000  # a JSON answer of about 10 MB at most
MAX_STUDIES = 500


def create_app(db: Database, settings: Settings, probe: DestinationProbe | None = None) -> FastAPI:
    """Build the admin application over the node's database.

    Parameters
    ----------
    db:
        The node's database (only read, except for the audit events of admin access).
    settings:
        ``admin_token`` (required), and the node's identity shown by the health check.
    probe:
        Checks the result destinations for ``/api/health``; None leaves them out.
    """
    tokens = TokenCheck(settings.admin_token)
    pages = Environment(
        loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(default=True)
    )
    pages.filters.update(
        iso=lambda v: queries.iso_utc(v).replace("T", " ")[:19] if v else "–",
        p=lambda v: f"{v:.2f}",
        summarize=render.summarize,
    )
    app = FastAPI(title="cxrnode admin", docs_url=None, redoc_url=None, openapi_url=None)
    secure_cookie = bool(settings.tls_cert)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    def client(request: Request) -> str | None:
        return request.client.host if request.client else None

    refusals = RefusalAudit(db, settings.refusal_audit_window_s)
    app.state.refusals = refusals  # AdminServer.stop flushes the counts of open windows

    def refuse(request: Request) -> None:
        # One event per client address and window, with the count: a flood of bad tokens
        # must not become a flood of audit transactions.
        detail = {"path": request.url.path, "via": "http"}
        if refusals.record("admin.auth_failed", client(request), detail):
            log.warning("admin request without a valid token refused")

    def require_token(request: Request) -> None:
        if not tokens.allows(request):
            refuse(request)
            raise HTTPException(
                401, "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    def answer(request: Request, what: str, filters: dict[str, Any], work: Callable):
        """Run ``work(session)`` in a read-only session, record the access, then answer: no
        patient data leaves without its audit event committed."""
        with db.reading() as session:
            result, rows = work(session)
        with db.transaction() as session:
            audit.record(
                session,
                "admin.query",
                actor_ip=client(request),
                actor_user="admin-token",
                detail={"what": what, "filters": filters, "rows": rows, "via": "http"},
            )
        return result

    # API ----------------------------------------------------------------------------------

    @app.get("/api/health")
    def health() -> JSONResponse:
        try:
            with db.reading() as session:
                backlog = queries.to_json(queries.queue_health(session))
        except Exception:
            log.exception("health check: database unavailable")
            return JSONResponse({"status": "error", "database": {"ok": False}}, status_code=503)
        destinations = [queries.to_json(r) for r in probe.check()] if probe else []
        healthy = all(d["reachable"] for d in destinations)
        return JSONResponse(
            {
                "status": "ok" if healthy else "degraded",
                "time": queries.iso_utc(datetime.now(UTC)),
                "node": {
                    "ae_title": settings.ae_title,
                    "role": settings.role,
                    "node_name": settings.effective_node_name,
                },
                "database": {"ok": True, "dialect": db.engine.dialect.name},
                "queue": backlog,
                "destinations": destinations,
            }
        )

    @app.get("/api/audit")
    def audit_events(
        request: Request,
        study_uid: str | None = None,
        accession: str | None = None,
        patient_id: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        model: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = Query(1000, ge=1, le=MAX_AUDIT_EVENTS),
        format: str = "json",
    ):
        require_token(request)
        if outcome is not None and outcome not in audit.Outcome.ALL:
            raise HTTPException(400, f"outcome must be one of {', '.join(audit.Outcome.ALL)}")
        if format not in ("json", "csv"):
            raise HTTPException(400, "format must be json or csv")
        where = audit.AuditFilter(
            study_uid=study_uid,
            accession=accession,
            patient_id=patient_id,
            action=action,
            outcome=outcome,
            model=model,
            since=_time(since),
            until=_time(until),
            limit=limit,
        )

        def work(session):
            rows = [audit.as_dict(e) for e in audit.query(session, where)]
            return rows, len(rows)

        rows = answer(request, "GET /api/audit", where.describe(), work)
        if format == "csv":
            return PlainTextResponse(
                render.events_csv(rows),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="cxrnode-audit.csv"'},
            )
        return JSONResponse(rows)

    @app.get("/api/audit/verify")
    def audit_verify(request: Request) -> JSONResponse:
        require_token(request)
        journal = db.recorded_head()
        with db.reading() as session:
            report = verify(session, journal=journal)
        return JSONResponse(report.as_dict(), status_code=200)

    @app.get("/api/studies")
    def studies(
        request: Request, q: str | None = None, limit: int = Query(50, ge=1, le=MAX_STUDIES)
    ) -> JSONResponse:
        require_token(request)

        def work(session):
            found = queries.recent_studies(session, limit=limit, key=q)
            return queries.to_json(found), len(found)

        filters = {"q": q} if q else {}
        return JSONResponse(answer(request, "GET /api/studies", filters, work))

    @app.get("/api/studies/{key}/timeline")
    def timeline(request: Request, key: str) -> JSONResponse:
        require_token(request)

        def work(session):
            found = queries.study_timeline(session, key)
            return (queries.to_json(found) if found else None), int(found is not None)

        data = answer(request, "GET /api/studies/timeline", {"study": key}, work)
        if data is None:
            raise HTTPException(404, "no study with this UID or accession")
        return JSONResponse(data)

    @app.get("/api/stats")
    def stats(request: Request, since: str | None = "7d", until: str | None = None):
        require_token(request)
        with db.reading() as session:
            result = queries.stats(session, _time(since), _time(until))
        return JSONResponse(queries.to_json(result))

    # Pages --------------------------------------------------------------------------------

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        html = pages.get_template(name).render(ae_title=settings.ae_title, **context)
        return HTMLResponse(html, status_code=status)

    def login_page(request: Request, failed: bool) -> HTMLResponse:
        return page("login.html", 401, failed=failed, next=request.url.path)

    def browser_access(request: Request) -> HTMLResponse | RedirectResponse | None:
        """None when the browser may see the page; else the login page or a redirect that
        trades a ``?token=`` for the session cookie."""
        presented = request.query_params.get("token")
        if presented is not None:
            if not tokens.matches(presented):
                refuse(request)
                return login_page(request, failed=True)
            kept = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(kept)}" if kept else "")
            return with_session(RedirectResponse(target, status_code=303))
        if tokens.allows(request):
            return None
        if request.cookies.get(COOKIE):
            refuse(request)
        return login_page(request, failed=bool(request.cookies.get(COOKIE)))

    def with_session(response):
        response.set_cookie(
            COOKIE,
            tokens.cookie_value,
            max_age=_SESSION_HOURS * 3600,
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
            path="/",
        )
        return response

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, q: str | None = None, limit: int = Query(50, ge=1, le=MAX_STUDIES)):
        denied = browser_access(request)
        if denied is not None:
            return denied

        def work(session):
            found = queries.recent_studies(session, limit=limit, key=q or None)
            return (found, queries.queue_health(session)), len(found)

        found, backlog = answer(request, "GET /", {"q": q} if q else {}, work)
        return page(
            "studies.html",
            studies=found,
            backlog=backlog,
            q=q or "",
            now=datetime.now(UTC),
        )

    @app.get("/studies/{key}", response_class=HTMLResponse)
    def study_page(request: Request, key: str):
        denied = browser_access(request)
        if denied is not None:
            return denied

        def work(session):
            found = queries.study_timeline(session, key)
            return found, int(found is not None)

        found = answer(request, "GET /studies", {"study": key}, work)
        if found is None:
            return page("missing.html", 404, key=key)
        return page("study.html", timeline=found, study=found.study)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return page("login.html", 200, failed=False, next="/")

    @app.post("/login")
    async def login(request: Request):
        # A urlencoded form, parsed here rather than with python-multipart.
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        presented = (form.get("token") or [""])[0]
        target = (form.get("next") or ["/"])[0]
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # only pages of this server
        if not tokens.matches(presented):
            await _run_sync(refuse, request)
            return page("login.html", 401, failed=True, next=target)
        return with_session(RedirectResponse(target, status_code=303))

    @app.get("/logout")
    def logout():
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return app


async def _run_sync(function, *args) -> None:
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(function, *args)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
