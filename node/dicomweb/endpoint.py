"""The STOW-RS endpoint: studies stored over DICOMweb, admitted exactly as C-STORE admits them.

``POST /dicom-web/studies`` (or ``/dicom-web/studies/{StudyInstanceUID}``, whose instances
must belong to that study) with a ``multipart/related; type="application/dicom"`` body, each
part a DICOM Part 10 file. The request is spooled to the data directory as it arrives (at
most ``stow_max_request_mb``), then each part goes through the same
:class:`~node.dicom.intake.InstanceIntake` as a C-STORE: same limits, checks, durable write
and audit. The answer (PS3.18 10.5.3) comes only once every stored instance is on disk and in
the database: 200 when all were stored, 202 when some were not, 409 when none was, its DICOM
JSON body listing the stored instances and the failed ones with their Failure Reason (the
C-STORE status the node would have answered). The studies of a request are then complete,
as after an association is released.

The client presents ``dicomweb_token``: as a bearer token, or as the password of HTTP Basic
(any user name), which DICOMweb clients such as Orthanc's plugin can send. Refused requests
are audited once per client address and window (``dicomweb.auth_failed``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom.filereader import read_dataset
from starlette.concurrency import run_in_threadpool

from node.admin.auth import MIN_TOKEN_LENGTH, TokenCheck
from node.config import Settings
from node.dicom.intake import CANNOT_PARSE, Instance, InstanceIntake, Received, Sender
from node.dicomweb.multipart import ContentType, MultipartError, parts
from node.errors import ConfigError
from node.http import ThreadedHttpServer
from node.refusals import RefusalAudit
from storage.actions import Action

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
AUTH_FAILED = Action.DICOMWEB_AUTH_FAILED
_CHUNK = 1024 * 1024
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_CLASS_UID = "00081150"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"


class StowEndpoint:
    """The STOW-RS application over an intake; ``app`` is the ASGI application."""

    def __init__(
        self,
        settings: Settings,
        intake: InstanceIntake,
        refusals: RefusalAudit,
        on_complete: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.refusals = refusals
        self.on_complete = on_complete
        self.tokens = TokenCheck(settings.dicomweb_token)
        self.max_bytes = settings.stow_max_request_mb * 1024 * 1024
        self.spool_dir = settings.data_dir / "tmp"
        self.app = FastAPI(title="cxrnode STOW-RS", docs_url=None, redoc_url=None, openapi_url=None)
        self.app.add_api_route("/dicom-web/studies", self.store, methods=["POST"])
        self.app.add_api_route("/dicom-web/studies/{study_uid}", self.store, methods=["POST"])

    async def store(self, request: Request, study_uid: str | None = None) -> JSONResponse:
        address = request.client.host if request.client else None
        if not self._authorised(request):
            self.refusals.record(AUTH_FAILED, address, {"path": request.url.path})
            raise HTTPException(
                401, "a valid DICOMweb token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            content_type = ContentType.parse(request.headers.get("content-type", ""))
        except MultipartError as exc:
            raise HTTPException(415, str(exc)) from exc
        if content_type.part_type not in (None, "application/dicom"):
            raise HTTPException(415, f"parts of type {content_type.part_type!r} are not taken")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise HTTPException(413, f"a request may carry at most {self.max_bytes} bytes")
        if not self.intake.admission.has_room():
            raise HTTPException(
                503, "the node's disk is nearly full", headers={"Retry-After": "300"}
            )
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix="stow-", suffix=".part") as f:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_bytes:
                    raise HTTPException(413, f"a request may carry at most {self.max_bytes} bytes")
                f.write(chunk)
            f.flush()
            sender = Sender(None, address, via="STOW-RS")
            answers = await run_in_threadpool(
                self._take_all, Path(f.name), content_type.boundary, study_uid, sender
            )
        return _answer(answers)

    def _authorised(self, request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.tokens.matches(credentials.strip())
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return self.tokens.matches(decoded.partition(":")[2])
        return False

    def _take_all(
        self, path: Path, boundary: bytes, study_uid: str | None, sender: Sender
    ) -> list[Received]:
        answers: list[Received] = []
        try:
            for part in parts(path, boundary):
                answers.append(self._take_one(part.content_type, part.body, study_uid, sender))
        except MultipartError as exc:
            answers.append(self.intake.refuse(CANNOT_PARSE, f"multipart body: {exc}", None, sender))
        if not answers:
            reason = "the request holds no instance"
            answers.append(self.intake.refuse(CANNOT_PARSE, reason, None, sender))
        stored = Counter(a.study_uid for a in answers if a.stored and a.study_uid)
        if stored and self.settings.complete_on_release and self.intake.complete(stored, sender):
            self.on_complete()
        return answers

    def _take_one(
        self, content_type: str | None, body: bytes, study_uid: str | None, sender: Sender
    ) -> Received:
        if content_type not in (None, "application/dicom"):
            reason = f"a part of type {content_type!r} is not a DICOM file"
            return self.intake.refuse(CANNOT_PARSE, reason, None, sender)
        try:
            dataset, transfer_syntax = _split_part10(body)
        except ValueError as exc:
            return self.intake.refuse(
                CANNOT_PARSE, f"not a DICOM Part 10 file: {exc}", None, sender
            )
        instance = Instance(body, dataset, transfer_syntax, study_uid=study_uid)
        return self.intake.take(instance, sender)


class StowServer:
    """The STOW-RS endpoint on ``dicomweb_host:dicomweb_port`` until ``stop``.

    Raises
    ------
    ConfigError
        Without a ``dicomweb_token`` of at least 16 characters: the door never opens unlocked.
    """

    def __init__(
        self,
        settings: Settings,
        intake: InstanceIntake,
        refusals: RefusalAudit,
        on_complete: Callable[[], None] = lambda: None,
        port: int | None = None,
    ) -> None:
        if len(settings.dicomweb_token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"dicomweb_port is set but dicomweb_token is shorter than {MIN_TOKEN_LENGTH} "
                "characters: the STOW-RS endpoint does not start without one "
                "(set CXRNODE_DICOMWEB_TOKEN, or dicomweb_port = 0)"
            )
        self.refusals = refusals
        self.endpoint = StowEndpoint(settings, intake, refusals, on_complete)
        self.http = ThreadedHttpServer(
            self.endpoint.app,
            settings.dicomweb_host,
            settings.dicomweb_port if port is None else port,
            "STOW-RS",
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
        )

    @property
    def url(self) -> str:
        return f"{self.http.url}/dicom-web"

    def start(self) -> StowServer:
        self.http.start()
        log.info("STOW-RS on %s", self.url)
        return self

    def stop(self) -> None:
        self.http.stop()
        self.refusals.flush()


def _split_part10(data: bytes) -> tuple[bytes, str]:
    """The dataset as encoded and its transfer syntax, from a Part 10 file's bytes, without
    parsing the dataset (the size limits judge it first)."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise ValueError("no DICM prefix after the preamble")
    stream = BytesIO(data)
    stream.seek(132)
    # File Meta is explicit VR little endian (PS3.10 7.1); reading stops at the dataset.
    meta = read_dataset(stream, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    syntax = str(meta.get("TransferSyntaxUID", "")).strip()
    if not syntax:
        raise ValueError("the File Meta names no transfer syntax")
    return data[stream.tell() :], syntax


def _answer(answers: list[Received]) -> JSONResponse:
    stored = [a for a in answers if a.stored]
    failed = [a for a in answers if not a.stored]
    body: dict = {}
    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_reference(a) for a in stored]}
    if failed:
        items = [
            _reference(a) | {_FAILURE_REASON: {"vr": "US", "Value": [a.status]}} for a in failed
        ]
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": items}
    status = 200 if not failed else 202 if stored else 409
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


def _reference(received: Received) -> dict:
    item = {}
    if received.sop_class_uid:
        item[_REFERENCED_SOP_CLASS_UID] = {"vr": "UI", "Value": [received.sop_class_uid]}
    if received.sop_uid:
        item[_REFERENCED_SOP_INSTANCE_UID] = {"vr": "UI", "Value": [received.sop_uid]}
    return item
