"""An image a person uploads to try the node's model (``POST /api/predict``, ``POST /try``).

The upload is read only once the route's token check let the request through (so it is no
FastAPI form parameter: those are read before any dependency runs), within
``predict_max_upload_mb``: a Content-Length over it is refused with 413 before a byte is read,
and a body that grows past it as soon as it does. It is held in memory (never spooled to a
temporary file) and stored only when the request asks to keep it
(``node.predict.keep_upload``). Every try, refused or answered, is audited
(``model.predicted``) with the file's digest, size and content type, never the file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from node.admin.dependencies import AdminContext, actor, client
from node.errors import CxrNodeError
from node.predict import (
    ImageFile,
    PredictInputError,
    Prediction,
    keep_upload,
    predict_image,
    record_prediction,
)
from node.similar import SimilarToImage, similar_to_image

# The report text field; a report is a few kilobytes.
MAX_REPORT_BYTES = 256 * 1024
# The status an input error is answered with.
_STATUS = {"too_large": 413, "empty": 422, "unreadable": 422, "not_image": 422}


@dataclass(frozen=True)
class Upload:
    """A request's file and report text, as read."""

    image: ImageFile
    content_type: str
    report: str | None


class UploadRefused(HTTPException):
    """An upload answered with a 4xx (or 503: no model) and its reason, already audited."""


async def read_upload(request: Request, admin: AdminContext) -> Upload:
    """Read the ``file`` and ``report`` fields of a ``multipart/form-data`` request.

    Raises
    ------
    UploadRefused
        413 over ``predict_max_upload_mb``, 415 for another content type, 422 without a file,
        400 for a malformed body; audited.
    """
    limit = admin.settings.predict_max_upload_mb * 1024 * 1024
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        await _refuse(request, admin, 413, f"an upload may be at most {limit} bytes", declared)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        await _refuse(request, admin, 415, "send the image as multipart/form-data (field file)")
    parser = MultiPartParser(
        request.headers,
        _at_most(request.stream(), limit),
        max_files=1,
        max_fields=8,
        max_part_size=MAX_REPORT_BYTES,
    )
    parser.spool_max_size = limit + 1  # in memory: the upload is never written unasked
    try:
        form = await parser.parse()
    except _TooLarge:
        await _refuse(request, admin, 413, f"an upload may be at most {limit} bytes", declared)
    except MultiPartException as exc:
        await _refuse(request, admin, 400, f"malformed multipart body: {exc}")
    file, report = form.get("file"), form.get("report")
    if not isinstance(file, UploadFile):
        await _refuse(request, admin, 422, "the request has no file field")
    data = await file.read()
    await file.close()
    text = report if isinstance(report, str) and report.strip() else None
    content_type = file.content_type or "application/octet-stream"
    return Upload(ImageFile(file.filename or "upload", data), content_type, text)


async def predict_upload(
    request: Request,
    admin: AdminContext,
    upload: Upload,
    keep: bool = False,
    methods: Sequence[str] = ("gradcam",),
) -> Prediction:
    """Run the node's model on an upload (in a worker thread), audit it, keep it if asked;
    ``methods`` are the explanation methods (``node.predict.EXPLAINERS``).

    Raises
    ------
    UploadRefused
        422 or 413 for a file the model cannot be tried on, 503 when no model can be loaded;
        audited.
    """
    return await run_in_threadpool(_predict, request, admin, upload, keep, methods)


def _predict(
    request: Request, admin: AdminContext, upload: Upload, keep: bool, methods: Sequence[str]
) -> Prediction:
    settings = admin.settings
    actor = {"actor_ip": client(request), "actor_user": "admin-token"}
    facts = {"content_type": upload.content_type, **actor}
    try:
        predictor = admin.model.get()
        prediction = predict_image(
            predictor,
            upload.image,
            upload.report,
            max_decoded_bytes=settings.max_decoded_bytes,
            region_level=settings.region_level,
            methods=methods,
        )
    except PredictInputError as exc:
        error = {"error": str(exc), "kind": exc.kind}
        record_prediction(admin.db, upload.image, via="http", **error, **facts)
        raise UploadRefused(_STATUS[exc.kind], str(exc)) from None
    except CxrNodeError as exc:  # the model does not load (StartupError)
        record_prediction(admin.db, upload.image, via="http", error=str(exc), **facts)
        raise UploadRefused(503, str(exc)) from None
    except ValueError as exc:  # a method this model cannot give (attention without it)
        record_prediction(admin.db, upload.image, via="http", error=str(exc), **facts)
        raise UploadRefused(422, str(exc)) from None
    if keep:
        facts["kept"] = keep_upload(settings.data_dir, prediction, upload.image)
    record_prediction(admin.db, upload.image, via="http", prediction=prediction, **facts)
    return prediction


def similar_to_upload(
    request: Request, admin: AdminContext, prediction: Prediction, k: int, via: str
) -> SimilarToImage:
    """The stored studies nearest an upload's embedding (``node.similar``), audited
    (``admin.similar``, the upload's digest and the studies named) before they are shown."""
    return similar_to_image(
        admin.db,
        prediction.embedding,
        prediction.model["id"],
        prediction.sha256,
        k,
        via=via,
        actor=actor(request),
    )


class _TooLarge(Exception):
    pass


async def _at_most(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The body, refused (:class:`_TooLarge`) as soon as it passes ``limit`` bytes."""
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        yield chunk


async def _refuse(
    request: Request, admin: AdminContext, status: int, reason: str, declared: str = ""
) -> None:
    detail = {"content_type": request.headers.get("content-type", "")[:100], "status": status}
    if declared:
        detail["declared_size"] = int(declared) if declared.isdigit() else declared
    await run_in_threadpool(
        record_prediction,
        admin.db,
        None,
        via="http",
        error=reason,
        actor_ip=client(request),
        actor_user="admin-token",
        **detail,
    )
    raise UploadRefused(status, reason)
