"""The admin's JSON API (``/api/...`` but the health check): audit events, the chain check,
studies, a study's timeline, its similar earlier cases and statistics, the two actions that
change anything (resend a run's results, queue a new run), and the node's model tried on an
upload, each behind the token.

Every answer carrying patient data is recorded in the audit log before it is sent
(``admin.query``: what was asked, the filters, how many rows; ``admin.similar``: the query
study and the studies the answer named).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from node import reprocess, similar
from node.admin import render, uploads
from node.admin.dependencies import Access, Admin, ReadSession, actor, require_token
from node.admin.timespec import parse_time
from node.predict import check_method_names, png_bytes
from storage import audit, queries
from storage.audit_chain import verify

# Bounds of the numeric query parameters; outside them the answer is 422 naming the bound
# (an unbounded integer once reached the database and came back as a 500).
MAX_AUDIT_EVENTS = 10_000  # a JSON answer of about 10 MB at most
MAX_STUDIES = 500

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)])


@router.get("/audit")
def audit_events(
    session: ReadSession,
    access: Access,
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
        since=time_parameter(since),
        until=time_parameter(until),
        limit=limit,
    )
    rows = [audit.as_dict(e) for e in audit.query(session, where)]
    access.record("GET /api/audit", where.describe(), len(rows))
    if format == "csv":
        return PlainTextResponse(
            render.events_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="cxrnode-audit.csv"'},
        )
    return JSONResponse(rows)


@router.get("/openapi.json", include_in_schema=False)
def openapi_schema(request: Request) -> JSONResponse:
    """The admin API's OpenAPI schema (FastAPI's, built from the routes), behind the token like
    the API it describes."""
    return JSONResponse(request.app.openapi())


@router.get("/audit/verify")
def audit_verify(admin: Admin) -> JSONResponse:
    # The journal first, then the database's snapshot: a commit between the two is in the
    # snapshot, not reported lost. (So not a ReadSession, opened before the route runs.)
    journal = admin.db.recorded_head()
    with admin.db.reading() as session:
        report = verify(session, journal=journal)
    return JSONResponse(report.as_dict(), status_code=200)


@router.get("/studies")
def studies(
    session: ReadSession,
    access: Access,
    q: str | None = None,
    limit: int = Query(50, ge=1, le=MAX_STUDIES),
) -> JSONResponse:
    found = queries.recent_studies(session, limit=limit, key=q)
    access.record("GET /api/studies", {"q": q} if q else {}, len(found))
    return JSONResponse(queries.to_json(found))


@router.get("/studies/{key}/timeline")
def timeline(session: ReadSession, access: Access, key: str) -> JSONResponse:
    found = queries.study_timeline(session, key)
    access.record("GET /api/studies/timeline", {"study": key}, int(found is not None))
    if found is None:
        raise HTTPException(404, "no study with this UID or accession")
    return JSONResponse(queries.to_json(found))


@router.get("/studies/{key}/similar")
def similar_studies(
    request: Request,
    admin: Admin,
    session: ReadSession,
    key: str,
    k: int = Query(similar.DEFAULT_K, ge=1, le=similar.MAX_K),
) -> JSONResponse:
    """The ``k`` stored studies nearest the study's latest embedding (``node.similar``), with
    their identifiers and findings; 404 for an unknown study, 409 for one without an
    embedding (processed before they were stored: rerun it)."""
    answer = refused = None
    try:
        answer = similar.similar_to_study(session, key, k)
    except similar.SimilarRefused as exc:
        refused = exc
    with admin.db.transaction() as writing:
        similar.record_query(writing, key, k, answer, refused, via="http", actor=actor(request))
    if answer is None:
        raise HTTPException(404 if isinstance(refused, similar.UnknownStudy) else 409, str(refused))
    return JSONResponse(queries.to_json(answer))


@router.post("/studies/{key}/resend")
def resend_results(
    request: Request, admin: Admin, key: str, destination: str | None = None
) -> JSONResponse:
    """Re-deliver the latest finished run's results (``node.reprocess.resend``); 409 with the
    reason when the study cannot be re-sent now."""
    try:
        with admin.db.transaction() as session:
            done = reprocess.resend(session, admin.settings, key, destination, actor(request))
    except reprocess.ReprocessRefused as exc:
        raise HTTPException(409, str(exc)) from None
    return JSONResponse(asdict(done), status_code=202)


@router.post("/studies/{key}/rerun")
def rerun_study(request: Request, admin: Admin, key: str) -> JSONResponse:
    """Queue a new run of the study (``node.reprocess.rerun``); 409 with the reason when it
    cannot run now."""
    try:
        with admin.db.transaction() as session:
            done = reprocess.rerun(session, key, actor(request))
    except reprocess.ReprocessRefused as exc:
        raise HTTPException(409, str(exc)) from None
    return JSONResponse(asdict(done), status_code=202)


_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "a DICOM file (with or without preamble), PNG or JPEG, "
                        "at most predict_max_upload_mb",
                    },
                    "report": {
                        "type": "string",
                        "description": "report text, cleaned by the package's text options "
                        "(an image-only model ignores it)",
                    },
                },
            }
        }
    },
}
_PREDICTION = {
    "description": "the findings by probability with their calls, the explained labels and "
    "their regions (cxrnode predict --format json); with heatmap=LABEL that label's overlay",
    "content": {"application/json": {}, "image/png": {}},
}


_EXPLAIN = (
    "explanation methods, repeatable (default gradcam): gradcam, integrated_gradients (tens "
    "of forward passes a label; with a report, its words' attributions too), attention (a "
    "cross-attention model's weights of image regions over the report's tokens)"
)


@router.post(
    "/predict",
    summary="Try the node's model on an uploaded image",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        200: _PREDICTION,
        400: {"description": "a malformed multipart body"},
        401: {"description": "no valid admin token"},
        404: {"description": "heatmap names a label that was not explained"},
        413: {
            "description": "the upload is over predict_max_upload_mb, or the image over "
            "max_decoded_mb once decoded"
        },
        415: {"description": "not multipart/form-data"},
        422: {
            "description": "no file, an empty file, no readable DICOM/PNG/JPEG, a DICOM "
            "without pixel data, or an unknown explanation method"
        },
        503: {"description": "the model cannot be loaded"},
    },
)
async def predict(
    request: Request,
    admin: Admin,
    heatmaps: bool = Query(False, description="each explanation's overlay as a base64 PNG"),
    heatmap: str | None = Query(None, description="answer with this label's overlay as PNG"),
    method: str = Query("gradcam", description="the explanation method of heatmap"),
    keep: bool = Query(False, description="keep the upload under <data_dir>/uploads/<sha256>"),
    explain: Annotated[list[str] | None, Query(description=_EXPLAIN)] = None,
    nearest: int = Query(
        0,
        alias="similar",
        ge=0,
        le=similar.MAX_K,
        description="also the k nearest stored studies (audited)",
    ),
) -> Response:
    """Run the node's model on an uploaded image as on a received one; audited as
    ``model.predicted`` (its digest, size, type and the findings; not the upload), and the
    similar studies, when asked, as ``admin.similar``."""
    methods = tuple(dict.fromkeys(explain or ["gradcam"]))
    try:
        check_method_names(methods)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    upload = await uploads.read_upload(request, admin)
    prediction = await uploads.predict_upload(request, admin, upload, keep, methods)
    if heatmap is not None:
        try:
            explanation = prediction.explanation(heatmap, method)
        except KeyError as exc:
            raise HTTPException(404, exc.args[0]) from None
        png = await run_in_threadpool(lambda: png_bytes(prediction.overlay(explanation)))
        return Response(png, media_type="image/png")
    answer = await run_in_threadpool(prediction.to_json, heatmaps)
    if nearest:
        found = await run_in_threadpool(
            uploads.similar_to_upload, request, admin, prediction, nearest, "http"
        )
        answer["similar"] = queries.to_json(found.cases)
    return JSONResponse(answer)


@router.get("/stats")
def stats(session: ReadSession, since: str | None = "7d", until: str | None = None):
    # Counts and durations only, no identifiers: not recorded as an access.
    result = queries.stats(session, time_parameter(since), time_parameter(until))
    return JSONResponse(queries.to_json(result))


def time_parameter(text: str | None) -> datetime | None:
    """A ``since``/``until`` parameter (ISO time, ``today``, ``24h``, ``7d``); 400 naming the
    problem when it is not one."""
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
