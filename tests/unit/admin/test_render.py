"""``render.summarize``: the one line an audit event's detail gets in ``cxrnode audit`` and on the
study page, for each action that has its own words and for the rest."""

from __future__ import annotations

import pytest

from node.admin.render import summarize


@pytest.mark.parametrize(
    ("action", "detail", "line"),
    [
        ("study.queued", {"run": 1}, "run 1 (first)"),
        (
            "study.queued",
            {"run": 2, "reason": "late_report", "text": "hl7"},
            "run 2 (late_report, text: hl7)",
        ),
        ("result.sent", {"kind": "SR", "destination": "PACS"}, "SR to PACS"),
        (
            "result.send_failed",
            {
                "kind": "SR",
                "destination": "PACS",
                "error": "refused",
                "attempt": 2,
                "retry_in_s": 30,
            },
            "SR to PACS: refused; attempt 2, retry in 30 s",
        ),
        (
            "result.send_failed",
            {"error": "refused", "attempt": 9},
            "result to ?: refused; attempt 9, given up",
        ),
        (
            "hl7.received",
            {"message_type": "ORU^R01", "message_id": "M1", "ack": "AA"},
            "ORU^R01 M1 ACK AA",
        ),
        ("hl7.rejected", {"message_type": "ORU^R01", "reason": "no OBX"}, "ORU^R01: no OBX"),
        (
            "instance.received",
            {"size": 10, "transfer_syntax": "1.2.840.10008.1.2.1"},
            "10 bytes, 1.2.840.10008.1.2.1",
        ),
        ("instance.duplicate", {"size": 3, "note": "same SHA-256"}, "3 bytes; same SHA-256"),
        ("instance.received", {"reason": "older event"}, "older event"),  # no size: generic
        ("study.done", {"run": 1}, "run 1: every result confirmed"),
        (
            "pairing.window_expired",
            {"runs_with": "image only"},
            "no report in time: runs with image only",
        ),
        (
            "node.started",
            {"ae_title": "CXR", "port": 104},
            "CXR port 104, role all, 0 job(s) resumed",
        ),
        (
            "admin.query",
            {"what": "GET /", "filters": {"q": "P1"}, "rows": 3},
            "GET / q=P1 (3 rows)",
        ),
        ("admin.auth_failed", {"path": "/api/audit", "via": "http"}, ""),
        ("job.failed", {"reason": "boom", "error": "later"}, "boom"),
        ("job.requeued", {"error": "disk full"}, "disk full"),
        ("anything.else", {"why": "because"}, "because"),
        ("anything.else", {"a": 1, "b": {"c": [2]}}, 'a=1, b={"c":[2]}'),
        ("anything.else", None, ""),
    ],
)
def test_each_action_gets_its_line(action, detail, line):
    assert summarize(action, detail) == line
