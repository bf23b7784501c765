"""POST /api/predict on a real uvicorn server over loopback, with the shipped default package
shared from the node's side (``AdminServer.serve_model``): the token, the answer as JSON and as
PNG, 413 before the body is read, bad files, the audit and the OpenAPI schema."""

from __future__ import annotations

import http.client
import json
import uuid
from pathlib import Path

import pytest

from node.admin.server import AdminServer
from node.config import Settings
from node.predict import ImageFile, predict_image
from storage import audit
from storage.actions import Action
from storage.database import Database
from support.embeddings import finished_run

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def server(tmp_path: Path, default_predictor):
    settings = Settings(admin_token=TOKEN, data_dir=tmp_path, predict_max_upload_mb=1)
    db = Database(settings.database_url)
    db.create_schema()
    admin = AdminServer(settings, db, port=0)
    admin.serve_model(default_predictor)
    admin.start()
    yield admin, db
    admin.stop()
    db.dispose()


def multipart(name: str, data: bytes, report: str | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    ]
    if report is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="report"\r\n\r\n'
            f"{report}\r\n".encode()
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(
    port: int, path: str, body: bytes, content_type: str, token: str | None = TOKEN, **headers
):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = {"Content-Type": content_type, **headers}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    connection.request("POST", path, body=body, headers=sent)
    response = connection.getresponse()
    answer = response.status, response.getheader("Content-Type"), response.read()
    connection.close()
    return answer


def tries(db: Database) -> list[dict]:
    with db.reading() as session:
        events = audit.query(session, audit.AuditFilter(action="model.predicted"))
        return [audit.as_dict(e) for e in events]


def test_an_rsna_dicom_is_answered_as_json_and_png_and_audited_without_the_upload(
    server, rsna_dicom: Path
):
    admin, db = server
    data = rsna_dicom.read_bytes()
    body, content_type = multipart(rsna_dicom.name, data, "FINDINGS: opacity")

    status, kind, answer = post(admin.port, "/api/predict?keep=true", body, content_type)
    assert status == 200 and kind == "application/json", answer[:300]
    result = json.loads(answer)
    probabilities = [f["probability"] for f in result["findings"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert result["format"] == "dicom" and result["report"]["given"] is True
    assert all("overlay_png" not in e for e in result["explanations"])
    top = result["findings"][0]["name"]

    status, kind, png = post(admin.port, f"/api/predict?heatmap={top}", body, content_type)
    assert (status, kind) == (200, "image/png") and png.startswith(b"\x89PNG")
    status, _, answer = post(admin.port, "/api/predict?heatmap=Nothing", body, content_type)
    assert status == 404 and "explained" in json.loads(answer)["detail"]
    status, _, answer = post(admin.port, "/api/predict?heatmaps=true", body, content_type)
    assert all(e["overlay_png"] for e in json.loads(answer)["explanations"])

    kept = admin.settings.data_dir / "uploads" / f"{result['sha256']}.dcm"
    assert kept.read_bytes() == data
    assert sorted(p.name for p in (admin.settings.data_dir / "uploads").iterdir()) == [kept.name]
    events = tries(db)
    assert [e["outcome"] for e in events] == ["success"] * 4
    first = events[0]["detail"]
    assert first["sha256"] == result["sha256"] and first["size"] == len(data)
    assert first["kept"] == f"uploads/{kept.name}" and first["via"] == "http"
    assert first["findings"].keys() == {f["name"] for f in result["findings"]}
    assert rsna_dicom.stem not in json.dumps(events)  # neither the file's name nor its bytes
    assert "kept" not in events[1]["detail"]


def test_requests_without_the_token_or_with_bad_files_are_refused_and_audited(server):
    admin, db = server
    body, content_type = multipart("notes.dcm", b"hello")

    assert post(admin.port, "/api/predict", body, content_type, token=None)[0] == 401
    assert tries(db) == []  # refused before the upload was read

    status, _, answer = post(admin.port, "/api/predict", body, content_type)
    assert status == 422 and "notes.dcm" in json.loads(answer)["detail"]
    status, _, answer = post(admin.port, "/api/predict", *multipart("empty.png", b""))
    assert status == 422 and "empty" in json.loads(answer)["detail"]
    status, _, answer = post(
        admin.port, "/api/predict", b"file=x", "application/x-www-form-urlencoded"
    )
    assert status == 415
    # Over predict_max_upload_mb by its Content-Length: refused before the body is read (the
    # client sends only the first kilobyte of the 2 MB it declares).
    status, _, answer = post(
        admin.port, "/api/predict", body[:1024], content_type, **{"Content-Length": "2097152"}
    )
    assert status == 413 and "at most 1048576 bytes" in json.loads(answer)["detail"]
    events = tries(db)
    assert [e["outcome"] for e in events] == ["failure"] * 4
    assert [e["detail"].get("kind") for e in events[:2]] == ["unreadable", "empty"]
    assert events[3]["detail"]["declared_size"] == 2097152 and "sha256" not in events[3]["detail"]
    assert all(e["actor_ip"] == "127.0.0.1" for e in events)


def test_the_nearest_stored_studies_come_with_the_answer_when_asked_and_are_audited(
    server, rsna_dicom: Path, default_predictor
):
    admin, db = server
    body, content_type = multipart(rsna_dicom.name, rsna_dicom.read_bytes())
    status, _, answer = post(admin.port, "/api/predict?explain=magic", body, content_type)
    assert status == 422 and "integrated_gradients" in json.loads(answer)["detail"]
    status, _, answer = post(admin.port, "/api/predict?explain=attention", body, content_type)
    assert status == 422 and "cross-attention fusion" in json.loads(answer)["detail"]
    assert tries(db)[-1]["outcome"] == "failure"  # refused by the model, and audited
    status, _, answer = post(admin.port, "/api/predict", body, content_type)
    assert "similar" not in json.loads(answer)  # only when asked
    model = json.loads(answer)["model"]["id"]
    seen = predict_image(
        default_predictor, ImageFile.read(rsna_dicom), max_decoded_bytes=1 << 30, methods=()
    )
    near, far = seen.embedding, -seen.embedding
    finished_run(db, "1.2.3.1", [far], model, accession="ACC-FAR")
    finished_run(db, "1.2.3.2", [near], model, accession="ACC-NEAR")

    status, _, answer = post(admin.port, "/api/predict?similar=1", body, content_type)
    assert status == 200
    (case,) = json.loads(answer)["similar"]
    assert case["rank"] == 1 and case["study"]["accession"] == "ACC-NEAR"
    assert case["distance"] == pytest.approx(0, abs=1e-5)
    with db.reading() as session:
        (event,) = audit.query(session, audit.AuditFilter(action=Action.ADMIN_SIMILAR))
    assert event.detail["returned"] == [case["study"]["study_uid"]]
    assert event.detail["query"] == f"sha256:{json.loads(answer)['sha256']}"


def test_the_openapi_schema_documents_the_route(server):
    admin, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=30)
    connection.request("GET", "/api/openapi.json")
    refused = connection.getresponse()
    assert refused.status == 401 and refused.read()  # behind the token, as the API it describes
    connection.request("GET", "/api/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    assert response.status == 200
    schema = json.loads(response.read())
    connection.close()
    assert schema == admin.app.openapi()
    operation = schema["paths"]["/api/predict"]["post"]
    parameters = {p["name"] for p in operation["parameters"]}
    assert parameters == {"heatmaps", "heatmap", "method", "keep", "explain", "similar"}
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"] and set(body["properties"]) == {"file", "report"}
    assert {"200", "401", "404", "413", "415", "422"} <= set(operation["responses"])
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "image/png"}
