"""Every admin query, on a real SQLite file and a real PostgreSQL server (same tests for both)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from unit.admin.history import DAY1, DAY2, OTHER, REFERENCE, STUDY_A, STUDY_B, STUDY_C, STUDY_D

from storage import audit, queries
from storage.audit import AuditFilter
from storage.schema import StudyState


def actions(db, **where) -> list[str]:
    with db.transaction() as session:
        return [e.action for e in audit.query(session, AuditFilter(**where))]


def test_by_study_uid_lists_that_study_only_oldest_first(db, history):
    assert actions(db, study_uid=STUDY_A.study_uid) == [
        "instance.received",
        "instance.received",
        "study.queued",
        "inference.completed",
        "result.sent",
        "result.sent",
        "study.done",
    ]


def test_by_accession_includes_the_report_received_before_the_study(db, history):
    found = actions(db, accession=STUDY_A.accession)
    assert found[0] == "hl7.received" and found[-1] == "study.done"


def test_by_patient_spans_the_patients_studies(db, history):
    with db.transaction() as session:
        events = audit.query(session, AuditFilter(patient_id="P1"))
        uids = {e.study_uid for e in events if e.study_uid}
    assert uids == {STUDY_A.study_uid, STUDY_C.study_uid}


def test_by_action_exact_and_by_prefix(db, history):
    assert actions(db, action="study.done") == ["study.done", "study.done"]
    assert set(actions(db, action="result.")) == {"result.sent", "result.send_failed"}
    assert actions(db, action="result") == []  # no dot: exact only


def test_by_outcome_answers_what_failed(db, history):
    assert actions(db, outcome="failure") == [
        "job.failed",
        "association.rejected",
        "result.send_failed",
    ]
    assert set(actions(db, outcome="warning")) == {"instance.skipped", "study.skipped"}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (REFERENCE, [STUDY_A.study_uid]),
        ("cxrnode-untrained-reference", [STUDY_A.study_uid]),
        ("chest-densenet@2.0.0", [STUDY_C.study_uid]),
        ("chest", []),  # a name is matched whole, not as any prefix
    ],
)
def test_by_model_version(db, history, model, expected):
    with db.transaction() as session:
        events = audit.query(session, AuditFilter(model=model))
    assert [e.study_uid for e in events] == expected
    assert all(e.action == "inference.completed" for e in events)


def test_by_time_range_since_inclusive_until_exclusive(db, history):
    day2 = actions(db, since=DAY2, until=DAY2 + timedelta(days=1))
    assert day2[0] == "instance.received" and "study.skipped" in day2
    assert "association.rejected" not in day2
    assert actions(db, until=DAY1 + timedelta(hours=9, minutes=59)) == []
    assert actions(
        db, since=DAY1 + timedelta(hours=12), until=DAY1 + timedelta(hours=12, seconds=1)
    ) == ["association.rejected"]


def test_filters_combine_and_limit_keeps_the_newest(db, history):
    assert actions(db, patient_id="P1", outcome="failure") == ["result.send_failed"]
    assert actions(db, study_uid=STUDY_A.study_uid, limit=2) == ["result.sent", "study.done"]


def test_timeline_by_uid_or_accession_tells_what_happened(db, history):
    with db.transaction() as session:
        by_uid = queries.study_timeline(session, STUDY_A.study_uid)
        by_accession = queries.study_timeline(session, STUDY_A.accession)
        missing = queries.study_timeline(session, "9.9.9")
    assert missing is None
    assert [e.id for e in by_uid.events] == [e.id for e in by_accession.events]
    study = by_uid.study
    assert (study.state, study.instances, study.processable) == (StudyState.DONE, 2, 2)
    (run,) = study.runs
    assert run.state == "done" and run.model_id == REFERENCE
    assert [(f.name, f.probability) for f in run.present] == [("Effusion", 0.81)]
    assert run.results == {"sent": 2}
    assert study.turnaround_s == pytest.approx(30.0)
    assert [e.action for e in by_uid.events][0] == "hl7.received"


def test_timeline_of_a_failed_study_says_why(db, history):
    with db.transaction() as session:
        timeline = queries.study_timeline(session, STUDY_B.study_uid)
    assert timeline.study.state == StudyState.FAILED
    assert timeline.study.runs[0].error == "no image of the study could be decoded"
    assert timeline.events[-1].detail["reason"] == "no image of the study could be decoded"


def test_recent_studies_newest_first_with_findings(db, history):
    with db.transaction() as session:
        recent = queries.recent_studies(session, limit=10)
        only_p1 = queries.recent_studies(session, key="P1")
    assert [s.study_uid for s in recent] == [
        STUDY_D.study_uid,
        STUDY_C.study_uid,
        STUDY_B.study_uid,
        STUDY_A.study_uid,
    ]
    assert recent[0].state == StudyState.SKIPPED and recent[0].processable == 0
    assert recent[1].latest.model_id == OTHER and recent[1].latest.present == []
    assert recent[1].latest.findings[0].name == "Effusion"
    assert [s.study_uid for s in only_p1] == [STUDY_C.study_uid, STUDY_A.study_uid]


def test_stats_counts_per_outcome_per_day(db, history):
    with db.transaction() as session:
        result = queries.stats(session, since=None, until=None)
    day1, day2 = result.days
    assert day1.day == DAY1.date().isoformat() and day2.day == DAY2.date().isoformat()
    assert (day1.success, day1.warning, day1.failure) == (10, 0, 2)
    assert (day1.studies_received, day1.studies_done, day1.jobs_failed) == (2, 1, 1)
    assert (day2.success, day2.warning, day2.failure) == (7, 2, 1)
    assert (day2.studies_received, day2.studies_done, day2.sends_failed) == (2, 1, 1)
    assert result.failures_by_action == {
        "association.rejected": 1,
        "job.failed": 1,
        "result.send_failed": 1,
    }


def test_stats_turnaround_percentiles(db, history):
    with db.transaction() as session:
        both = queries.stats(session, since=None, until=None)
        day2 = queries.stats(session, since=DAY2, until=None)
    # A: received 10:00:00, queued 10:00:10, done 10:00:30. C: 09:00:00, 09:00:10, 09:01:00.
    assert both.turnaround_s.count == 2
    assert both.turnaround_s.p50 == pytest.approx(45.0)
    assert both.turnaround_s.p90 == pytest.approx(57.0)
    assert both.turnaround_s.max == pytest.approx(60.0)
    assert both.processing_s.p50 == pytest.approx(35.0)
    assert (day2.turnaround_s.count, day2.turnaround_s.p50) == (1, pytest.approx(60.0))
    assert [d.day for d in day2.days] == [DAY2.date().isoformat()]


def test_queue_health_without_identifiers(db, history):
    with db.transaction() as session:
        health = queries.queue_health(session)
    assert health.jobs == {"queued": 0, "running": 0, "sending": 0}
    assert health.jobs_failed == 1
    assert health.outbox_pending == 0
    assert health.studies == {"done": 2, "failed": 1, "skipped": 1}
    assert health.last_study_state == StudyState.SKIPPED
    assert queries.iso_utc(health.last_study_received_at) == "2026-03-03T10:00:00.000Z"
    assert health.audit_chain_seq > 20
    text = str(queries.to_json(health))
    for identifier in ("ACC", "1.2.826", "P1"):
        assert identifier not in text


def test_to_json_is_plain_data(db, history):
    import json

    with db.transaction() as session:
        timeline = queries.study_timeline(session, STUDY_A.study_uid)
        data = queries.to_json(timeline)
    json.dumps(data)
    assert data["study"]["runs"][0]["present"][0]["name"] == "Effusion"
    assert data["events"][0]["time"] == "2026-03-02T09:59:00.000Z"
