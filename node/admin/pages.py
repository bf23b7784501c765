"""The admin's HTML pages: recent studies (``/``), a study (``/studies/{key}``, with its
similar earlier cases) and the model tried on an upload (``/try``), rendered on the server and
usable without JavaScript, for a browser with the session cookie (else the login form)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from markdown_it import MarkdownIt
from starlette.concurrency import run_in_threadpool

from node import similar
from node.admin.api import MAX_STUDIES
from node.admin.dependencies import (
    Access,
    Admin,
    AdminContext,
    ReadSession,
    actor,
    require_browser_session,
)
from node.admin.uploads import UploadRefused, predict_upload, read_upload
from node.predict import Prediction, png_base64
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


@router.get("/try", response_class=HTMLResponse)
def try_form(admin: Admin):
    return admin.page("try.html", model=admin.settings.model)


@router.post("/try", response_class=HTMLResponse)
async def try_result(request: Request, admin: Admin):
    """The form's upload through the node's model (``node.admin.uploads``): the image with
    its heatmap and outlines, the findings, the model card and the nearest earlier cases."""
    try:
        upload = await read_upload(request, admin)
        prediction = await predict_upload(request, admin, upload)
    except UploadRefused as exc:
        return admin.page("try.html", exc.status_code, model=admin.settings.model, error=exc.detail)
    view = await run_in_threadpool(_result_view, admin, prediction)
    return admin.page("try.html", model=prediction.model["name"], **view)


def _result_view(admin: AdminContext, prediction: Prediction) -> dict:
    """What try.html shows of a prediction: its images as base64 PNG, its findings, the
    package's card as HTML, and the similar cases (``similar_cases``; none until wired)."""
    similar = admin.similar_cases(prediction) if admin.similar_cases else ()
    return {
        "result": prediction,
        "overview": png_base64(prediction.overview()),
        "overlays": [(e, png_base64(prediction.overlay(e))) for e in prediction.explanations],
        "card": card_html(admin.model.get().package.card),
        "similar_cases": list(similar),
    }


def card_html(markdown: str) -> str:
    """A model card's Markdown as HTML, its raw HTML escaped (``html`` off) and links limited
    to markdown-it's safe schemes: a package's card is shown, never run."""
    return _MARKDOWN.render(markdown)


_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
