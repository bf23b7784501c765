"""STOW-RS, the DICOMweb store: deliver result objects to a destination URL over HTTP(S).

One request per batch (a study's results): ``POST {base}/studies`` with a
``multipart/related; type="application/dicom"`` body, each part a file as the node wrote it,
streamed from disk with its length known up front. The answer (PS3.18 10.5.3) is 200 when
every instance was stored, 202 when some were not, 409 when none was; its DICOM JSON body
lists the stored instances (Referenced SOP Sequence) and the failed ones with their reason
(Failed SOP Sequence). An instance counts as delivered only when the answer is 200, or when
it is listed as stored: what the server did not confirm is sent again on the usual schedule.
"""

from __future__ import annotations

import http.client
import json
import ssl
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydicom import dcmread

from node.destinations import StowTarget
from node.dicom.sender import Delivery

MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # the answer lists UIDs; far more is not an answer
_CHUNK = 1024 * 1024
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"


class StowSender:
    """Sends files with STOW-RS; ``send`` never raises for a refusal or a network failure."""

    def __init__(
        self,
        timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self.headers = dict(headers or {})

    def send(self, target: StowTarget, paths: list[Path]) -> list[Delivery]:
        """POST every file in ``paths`` in one request; one ``Delivery`` per path, in order."""
        if not paths:
            return []
        try:
            status, body = self._post(target, paths)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return [Delivery(p, False, f"{target}: {_describe(exc)}") for p in paths]
        if status == 200:
            return [Delivery(p, True) for p in paths]
        if status not in (202, 409):
            text = body[:200].decode("utf-8", "replace").strip()
            reason = f"{target}: HTTP {status}" + (f": {text}" if text else "")
            return [Delivery(p, False, reason) for p in paths]
        # Only a partial answer needs the files' UIDs, to tell which were stored.
        stored, failed = _read_answer(body)
        results = []
        for path in paths:
            uid = _sop_instance_uid(path)
            if uid in stored:
                results.append(Delivery(path, True))
            elif uid in failed:
                results.append(Delivery(path, False, f"{target}: refused, {failed[uid]}"))
            else:
                results.append(Delivery(path, False, f"{target}: HTTP {status}, not confirmed"))
        return results

    def _post(self, target: StowTarget, paths: list[Path]) -> tuple[int, bytes]:
        boundary = uuid.uuid4().hex
        heads = [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n"
            f"Content-Length: {path.stat().st_size}\r\n\r\n".encode()
            for path in paths
        ]
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = sum(len(h) for h in heads) + sum(p.stat().st_size for p in paths)
        length += 2 * (len(paths) - 1) + len(tail)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": "application/dicom+json",
            **self.headers,
        }
        if target.authorization:
            headers["Authorization"] = target.authorization
        if target.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                target.host, target.port, timeout=self.timeout_s, context=self.ssl_context
            )
        else:
            connection = http.client.HTTPConnection(
                target.host, target.port, timeout=self.timeout_s
            )
        try:
            connection.request("POST", target.path, _body(heads, paths, tail), headers)
            response = connection.getresponse()
            body = response.read(MAX_RESPONSE_BYTES + 1)
            if len(body) > MAX_RESPONSE_BYTES:
                raise ValueError(f"the answer exceeds {MAX_RESPONSE_BYTES} bytes")
            return response.status, body
        finally:
            connection.close()


def _body(heads: list[bytes], paths: list[Path], tail: bytes) -> Iterator[bytes]:
    for i, (head, path) in enumerate(zip(heads, paths, strict=True)):
        yield (b"\r\n" if i else b"") + head
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
    yield tail


def _read_answer(body: bytes) -> tuple[set[str], dict[str, str]]:
    """The stored instances' UIDs and the failed ones' reasons, from a DICOM JSON answer."""
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        return set(), {}
    if isinstance(answer, list):  # some servers wrap the one dataset in an array
        answer = answer[0] if answer else {}
    if not isinstance(answer, dict):
        return set(), {}
    stored = {uid for item in _items(answer, _REFERENCED_SOP_SEQUENCE) if (uid := _uid(item))}
    failed = {}
    for item in _items(answer, _FAILED_SOP_SEQUENCE):
        if uid := _uid(item):
            code = _first(item, _FAILURE_REASON)
            failed[uid] = f"failure reason 0x{code:04X}" if isinstance(code, int) else "failed"
    return stored, failed


def _items(dataset: dict, tag: str) -> list[dict]:
    value = dataset.get(tag, {}).get("Value", []) if isinstance(dataset.get(tag), dict) else []
    return [item for item in value if isinstance(item, dict)]


def _first(dataset: dict, tag: str):
    element = dataset.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _uid(item: dict) -> str | None:
    value = _first(item, _SOP_INSTANCE_UID)
    return value if isinstance(value, str) else None


def _sop_instance_uid(path: Path) -> str | None:
    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except (OSError, ValueError):
        return None  # counted as not confirmed
    return str(meta.get("SOPInstanceUID", "")) or None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "destination unreachable"
    return f"{type(exc).__name__}: {exc}"[:300]
