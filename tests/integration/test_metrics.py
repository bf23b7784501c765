"""A real RSNA study through a running node moves its counters on /metrics, read over HTTP
and parsed by prometheus_client's parser, and a restart of the node loses none of them."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.orthanc import free_port
from support.peers import wait_for
from support.rsna import rsna_case_path

pytestmark = pytest.mark.integration

TOKEN = "metrics-token-0123456789"


def scrape(port: int) -> dict[tuple[str, tuple], float] | None:
    """Every sample of /metrics, (name, sorted labels) -> value; None while it does not
    answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def counters(samples) -> dict:
    """The counters and histograms, but the audit log's own rows."""
    return {
        key: v
        for key, v in samples.items()
        if key[0].startswith("cxrnode_")
        and key[0].endswith(("_total", "_count", "_bucket"))
        and key[0] != "cxrnode_audit_events_total"
    }


def test_a_study_through_the_node_moves_the_counters_and_a_restart_keeps_them(
    make_node, orthanc, shared_data
):
    port = free_port()
    node = make_node(admin_port=port, admin_token=TOKEN)
    destination = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    before = wait_for(lambda: scrape(port), 30, "/metrics to answer")
    assert value(before, "cxrnode_database_up") == 1

    source = rsna_case_path(shared_data)
    uploaded = orthanc.upload(source.read_bytes())
    orthanc.send_study("cxrnode", uploaded["ParentStudy"])
    wait_for(lambda: node.audit("--action", "study.done"), 300, "the study to be done")

    after = scrape(port)
    sent = node.audit("--action", "result.sent")
    (completed,) = node.audit("--action", "inference.completed")
    model = completed["detail"]["model"]

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cxrnode_instances_received_total") == 1
    assert moved("cxrnode_studies_done_total") == 1
    assert moved("cxrnode_results_sent_total", destination=destination) == len(sent) >= 2
    assert moved("cxrnode_delivery_failures_total", destination=destination) == 0
    assert moved("cxrnode_runs_completed_total", model=model) == 1
    assert moved("cxrnode_run_stage_seconds_count", stage="inference") == 1
    assert moved("cxrnode_end_to_end_seconds_count") == 1
    assert moved("cxrnode_processing_seconds_count") == 1
    assert value(after, "cxrnode_end_to_end_seconds_sum") > 0
    assert value(after, "cxrnode_studies", state="done") == 1
    assert value(after, "cxrnode_jobs", state="queued") == 0
    assert value(after, "cxrnode_results_pending", destination=destination) == 0
    models = [dict(labels) for name, labels in after if name == "cxrnode_model_info"]
    assert [m["model"] for m in models] == [model]

    node.stop()
    node.start()
    again = wait_for(lambda: scrape(port), 60, "/metrics to answer after the restart")
    assert counters(again) == counters(after)
    # The restart and the audit queries above are events themselves: those only grew.
    events = [key for key in after if key[0] == "cxrnode_audit_events_total"]
    assert all(again[key] >= after[key] for key in events)
    assert value(again, "cxrnode_audit_events_total", action="node.stopped", outcome="success") == 1


def test_a_destination_that_never_answers_shows_as_failures_and_abandoned_results(
    make_node, orthanc, shared_data
):
    port = free_port()
    dead = f"DEAD@127.0.0.1:{free_port()}"  # nothing listens there
    node = make_node(
        admin_port=port,
        admin_token=TOKEN,
        destinations=f"ORTHANC@127.0.0.1:{orthanc.dicom_port},{dead}",
        delivery_give_up_after_s=3,
    )
    uploaded = orthanc.upload(rsna_case_path(shared_data).read_bytes())
    orthanc.send_study("cxrnode", uploaded["ParentStudy"])
    wait_for(lambda: node.audit("--action", "result.abandoned"), 300, "a result abandoned")
    abandoned = node.audit("--action", "result.abandoned")

    samples = scrape(port)
    assert value(samples, "cxrnode_delivery_failures_total", destination=dead) >= len(abandoned)
    assert value(samples, "cxrnode_results_abandoned_total", destination=dead) == len(abandoned)
    live = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    assert value(samples, "cxrnode_results_abandoned_total", destination=live) == 0
    assert value(samples, "cxrnode_studies", state="failed") == 1
    assert value(samples, "cxrnode_studies_done_total") == 0
