"""The typed run summary: the JSON the worker stores in ``jobs.result`` and in the
``inference.completed`` detail, read back by the queries, the pages and ``cxrnode audit``; rows of
older versions read back on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import timedelta

from unit.admin.history import DAY1, STUDY_A, History

from node.admin import render
from storage import audit, jobs, queries
from storage.run_summary import Finding, ImageSummary, InferenceCompleted, RunSummary
from storage.schema import JobState, Study

# What the first version (the walking skeleton) wrote: no text, reason or batch_studies yet.
FIRST_VERSION_RESULT = {
    "images": [
        {
            "sop_uid": "1.2.826.1.1.0",
            "probabilities": {"Effusion": 0.7312, "Nodule": 0.1},
            "present": ["Effusion"],
        },
        {"sop_uid": "1.2.826.1.1.1", "probabilities": {"Effusion": 0.2, "Nodule": 0.4}},
    ],
    "unreadable": 1,
    "timings": {"decode_s": 0.25, "inference_s": 1.5},
}


def summary() -> RunSummary:
    return RunSummary(
        images=(
            ImageSummary.of("1.2.3.1", {"Effusion": 0.812345, "Nodule": 0.05}, ["Effusion"]),
            ImageSummary.of("1.2.3.2", {"Effusion": 0.3, "Nodule": 0.612349}, iter(["Nodule"])),
        ),
        unreadable=0,
        text="hl7",
        reason="late_report",
        batch_studies=3,
        timings={"inference_s": 0.123456, "build_s": 2.0},
    )


def test_the_stored_json_keeps_the_keys_order_and_rounding_of_the_worker():
    # The exact shape older admins and the benchmarks read: it must not drift.
    assert summary().to_json() == {
        "images": [
            {
                "sop_uid": "1.2.3.1",
                "probabilities": {"Effusion": 0.8123, "Nodule": 0.05},
                "present": ["Effusion"],
            },
            {
                "sop_uid": "1.2.3.2",
                "probabilities": {"Effusion": 0.3, "Nodule": 0.6123},
                "present": ["Nodule"],
            },
        ],
        "unreadable": 0,
        "text": "hl7",
        "reason": "late_report",
        "batch_studies": 3,
        "timings": {"inference_s": 0.1235, "build_s": 2.0},
    }
    assert list(summary().to_json()) == [
        "images",
        "unreadable",
        "text",
        "reason",
        "batch_studies",
        "timings",
    ]


def test_json_reads_back_as_the_same_summary():
    stored = summary().to_json()
    assert RunSummary.from_json(stored).to_json() == stored
    event = InferenceCompleted(2, "model@1", summary())
    detail = event.to_json()
    assert list(detail)[:2] == ["run", "model"] and detail["images"] == stored["images"]
    assert InferenceCompleted.from_json(detail).to_json() == detail


def test_findings_present_first_then_highest_probability_over_the_images():
    assert summary().findings == [
        Finding("Effusion", 0.8123, True),
        Finding("Nodule", 0.6123, True),
    ]
    only_absent = RunSummary.from_json({"images": [{"probabilities": {"A": 0.2, "B": 0.4}}]})
    assert only_absent.findings == [Finding("B", 0.4, False), Finding("A", 0.2, False)]


def test_a_run_without_result_and_keys_of_a_newer_version_read_without_error():
    assert RunSummary.from_json(None) == RunSummary()
    assert RunSummary.from_json(None).findings == []
    newer = {**summary().to_json(), "calibration": {"method": "isotonic"}}
    newer["images"][0]["heatmap_sha256"] = "ab"
    assert RunSummary.from_json(newer) == RunSummary.from_json(summary().to_json())


def test_a_first_version_summary_reads_with_what_it_did_not_record_as_none():
    read = RunSummary.from_json(FIRST_VERSION_RESULT)
    assert (read.text, read.reason, read.batch_studies) == (None, None, None)
    assert read.unreadable == 1 and read.timings == {"decode_s": 0.25, "inference_s": 1.5}
    assert read.images[1].present == ()
    assert read.findings == [Finding("Effusion", 0.7312, True), Finding("Nodule", 0.4, False)]


def test_a_stored_first_version_row_shows_in_the_timeline_and_the_audit_line(db):
    History(db).receive(STUDY_A, DAY1, n=2)
    with db.transaction() as session:
        study = session.query(Study).filter_by(study_uid=STUDY_A.study_uid).one()
        job = jobs.queue_run(session, study)
        job.state, job.model_id = JobState.SENDING, "old-model@0.1.0"
        job.result = FIRST_VERSION_RESULT
        event = audit.record(
            session,
            "inference.completed",
            **STUDY_A.ids,
            detail={"run": 1, "model": "old-model@0.1.0", **FIRST_VERSION_RESULT},
        )
        event.time = DAY1 + timedelta(seconds=5)
    with db.reading() as session:
        timeline = queries.study_timeline(session, STUDY_A.accession)
    (run,) = timeline.study.runs
    assert run.images == 2
    assert run.present == [Finding("Effusion", 0.7312, True)]
    assert queries.to_json(run)["findings"][1] == {
        "name": "Nodule",
        "probability": 0.4,
        "present": False,
    }
    (inferred,) = [e for e in timeline.events if e.action == "inference.completed"]
    assert render.summarize(inferred.action, inferred.detail) == (
        "run 1, old-model@0.1.0: Effusion 0.73"
    )


def test_the_audit_line_of_a_run_with_nothing_present_names_the_top_two():
    detail = InferenceCompleted(
        1,
        "m@1",
        RunSummary.from_json({"images": [{"probabilities": {"A": 0.2, "B": 0.4, "C": 0.1}}]}),
    ).to_json()
    line = render.summarize("inference.completed", detail)
    assert line == "run 1, m@1: no finding above threshold (top: B 0.40, A 0.20)"
    empty = InferenceCompleted(1, "m@1", RunSummary()).to_json()
    assert render.summarize("inference.completed", empty) == "run 1, m@1: no image result"
