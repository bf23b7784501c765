"""``cxrnode audit`` list/show/stats/verify as an admin types them, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import text
from unit.admin.history import (
    DAY1,
    DAY2,
    REFERENCE,
    STUDY_A,
    STUDY_B,
    STUDY_C,
    assert_formulas_neutralised,
    record_formulas,
)

from node.cli import main
from storage import audit


@pytest.fixture
def cxrnode(db, history, monkeypatch, tmp_path, capsys):
    """Run ``cxrnode`` against the test's database; returns (exit code, stdout)."""
    monkeypatch.setenv("CXRNODE_DB_URL", db.url)
    monkeypatch.setenv("CXRNODE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CXRNODE_LOG_LEVEL", "WARNING")

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(argv))
        return code, capsys.readouterr().out

    return run


def test_plain_audit_with_filters_is_list_as_before(cxrnode):
    code, out = cxrnode("audit", "--study", STUDY_A.study_uid, "--format", "json")
    assert code == 0
    events = json.loads(out)
    assert events[0]["action"] == "instance.received" and events[-1]["action"] == "study.done"
    assert cxrnode("audit", "list", "--study", STUDY_A.study_uid, "--format", "json")[1] == out


def test_table_says_what_the_ai_said_about_a_patient(cxrnode):
    code, out = cxrnode("audit", "--patient", "P1", "--action", "inference.completed")
    assert code == 0
    assert f"run 1, {REFERENCE}: Effusion 0.81" in out
    assert "no finding above threshold (top: Effusion 0.30" in out
    assert out.rstrip().endswith("(2 events)")


def test_what_failed_today_and_why(cxrnode):
    since, until = DAY1.isoformat(), DAY2.isoformat()
    code, out = cxrnode("audit", "--outcome", "failure", "--since", since, "--until", until)
    assert "job.failed" in out and "no image of the study could be decoded" in out
    assert "association.rejected" in out and "calling AE title not allowed" in out
    assert "INTRUDER@10.9.9.9" in out


def test_model_filter_and_csv_export(cxrnode):
    code, out = cxrnode("audit", "--model", "chest-densenet", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["study_uid"] for r in rows] == [STUDY_C.study_uid]
    assert json.loads(rows[0]["detail"])["model"].startswith("chest-densenet@2.0.0")


def test_show_tells_the_whole_story_of_a_study(cxrnode):
    code, out = cxrnode("audit", "show", STUDY_A.accession)
    assert code == 0
    assert f"Study     {STUDY_A.study_uid}" in out
    assert "State     done" in out
    assert f"model {REFERENCE}" in out and "present: Effusion 0.81" in out
    assert "hl7.received" in out and "ORU^R01 MSG1 ACK AA" in out
    data = json.loads(cxrnode("audit", "show", STUDY_B.study_uid, "--format", "json")[1])
    assert data["study"]["runs"][0]["error"] == "no image of the study could be decoded"
    assert cxrnode("audit", "show", "no-such-study")[0] == 1


def test_stats_table_and_json(cxrnode):
    code, out = cxrnode("audit", "stats", "--since", "2026-03-01")
    assert code == 0
    assert "2026-03-02" in out and "2026-03-03" in out
    assert "last instance received -> done" in out
    data = json.loads(cxrnode("audit", "stats", "--since", "2026-03-01", "--format", "json")[1])
    assert data["turnaround_s"]["p50"] == pytest.approx(45.0)
    assert [d["failure"] for d in data["days"]] == [2, 1]


def test_queries_of_patient_data_are_audited(cxrnode, db):
    cxrnode("audit", "--patient", "P1")
    with db.transaction() as session:
        (event,) = audit.query(session, audit.AuditFilter(action="admin.query"))
    assert event.actor_user and event.detail["filters"] == {"patient_id": "P1"}


def test_verify_passes_then_catches_a_row_changed_in_the_database(cxrnode, db):
    code, out = cxrnode("audit", "verify")
    assert code == 0 and out.startswith("audit chain intact")
    with db.transaction() as session:
        (done,) = audit.query(
            session, audit.AuditFilter(study_uid=STUDY_A.study_uid, action="study.done")
        )
    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_events SET outcome = 'failure' WHERE id = :id"), {"id": done.id}
        )
    code, out = cxrnode("audit", "verify")
    assert code == 1
    assert f"first broken row: event id {done.id} (edited)" in out
    report = json.loads(cxrnode("audit", "verify", "--format", "json")[1])
    assert report["first_problem"]["event_id"] == done.id


def test_csv_export_neutralises_formulas_in_received_values(cxrnode, db):
    record_formulas(db)
    code, out = cxrnode("audit", "--action", "instance.refused", "--format", "csv")
    assert code == 0
    assert_formulas_neutralised(out)
