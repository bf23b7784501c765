"""Scrape time of ``/metrics`` as the database grows: cold (a process's first scrape folds the
whole audit log), warm (nothing new since the previous scrape) and after a few new studies.

Builds a SQLite database the way the node writes it (instance, run, inference summary with
timings, four result objects sent, study done, each with its audit events; a share of runs
with a failed send first), then times the collector's scrapes through prometheus_client's
exposition, as the endpoint serves them.

    .venv/bin/python benchmarks/metrics_scrape.py [--jobs 10000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prometheus_client import generate_latest  # noqa: E402

from node.admin.metrics import registry  # noqa: E402
from node.config import Destination, Settings  # noqa: E402
from node.metrics import NodeMetrics  # noqa: E402
from storage import audit, jobs, outbox  # noqa: E402
from storage.audit import Outcome  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.run_summary import ImageSummary, InferenceCompleted, RunSummary  # noqa: E402
from storage.schema import AuditEvent, Job, utcnow  # noqa: E402
from storage.studies import InstanceHeader, add_instance  # noqa: E402

DESTINATION = "PACS@10.0.0.1:104"
MODEL = "cxrnode-abnormal-pneumonia@2.1.0+0123456789ab"
TIMINGS = {
    "decode_s": 0.001,
    "preprocess_s": 0.02,
    "inference_s": 0.03,
    "gradcam_s": 0.04,
    "build_s": 0.12,
    "database_s": 0.006,
}


def record_studies(db: Database, first: int, count: int) -> None:
    """``count`` studies received, run and delivered, as the node records them."""
    with db.transaction() as session:
        for n in range(first, first + count):
            uid = f"1.2.826.0.1.3680043.10.9.{n}"
            ids = {"study_uid": uid, "accession": f"A{n}", "patient_id": f"P{n % 997}"}
            header = InstanceHeader(
                sop_uid=f"{uid}.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                study_uid=uid,
                series_uid=f"{uid}.100",
                modality="CR",
                patient_id=ids["patient_id"],
                accession=ids["accession"],
                transfer_syntax="1.2.840.10008.1.2.1",
                view="frontal",
                processable=True,
                skip_reason=None,
            )
            instance = add_instance(
                session, header, relpath=f"{n}.dcm", size=1000, sha256="0", calling_ae="PACS"
            )
            audit.record(session, "instance.received", **ids, sop_uid=header.sop_uid)
            job = jobs.queue_run(session, instance.study)
            session.flush()
            audit.record(session, "study.queued", **ids, detail={"run": job.run})
            job.state, job.model_id = "sending", MODEL
            image = ImageSummary.of(
                header.sop_uid, {"Abnormal": 0.8, "Pneumonia": 0.3}, ["Abnormal"]
            )
            summary = RunSummary((image,), text="none", reason="first", timings=TIMINGS)
            job.result = summary.to_json()
            audit.record(
                session,
                "inference.completed",
                **ids,
                detail=InferenceCompleted(job.run, MODEL, summary).to_json(),
            )
            items = [
                outbox.add(session, job.id, DESTINATION, kind, f"{uid}.{kind}{i}", "p")
                for i, kind in enumerate(("SR", "GSPS", "SC", "SC"))
            ]
            session.flush()
            for item in items:
                kind = item.kind
                if n % 10 == 0 and kind == "SR":
                    outbox.mark_attempt_failed(item, "refused", timedelta(seconds=5))
                    audit.record(
                        session,
                        "result.send_failed",
                        Outcome.FAILURE,
                        **ids,
                        detail={"destination": DESTINATION, "error": "refused", "attempt": 1},
                    )
                outbox.mark_sent(item)
                detail = {"destination": DESTINATION, "kind": kind, "run": job.run}
                audit.record(session, "result.sent", **ids, detail=detail)
            session.flush()
            job.state, job.updated_at = "done", utcnow()
            job.study.state = "done"
            audit.record(session, "study.done", **ids, detail={"run": job.run})


def timed_scrape(metrics) -> float:
    clock = time.perf_counter()
    generate_latest(metrics)
    return time.perf_counter() - clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--warm-scrapes", type=int, default=20)
    parser.add_argument(
        "--database", type=Path, help="keep the database here, and reuse it when it exists"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.database or Path(tmp) / "cxrnode.db"
        built = path.exists()
        db = Database(f"sqlite:///{path}")
        db.create_schema()
        clock = time.perf_counter()
        if built:
            with db.reading() as session:
                args.jobs = session.query(Job).count()
        for first in range(0, 0 if built else args.jobs, 250):
            record_studies(db, first, min(250, args.jobs - first))
        with db.reading() as session:
            events = session.query(AuditEvent).count()
        print(
            f"database: {args.jobs} jobs, {events} audit events, built in "
            f"{time.perf_counter() - clock:.0f} s"
        )
        settings = Settings(destinations=(Destination.parse(DESTINATION),), node_name="bench")
        metrics = registry(NodeMetrics(db, settings))
        cold = timed_scrape(metrics)
        warm = [timed_scrape(metrics) for _ in range(args.warm_scrapes)]
        record_studies(db, args.jobs, 10)
        after_ten = timed_scrape(metrics)
        print(f"first scrape of a process (folds the whole log): {cold * 1000:.0f} ms")
        print(
            f"scrape, nothing new: median {statistics.median(warm) * 1000:.1f} ms, "
            f"max {max(warm) * 1000:.1f} ms ({len(warm)} scrapes)"
        )
        print(f"scrape after 10 new studies: {after_ten * 1000:.1f} ms")
        db.dispose()


if __name__ == "__main__":
    main()
