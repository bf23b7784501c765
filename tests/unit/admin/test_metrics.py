"""``/metrics``: the collector over a real database (SQLite and PostgreSQL) holding rows written
the way the node writes them, and the endpoint on a real uvicorn server over loopback."""

from __future__ import annotations

import http.client
from datetime import timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from unit.admin.history import DAY2, OTHER, REFERENCE, STUDY_A, STUDY_C, History, StudyIds

from node.admin.metrics import registry
from node.admin.server import AdminServer
from node.config import Destination, Settings
from node.metrics import NodeMetrics
from node.refusals import RefusalAudit
from storage import audit, jobs, outbox
from storage.audit import Outcome
from storage.database import Database
from storage.run_summary import InferenceCompleted, RunSummary
from storage.schema import Job, JobState, Study

TOKEN = "test-token-0123456789abcdef"
ORTHANC = "ORTHANC@127.0.0.1:4242"
SETTINGS = Settings(destinations=(Destination.parse(ORTHANC),), node_name="scraper")


def scrape(metrics: NodeMetrics) -> dict[tuple[str, tuple], float]:
    """What Prometheus would read: sample (name, sorted labels) -> value, parsed back from the
    exposition text by prometheus_client's own parser."""
    text = generate_latest(registry(metrics)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counts_and_latencies_of_a_recorded_history(db, history):
    samples = scrape(NodeMetrics(db, SETTINGS))
    assert value(samples, "cxrnode_database_up") == 1
    assert value(samples, "cxrnode_studies", state="done") == 2
    assert value(samples, "cxrnode_studies", state="failed") == 1
    assert value(samples, "cxrnode_studies", state="skipped") == 1
    assert value(samples, "cxrnode_instances_received_total") == 5
    assert value(samples, "cxrnode_runs_failed_total") == 1
    assert value(samples, "cxrnode_studies_done_total") == 2
    assert value(samples, "cxrnode_runs_completed_total", model=REFERENCE) == 1
    assert value(samples, "cxrnode_runs_completed_total", model=OTHER) == 1
    assert value(samples, "cxrnode_delivery_failures_total", destination=ORTHANC) == 1
    assert value(samples, "cxrnode_results_abandoned_total", destination=ORTHANC) == 0
    assert value(samples, "cxrnode_associations_refused_total", reason="rejected") == 1
    queued = {"action": "study.queued", "outcome": "success"}
    assert value(samples, "cxrnode_audit_events_total", **queued) == 3
    # Study A: last image 10:00:00, done 10:00:30, queued 10:00:10; study C: 09:00:00,
    # 09:01:00, 09:00:10 (what `cxrnode audit stats` reports for them).
    assert value(samples, "cxrnode_end_to_end_seconds_count") == 2
    assert value(samples, "cxrnode_end_to_end_seconds_sum") == pytest.approx(90)
    assert value(samples, "cxrnode_end_to_end_seconds_bucket", le="30.0") == 1
    assert value(samples, "cxrnode_end_to_end_seconds_bucket", le="60.0") == 2
    assert value(samples, "cxrnode_processing_seconds_sum") == pytest.approx(70)
    assert value(samples, "cxrnode_jobs", state="queued") == 0
    assert value(samples, "cxrnode_node_info", node="scraper", role="all", ae_title="CXRNODE") == 1


def test_a_scrape_adds_only_what_happened_since_and_a_restart_reads_the_same_totals(db, history):
    first = NodeMetrics(db, SETTINGS)
    before = scrape(first)
    later = StudyIds("1.2.826.1.9", "ACC9", "P9")
    history.receive(later, DAY2 + timedelta(hours=11), n=3)
    job = history.run(later, DAY2 + timedelta(hours=11, seconds=10), REFERENCE, 0.7)
    history.deliver(later, job, DAY2 + timedelta(hours=11, seconds=40))
    after = scrape(first)
    assert value(after, "cxrnode_instances_received_total") == 5 + 3
    assert value(after, "cxrnode_studies_done_total") == 2 + 1
    assert value(after, "cxrnode_end_to_end_seconds_count") == 3
    assert value(after, "cxrnode_end_to_end_seconds_sum") == pytest.approx(90 + 40)
    assert value(after, "cxrnode_runs_completed_total", model=REFERENCE) == 2
    done_before = value(before, "cxrnode_studies", state="done")
    assert value(after, "cxrnode_studies", state="done") == done_before + 1
    # A scrape with nothing new changes no counter.
    assert _counters(scrape(first)) == _counters(after)
    # A process started now (a restart, or a worker beside the receiver) folds the same log.
    assert _counters(scrape(NodeMetrics(db, SETTINGS))) == _counters(after)


def test_a_collector_warmed_up_at_start_reports_what_a_cold_one_does(db, history):
    warmed = NodeMetrics(db, SETTINGS)
    warmed.catch_up()  # what the admin app's warm-up thread does
    later = StudyIds("1.2.826.1.10", "ACC10", "P10")
    history.receive(later, DAY2 + timedelta(hours=13))
    assert _counters(scrape(warmed)) == _counters(scrape(NodeMetrics(db, SETTINGS)))
    assert value(scrape(warmed), "cxrnode_instances_received_total") == 6


def _counters(samples):
    return {
        key: v
        for key, v in samples.items()
        if key[0].startswith("cxrnode_")
        and key[0].endswith(("_total", "_bucket", "_count", "_sum"))
    }


def test_queue_depth_and_the_age_of_the_oldest_queued_run_and_pending_result(db, history):
    sending = StudyIds("1.2.826.1.21", "ACC21", "P21")
    waiting = StudyIds("1.2.826.1.20", "ACC20", "P20")
    at = DAY2 + timedelta(hours=12)
    history.receive(sending, at)
    history.receive(waiting, at)
    # One run is done inferring, its results waiting for a PACS that is down ...
    job = history.run(sending, at, REFERENCE, 0.9)
    with db.transaction() as session:
        for item in session.get(Job, job).outbox:
            item.created_at = at + timedelta(minutes=6)
        # ... and one waits for a worker.
        study = session.query(Study).filter_by(study_uid=waiting.study_uid).one()
        jobs.queue_run(session, study).created_at = at
    now = at + timedelta(minutes=10)
    samples = scrape(NodeMetrics(db, SETTINGS, clock=now.timestamp))
    assert value(samples, "cxrnode_jobs", state="queued") == 1
    assert value(samples, "cxrnode_jobs", state="sending") == 1
    assert value(samples, "cxrnode_queue_oldest_job_age_seconds") == pytest.approx(600)
    assert value(samples, "cxrnode_results_pending", destination=ORTHANC) == 2
    assert value(
        samples, "cxrnode_results_oldest_pending_age_seconds", destination=ORTHANC
    ) == pytest.approx(240)


def test_run_stages_come_from_the_timings_the_worker_stored(db, history):
    timings = {"decode_s": 0.004, "inference_s": 0.2, "gradcam_s": 0.3, "build_s": 1.2}
    with db.transaction() as session:
        summary = RunSummary(text="none", reason="first", batch_studies=1, timings=timings)
        for run in (1, 2):
            audit.record(
                session,
                "inference.completed",
                **STUDY_A.ids,
                detail=InferenceCompleted(run, REFERENCE, summary).to_json(),
            )
    samples = scrape(NodeMetrics(db, SETTINGS))
    assert value(samples, "cxrnode_run_stage_seconds_count", stage="inference") == 2
    assert value(samples, "cxrnode_run_stage_seconds_sum", stage="build") == pytest.approx(2.4)
    assert value(samples, "cxrnode_run_stage_seconds_bucket", stage="decode", le="0.005") == 2
    assert value(samples, "cxrnode_run_stage_seconds_bucket", stage="gradcam", le="0.25") == 0
    assert value(samples, "cxrnode_run_stage_seconds_bucket", stage="gradcam", le="0.5") == 2


def test_refused_associations_count_every_refusal_a_windowed_row_stands_for(db):
    refusals = RefusalAudit(db, window_s=3600)
    for _ in range(7):
        refusals.record("association.rejected", "10.9.9.9", {"reason": "calling AE not allowed"})
    refusals.flush()
    samples = scrape(NodeMetrics(db, SETTINGS))
    rows = {"action": "association.rejected", "outcome": "failure"}
    assert value(samples, "cxrnode_audit_events_total", **rows) == 2  # the first, then the rest
    assert value(samples, "cxrnode_associations_refused_total", reason="rejected") == 7


def test_delivery_failures_and_abandoned_results_per_destination(db, history):
    backup = "BACKUP@10.0.0.9:104"
    with db.transaction() as session:
        for destination, action in (
            (backup, "result.send_failed"),
            (backup, "result.send_failed"),
            (backup, "result.abandoned"),
            (ORTHANC, "result.sent"),
        ):
            audit.record(
                session, action, Outcome.FAILURE, **STUDY_C.ids, detail={"destination": destination}
            )
    samples = scrape(NodeMetrics(db, SETTINGS))
    assert value(samples, "cxrnode_delivery_failures_total", destination=backup) == 2
    assert value(samples, "cxrnode_delivery_failures_total", destination=ORTHANC) == 1
    assert value(samples, "cxrnode_results_abandoned_total", destination=backup) == 1
    assert value(samples, "cxrnode_results_sent_total", destination=ORTHANC) == 1


def test_model_info_names_the_model_of_each_nodes_latest_run(database_url):
    workers = {name: Database(database_url, node_name=name) for name in ("gpu-1", "gpu-2")}
    workers["gpu-1"].create_schema()
    h = History(workers["gpu-1"])
    runs = (("gpu-1", REFERENCE), ("gpu-2", REFERENCE), ("gpu-1", OTHER))
    for n, (node, model) in enumerate(runs):
        who = StudyIds(f"1.2.826.2.{n}", f"M{n}", f"PM{n}")
        h.receive(who, DAY2 + timedelta(minutes=n))
        with workers[node].transaction() as session:
            study = session.query(Study).filter_by(study_uid=who.study_uid).one()
            jobs.queue_run(session, study)
        with workers[node].transaction() as session:
            job = jobs.claim_next(session)
            job.state, job.model_id = JobState.SENDING, model
            outbox.add(session, job.id, ORTHANC, "SR", f"9.{n}", "p")
            audit.record(
                session,
                "inference.completed",
                **who.ids,
                detail=InferenceCompleted(job.run, model, RunSummary()).to_json(),
            )
    samples = scrape(NodeMetrics(workers["gpu-2"], SETTINGS))
    models = [dict(labels) for name, labels in samples if name == "cxrnode_model_info"]
    assert {m["node"]: m["model"] for m in models} == {"gpu-1": OTHER, "gpu-2": REFERENCE}
    for worker in workers.values():
        worker.dispose()


def test_a_database_that_cannot_be_read_is_database_up_0(tmp_path):
    unmade = Database(f"sqlite:///{tmp_path / 'never-created.db'}")  # no tables
    samples = scrape(NodeMetrics(unmade, SETTINGS))
    assert value(samples, "cxrnode_database_up") == 0
    assert not any(name == "cxrnode_studies" for name, _ in samples)
    unmade.dispose()


def test_the_example_alert_rules_use_only_metrics_the_node_exports(db, history):
    import re
    from pathlib import Path

    import yaml

    rules = Path(__file__).resolve().parents[3] / "docker" / "prometheus-alerts.yaml"
    groups = yaml.safe_load(rules.read_text())["groups"]
    used = {
        name
        for group in groups
        for rule in group["rules"]
        for name in re.findall(r"\b(cxrnode_\w+)", rule["expr"])
    }
    # The series a family may have, with samples or not yet (a labelled one before its first).
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    text = generate_latest(registry(NodeMetrics(db, SETTINGS))).decode()
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes[family.type]
    }
    assert used and used <= exported, used - exported
    assert all(rule["labels"]["severity"] for group in groups for rule in group["rules"])


# The endpoint --------------------------------------------------------------------------------


def get(port: int, path: str, token: str | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, response.getheader("content-type", ""), body


@pytest.fixture
def serve(db):
    servers = []

    def start(**settings) -> int:
        server = AdminServer(Settings(admin_token=TOKEN, **settings), db, port=0).start()
        servers.append(server)
        return server.port

    yield start
    for server in servers:
        server.stop()


def test_metrics_need_the_token_by_default_and_a_refused_scrape_is_audited(serve, db, history):
    port = serve()
    status, _, body = get(port, "/metrics")
    assert status == 401 and "cxrnode_" not in body
    status, content_type, body = get(port, "/metrics", TOKEN)
    assert status == 200 and content_type.startswith("text/plain; version=")
    families = {f.name for f in text_string_to_metric_families(body)}
    assert {"cxrnode_studies", "cxrnode_instances_received", "process_cpu_seconds"} <= families
    with db.reading() as session:
        refused = audit.query(session, audit.AuditFilter(action="admin.auth_failed"))
        scrapes = audit.query(session, audit.AuditFilter(action="admin.query"))
    assert [e.detail["path"] for e in refused] == ["/metrics"]
    assert scrapes == []  # no patient data left: not an access


def test_prometheus_asking_for_openmetrics_gets_it(serve, history):
    port = serve()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        "GET",
        "/metrics",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/openmetrics-text"},
    )
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.getheader("content-type").startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF") and "cxrnode_instances_received_total 5.0" in body


def test_metrics_open_when_the_setting_says_so(serve, history):
    port = serve(metrics_require_token=False)
    status, _, body = get(port, "/metrics")
    assert status == 200 and "cxrnode_instances_received_total 5.0" in body
    assert get(port, "/api/audit")[0] == 401  # the rest of the API is as closed as ever
