"""The admin HTTP API and pages on a real uvicorn server over loopback, on SQLite and
PostgreSQL: token refusals, every query, health without identifiers, the browser's cookie."""

from __future__ import annotations

import csv
import http.client
import io
import json
from dataclasses import replace

import numpy as np
import pytest
from unit.admin.history import (
    DAY1,
    DAY2,
    OTHER,
    REFERENCE,
    STUDY_A,
    STUDY_B,
    STUDY_C,
    StudyIds,
    assert_formulas_neutralised,
    record_formulas,
)

from node.admin import api, health, login, pages
from node.admin.auth import COOKIE
from node.admin.dependencies import require_browser_session, require_token
from node.admin.probe import DestinationProbe
from node.admin.server import AdminServer
from node.config import Destination, Settings
from node.errors import ConfigError
from node.orthanc import free_port
from storage import audit, embeddings
from storage.audit_chain import HEAD_ID
from storage.schema import AuditChainHead, Job, Study
from support.embeddings import finished_run

TOKEN = "test-token-0123456789abcdef"


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str, token: str | None = None, cookie: str | None = None):
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if cookie:
            headers["Cookie"] = f"{COOKIE}={cookie}"
        return self.request("GET", path, headers=headers)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), data.decode("utf-8")


@pytest.fixture
def admin(db, history):
    nobody = Destination("NOBODY", "127.0.0.1", free_port())  # nothing listens there
    settings = Settings(admin_token=TOKEN, destinations=(nobody,), node_name="test-node")
    probe = DestinationProbe("CXRNODE", settings.destinations, timeout_s=2)
    server = AdminServer(settings, db, probe, port=0).start()
    yield Client(server.port)
    server.stop()


PROTECTED = [
    "/api/audit",
    "/api/audit?patient_id=P1",
    "/api/audit/verify",
    "/api/studies",
    f"/api/studies/{STUDY_A.study_uid}/timeline",
    f"/api/studies/{STUDY_A.study_uid}/similar",
    "/api/stats",
]


@pytest.mark.parametrize("path", PROTECTED)
def test_api_refuses_requests_without_the_token(admin, path):
    status, headers, body = admin.get(path)
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    assert "P1" not in body and "ACC1" not in body
    assert admin.get(path, token="wrong-token-0123456789abcdef")[0] == 401
    assert admin.get(path, cookie="forged")[0] == 401


def test_refused_requests_are_audited(admin, db):
    admin.get("/api/audit")
    with db.transaction() as session:
        (event,) = audit.query(session, audit.AuditFilter(action="admin.auth_failed"))
    assert event.outcome == "failure" and event.actor_ip == "127.0.0.1"
    assert event.detail["path"] == "/api/audit"


def test_a_flood_of_refused_requests_is_one_audit_row_per_client_and_window(db, history):
    # 20 s of unauthenticated requests once wrote 3,895 audit rows, one transaction each.
    server = AdminServer(Settings(admin_token=TOKEN), db, port=0).start()
    client = Client(server.port)
    try:
        statuses = {client.get(path)[0] for path in PROTECTED * 20}
        statuses |= {client.get(f"/?token=wrong-{TOKEN}")[0] for _ in range(10)}
    finally:
        server.stop()
    assert statuses == {401}
    with db.transaction() as session:
        events = audit.query(session, audit.AuditFilter(action="admin.auth_failed", limit=None))
        counts = sorted((e.detail["count"], e.detail["window_s"], e.actor_ip) for e in events)
    # The first refusal at once; the rest of the window counted, written when the server stops.
    total = len(PROTECTED) * 20 + 10
    assert counts == [(1, 60.0, "127.0.0.1"), (total - 1, 60.0, "127.0.0.1")]


@pytest.mark.parametrize(
    ("path", "bound"),
    [
        ("/api/audit?limit=99999999999999999999", "less than or equal to 10000"),
        ("/api/audit?limit=0", "greater than or equal to 1"),
        ("/api/audit?limit=ten", "valid integer"),
        ("/api/studies?limit=99999999999999999999", "less than or equal to 500"),
        ("/api/studies?limit=-3", "greater than or equal to 1"),
        ("/?limit=99999999999999999999", "less than or equal to 500"),
    ],
)
def test_numeric_parameters_out_of_bounds_are_422_naming_the_bound(admin, path, bound):
    status, _, body = admin.get(path, TOKEN)
    assert status == 422 and bound in body and "limit" in body


@pytest.mark.parametrize(
    "path",
    [
        "/api/audit?since=99999999999999999999d",
        "/api/audit?until=0001-01-01T00:00%2B01:00",
        "/api/stats?since=5000000d",
    ],
)
def test_times_out_of_range_are_400_not_500(admin, path):
    status, _, body = admin.get(path, TOKEN)
    assert status == 400 and "out of range" in body


def test_health_is_open_and_shows_no_identifiers(admin):
    status, headers, body = admin.get("/api/health")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "degraded"  # the destination does not answer
    (destination,) = health["destinations"]
    assert destination["reachable"] is False and destination["destination"].startswith("NOBODY@")
    assert health["queue"]["jobs"] == {"queued": 0, "running": 0, "sending": 0}
    assert health["queue"]["last_study_state"] == "skipped"
    assert health["node"]["node_name"] == "test-node"
    for identifier in ("ACC", "1.2.826", "P1", "P2"):
        assert identifier not in body
    assert headers["cache-control"] == "no-store"


def test_audit_query_with_filters(admin, db):
    status, _, body = admin.get("/api/audit?patient_id=P1&action=inference.completed", TOKEN)
    assert status == 200
    events = json.loads(body)
    assert [e["study_uid"] for e in events] == [STUDY_A.study_uid, STUDY_C.study_uid]
    assert events[0]["detail"]["model"] == REFERENCE
    since, until = DAY1.isoformat().replace("+00:00", "Z"), DAY2.isoformat().replace("+00:00", "Z")
    _, _, body = admin.get(f"/api/audit?outcome=failure&since={since}&until={until}", TOKEN)
    assert [e["action"] for e in json.loads(body)] == ["job.failed", "association.rejected"]
    _, _, body = admin.get("/api/audit?model=chest-densenet@2.0.0", TOKEN)
    assert [e["study_uid"] for e in json.loads(body)] == [STUDY_C.study_uid]
    assert admin.get("/api/audit?since=last-tuesday", TOKEN)[0] == 400
    with db.transaction() as session:
        access = audit.query(session, audit.AuditFilter(action="admin.query"))
    assert access[0].actor_ip == "127.0.0.1"
    assert access[0].detail["filters"] == {"patient_id": "P1", "action": "inference.completed"}


def test_audit_csv_export(admin):
    status, headers, body = admin.get(f"/api/audit?accession={STUDY_A.accession}&format=csv", TOKEN)
    assert status == 200 and headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body)))
    assert rows[0]["action"] == "hl7.received" and rows[-1]["action"] == "study.done"


def test_audit_csv_export_neutralises_formulas_in_received_values(admin, db):
    record_formulas(db)
    status, _, body = admin.get("/api/audit?action=instance.refused&format=csv", TOKEN)
    assert status == 200
    assert_formulas_neutralised(body)


def test_timeline_stats_studies_and_verify(admin):
    status, _, body = admin.get(f"/api/studies/{STUDY_A.accession}/timeline", TOKEN)
    timeline = json.loads(body)
    assert status == 200 and timeline["study"]["study_uid"] == STUDY_A.study_uid
    assert timeline["study"]["runs"][0]["present"][0] == {
        "name": "Effusion",
        "probability": 0.81,
        "present": True,
    }
    assert admin.get("/api/studies/9.9.9/timeline", TOKEN)[0] == 404
    stats = json.loads(admin.get("/api/stats?since=2026-03-01", TOKEN)[2])
    assert [d["day"] for d in stats["days"]][:2] == ["2026-03-02", "2026-03-03"]
    assert stats["turnaround_s"]["count"] == 2
    studies = json.loads(admin.get("/api/studies?q=P1", TOKEN)[2])
    assert [s["accession"] for s in studies] == ["ACC3", "ACC1"]
    assert json.loads(admin.get("/api/audit/verify", TOKEN)[2])["ok"] is True


def test_page_needs_the_token_then_a_cookie(admin):
    status, _, body = admin.get("/")
    assert status == 401 and 'name="token"' in body and "ACC1" not in body
    status, headers, _ = admin.get(f"/?token={TOKEN}&q=P1")
    assert status == 303 and headers["location"] == "/?q=P1"  # the token leaves the address
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    status, headers, body = admin.get("/", cookie=value)
    assert status == 200 and "ACC1" in body and "Effusion 0.81" in body
    assert "default-src 'none'" in headers["content-security-policy"]
    assert admin.get(f"/?token=wrong-{TOKEN}")[0] == 401


def test_login_form_sets_the_cookie(admin):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    bad = admin.request("POST", "/login", b"token=nope&next=/", form)
    assert bad[0] == 401 and "not valid" in bad[2]
    status, headers, _ = admin.request(
        "POST", "/login", f"token={TOKEN}&next=//evil.example/".encode(), form
    )
    assert status == 303 and headers["location"] == "/"
    value = headers["set-cookie"].split(";")[0].split("=", 1)[1]
    status, _, body = admin.get(f"/studies/{STUDY_A.study_uid}", cookie=value)
    assert status == 200 and "Effusion" in body and "hl7.received" in body


def test_page_escapes_what_peers_sent(admin, history):
    hostile = StudyIds("1.2.826.9.9", "<script>x()</script>", "<b>P</b>")
    history.receive(hostile, DAY2)
    _, _, body = admin.get("/", TOKEN)
    assert "<script>x()" not in body and "&lt;script&gt;x()&lt;/script&gt;" in body
    assert "&lt;b&gt;P&lt;/b&gt;" in body


def test_admin_server_refuses_to_start_without_a_proper_token(db):
    with pytest.raises(ConfigError, match="admin_token"):
        AdminServer(Settings(admin_port=8080), db)
    with pytest.raises(ConfigError, match="16 characters"):
        AdminServer(replace(Settings(), admin_port=8080, admin_token="short"), db)


def test_verify_reports_rows_lost_behind_the_head_journal(admin, db):
    if db.journal is None:
        pytest.skip("the head journal is kept beside a SQLite file only")
    with db.reading() as session:
        head = session.get(AuditChainHead, HEAD_ID)
    # As after a deleted write-ahead log: two commits the database no longer holds.
    db.journal.write(head.last_seq + 2, "f" * 64, force=True)
    report = json.loads(admin.get("/api/audit/verify", TOKEN)[2])
    assert report["ok"] is False
    assert "were committed (the head journal" in report["first_problem"]["message"]


def test_every_route_but_health_and_login_sits_behind_a_token_check():
    # The routers put the check in front of each route they serve: a route added to the API
    # or the pages cannot be reached without the token, whatever its own signature says.
    guards = {
        (method, route.path): [d.call for d in route.dependant.dependencies]
        for served in (api, pages, login, health)
        for route in served.router.routes
        for method in route.methods
    }
    assert sorted(guards) == [
        ("GET", "/"),
        ("GET", "/api/audit"),
        ("GET", "/api/audit/verify"),
        ("GET", "/api/health"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/stats"),
        ("GET", "/api/studies"),
        ("GET", "/api/studies/{key}/similar"),
        ("GET", "/api/studies/{key}/timeline"),
        ("GET", "/login"),
        ("GET", "/logout"),
        ("GET", "/studies/{key}"),
        ("GET", "/try"),
        ("POST", "/api/predict"),
        ("POST", "/api/studies/{key}/rerun"),
        ("POST", "/api/studies/{key}/resend"),
        ("POST", "/login"),
        ("POST", "/try"),
    ]
    for (_, path), dependencies in guards.items():
        if path.startswith("/api/") and path != "/api/health":
            assert dependencies[0] is require_token, path
        elif path in ("/", "/studies/{key}", "/try"):
            assert dependencies[0] is require_browser_session, path
        else:
            assert require_token not in dependencies and require_browser_session not in dependencies


def test_the_token_is_checked_before_the_parameters(admin, db):
    # Without the token even a malformed request learns nothing but 401, and is counted.
    status, headers, body = admin.get("/api/audit?limit=0&since=last-tuesday")
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    assert "limit" not in body
    status, _, body = admin.get("/?limit=0")
    assert status == 401 and 'name="token"' in body
    with db.reading() as session:
        (event,) = audit.query(session, audit.AuditFilter(action="admin.auth_failed"))
    assert event.detail["path"] == "/api/audit"  # the first of the window; the rest counted


def test_a_stale_cookie_gets_the_login_form_saying_so_and_is_counted(admin, db):
    status, _, body = admin.get(f"/studies/{STUDY_A.study_uid}", cookie="from-an-old-token")
    assert status == 401 and "not valid" in body and "ACC1" not in body
    with db.reading() as session:
        (event,) = audit.query(session, audit.AuditFilter(action="admin.auth_failed"))
    assert event.detail["path"] == f"/studies/{STUDY_A.study_uid}"
    status, _, body = admin.get("/")  # no cookie at all: the form, without the complaint
    assert status == 401 and 'name="token"' in body and "not valid" not in body


def test_logout_drops_the_cookie(admin):
    assert admin.get("/login")[0] == 200
    status, headers, _ = admin.get("/logout")
    assert status == 303 and headers["location"] == "/login"
    dropped = headers["set-cookie"]
    assert dropped.startswith(f'{COOKIE}="";') and "Max-Age=0" in dropped
    assert headers["x-frame-options"] == "DENY"  # every answer has the security headers


def test_a_page_read_is_recorded_before_it_is_answered(admin, db):
    status, _, body = admin.get(f"/studies/{STUDY_A.accession}", TOKEN)
    assert status == 200 and "Effusion" in body
    status, _, body = admin.get("/studies/9.9.9", TOKEN)
    assert status == 404 and "9.9.9" in body
    with db.reading() as session:
        reads = audit.query(session, audit.AuditFilter(action="admin.query"))
    assert [(e.detail["what"], e.detail["filters"], e.detail["rows"]) for e in reads] == [
        ("GET /studies", {"study": STUDY_A.accession}, 1),
        ("GET /studies", {"study": "9.9.9"}, 0),
    ]
    assert {e.actor_ip for e in reads} == {"127.0.0.1"}


STUDY_E = StudyIds("1.2.826.1.5", "ACC5", "P5")  # like A, by the same model


@pytest.fixture
def embedded(db, history):
    """A's and C's runs with their embeddings (C by another model), and E, like A."""
    with db.transaction() as session:
        for who, model in ((STUDY_A, REFERENCE), (STUDY_C, OTHER)):
            job = session.query(Job).join(Study).filter(Study.study_uid == who.study_uid).one()
            embeddings.add(session, job, f"{who.study_uid}.0", model, np.array([1.0, 0.0]))
    finished_run(db, STUDY_E.study_uid, [[1.0, 0.5]], REFERENCE, 0.6, "ACC5", "P5")


def test_similar_earlier_cases_of_a_study_by_token_audited_or_why_none(admin, db, embedded):
    status, _, body = admin.get(f"/api/studies/{STUDY_A.accession}/similar?k=3", TOKEN)
    assert status == 200
    answer = json.loads(body)
    assert answer["study"] == STUDY_A.ids and (answer["run"], answer["k"]) == (1, 3)
    (case,) = answer["cases"]  # not A itself, not C (another model)
    assert case["study"] == STUDY_E.ids and case["rank"] == 1
    assert case["distance"] == pytest.approx(1 - 1 / np.sqrt(1.25), abs=1e-5)
    assert case["present"] == [{"name": "Effusion", "probability": 0.6, "present": True}]
    with db.reading() as session:
        (event,) = audit.query(session, audit.AuditFilter(action="admin.similar"))
    assert (event.study_uid, event.actor_ip, event.actor_user) == (
        STUDY_A.study_uid,
        "127.0.0.1",
        "admin-token",
    )
    assert event.detail["returned"] == [STUDY_E.study_uid] and event.detail["via"] == "http"
    # No answer, and why.
    status, _, body = admin.get(f"/api/studies/{STUDY_B.study_uid}/similar", TOKEN)
    assert status == 409 and "no embedding stored for this study; rerun it" in body
    assert admin.get("/api/studies/9.9.9/similar", TOKEN)[0] == 404
    assert admin.get(f"/api/studies/{STUDY_A.study_uid}/similar?k=0", TOKEN)[0] == 422
    with db.reading() as session:
        events = audit.query(session, audit.AuditFilter(action="admin.similar"))
    assert [(e.study_uid, e.outcome) for e in events[1:]] == [
        (STUDY_B.study_uid, "warning"),
        (None, "warning"),
    ]


def test_the_study_page_lists_similar_earlier_cases(admin, db, embedded):
    status, _, body = admin.get(f"/studies/{STUDY_A.accession}", TOKEN)
    assert status == 200 and "Similar earlier cases" in body
    assert f'href="/studies/{STUDY_E.study_uid}"' in body and "Effusion 0.60" in body
    status, _, body = admin.get(f"/studies/{STUDY_B.accession}", TOKEN)
    assert status == 200 and "no embedding stored for this study; rerun it" in body
    with db.reading() as session:
        events = audit.query(session, audit.AuditFilter(action="admin.similar"))
    assert [(e.study_uid, e.detail["via"]) for e in events] == [
        (STUDY_A.study_uid, "page"),
        (STUDY_B.study_uid, "page"),
    ]
