"""The admin's HTML pages: recent studies (``/``) and a study (``/studies/{key}``, with its
similar earlier cases), rendered on the server and usable without JavaScript, for a browser
with the session cookie (else the login form)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from node import similar
from node.admin.api import MAX_STUDIES
from node.admin.dependencies import (
    Access,
    Admin,
    ReadSession,
    actor,
    require_browser_session,
)
from storage import queries

router = APIRouter(dependencies=[Depends(require_browser_session)])


@router.get("/", response_class=HTMLResponse)
def index(
    admin: Admin,
    session: ReadSession,
    access: Access,
    q: str | None = None,
    limit: int = Query(50, ge=1, le=MAX_STUDIES),
):
    found = queries.recent_studies(session, limit=limit, key=q or None)
    backlog = queries.queue_health(session)
    access.record("GET /", {"q": q} if q else {}, len(found))
    return admin.page(
        "studies.html", studies=found, backlog=backlog, q=q or "", now=datetime.now(UTC)
    )


@router.get("/studies/{key}", response_class=HTMLResponse)
def study_page(request: Request, admin: Admin, session: ReadSession, access: Access, key: str):
    found = queries.study_timeline(session, key)
    access.record("GET /studies", {"study": key}, int(found is not None))
    if found is None:
        return admin.page("missing.html", 404, key=key)
    uid, nearby, refused = found.study.study_uid, None, None
    try:
        nearby = similar.similar_to_study(session, uid, similar.DEFAULT_K)
    except similar.SimilarRefused as exc:
        refused = exc
    with admin.db.transaction() as writing:
        similar.record_query(
            writing, uid, similar.DEFAULT_K, nearby, refused, via="page", actor=actor(request)
        )
    return admin.page(
        "study.html",
        timeline=found,
        study=found.study,
        similar=nearby,
        similar_refused=str(refused) if refused else None,
    )
