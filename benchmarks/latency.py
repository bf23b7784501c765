"""End-to-end latency: real chest DICOMs sent by a real Orthanc through the node, one study at a
time; time from the last instance received to the SR stored in Orthanc (the node's audit log
records both: ``instance.received`` and the ``result.sent`` Orthanc confirmed).

    .venv/bin/python benchmarks/latency.py [--studies 10] [--stable-age 10] [--pairing-window 0]

The node runs on its defaults except: no report feed (``hl7_port = 0``) and a pairing window of
0 s, so a study runs image-only as soon as it is stable instead of waiting the default 300 s for
a report that never comes. The stable age (default 10 s, the node's default) is part of the
figure: a study is processed only once no instance arrived for that long.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node.orthanc import Modality, Orthanc, free_port  # noqa: E402

SHARED = Path(os.environ.get("CXRNODE_SHARED_DATA", REPO.parent / "shared" / "data"))


def chest_files() -> list[Path]:
    return sorted((SHARED / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))


def renamed(path: Path) -> tuple[str, bytes]:
    """The file as a new study: fresh Study/Series/SOP Instance UIDs, same pixels."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return ds.StudyInstanceUID, buffer.getvalue()


def study_state(db_path: Path, study_uid: str) -> str | None:
    """The node's state of a study, read from its SQLite file (read-only)."""
    if not db_path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
    return row[0] if row else None


def node_env(
    workdir: Path, port: int, stable_age_s: float, pairing_window_s: float, **extra: str
) -> dict[str, str]:
    """The environment of a benchmarked node: loopback SCP, SQLite file and data under
    ``workdir/node``, no report feed and no admin API; ``extra`` adds CXRNODE_* settings."""
    return {
        **os.environ,
        "CXRNODE_DICOM_HOST": "127.0.0.1",
        "CXRNODE_DICOM_PORT": str(port),
        "CXRNODE_DATA_DIR": str(workdir / "node"),
        "CXRNODE_DB_URL": f"sqlite:///{workdir / 'node' / 'cxrnode.db'}",
        "CXRNODE_STABLE_AGE_S": str(stable_age_s),
        "CXRNODE_PAIRING_WINDOW_S": str(pairing_window_s),
        "CXRNODE_HL7_PORT": "0",
        "CXRNODE_ADMIN_PORT": "0",
        "PYTHONPATH": str(REPO),
        **extra,
    }


def wait_echo(port: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ae = AE(ae_title="ORTHANC")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.3)
    raise SystemExit("node did not start")


def audit(env: dict, workdir: Path, *args: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "node.cli", "audit", "--format", "json", "--limit", "0", *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def seconds(a: str, b: str) -> float:
    parse = lambda t: datetime.fromisoformat(t.rstrip("Z"))  # noqa: E731
    return (parse(b) - parse(a)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--stable-age", type=float, default=10.0)
    parser.add_argument("--pairing-window", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="per study, seconds")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cxrnode-latency-"))
    db_path = workdir / "node" / "cxrnode.db"
    node_port = free_port()
    orthanc = Orthanc(workdir / "orthanc", [Modality("cxrnode", "CXRNODE", "127.0.0.1", node_port)])
    env = node_env(workdir, node_port, args.stable_age, args.pairing_window)
    with orthanc:
        env["CXRNODE_DESTINATIONS"] = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        log = open(workdir / "node.log", "wb")  # noqa: SIM115
        node = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve"],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_echo(node_port)
            files = chest_files()
            for n in range(args.studies):
                study_uid, data = renamed(files[n % len(files)])
                uploaded = orthanc.upload(data)
                orthanc.send_study("cxrnode", uploaded["ParentStudy"])
                # One study at a time: the next is sent once every result of this one was
                # confirmed (the node's study state "done"), so runs never overlap.
                deadline = time.monotonic() + args.timeout
                while (state := study_state(db_path, study_uid)) != "done":
                    if state in ("failed", "skipped") or node.poll() is not None:
                        raise SystemExit(f"study {n + 1}: {state}; see {log.name}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"study {n + 1}: not done in time; see {log.name}")
                    time.sleep(0.1)
        finally:
            node.terminate()
            node.wait(timeout=60)

    received = {
        e["study_uid"]: e["time"] for e in audit(env, workdir, "--action", "instance.received")
    }
    queued = {e["study_uid"]: e["time"] for e in audit(env, workdir, "--action", "study.queued")}
    inferred = {e["study_uid"]: e for e in audit(env, workdir, "--action", "inference.completed")}
    sr_sent = {}
    for e in audit(env, workdir, "--action", "result.sent"):
        if e["detail"]["kind"] == "SR":
            sr_sent[e["study_uid"]] = e["time"]
    total, processing, stages = [], [], {}
    for study, t_received in received.items():
        total.append(seconds(t_received, sr_sent[study]))
        processing.append(seconds(queued[study], sr_sent[study]))
        for stage, value in inferred[study]["detail"]["timings"].items():
            stages.setdefault(stage, []).append(value)

    print(f"studies: {len(total)} (RSNA chest CR 1024x1024 JPEG baseline)")
    print(f"stable age: {args.stable_age} s (a study waits this long after its last instance)")
    print(f"pairing window: {args.pairing_window} s (no report feed: image-only runs)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    summarize("last instance received -> SR stored in Orthanc", total)
    summarize("study queued (stable) -> SR stored in Orthanc", processing)
    for stage, values in stages.items():
        print(f"  {stage:<12} median {statistics.median(values) * 1000:7.1f} ms")


def summarize(label: str, values: list[float]) -> None:
    p95 = (
        statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]
    )
    print(f"{label}: median {statistics.median(values):.3f} s, p95 {p95:.3f} s")


if __name__ == "__main__":
    main()
