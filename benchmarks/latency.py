"""End-to-end latency: real chest DICOMs sent by a real Orthanc through the node, one study at a
time; per study, the time from the study complete (Orthanc released the association) to its SR
and overview capture stored in Orthanc, beside the pure model time for the same image.

    .venv/bin/python benchmarks/latency.py [--studies 10] [--input uncompressed|jpeg]

Times come from the node's audit log: ``study.complete`` (the release), ``study.queued``, the
worker's stage timings in ``inference.completed`` and the ``result.sent`` Orthanc confirmed.
The node runs on its defaults except: no report feed (``hl7_port = 0``) and a pairing window
of 0 s, so a study runs image-only at once instead of waiting 300 s for a report that never
comes. Inputs: ``uncompressed`` is the NIH ChestX-ray14 DX (1024x1024, Implicit VR), ``jpeg``
the RSNA CRs (JPEG baseline). JPEG 2000 decoding is timed apart, on the NIH image compressed
losslessly, because no public sample arrives that way.
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


def node_db_row(db_path: Path, sql: str, *params: object) -> tuple | None:
    """The first row of a query on the node's SQLite file, read-only (None before the node made
    the file): polling this way costs the measured node nothing, unlike `cxrnode audit`."""
    if not db_path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        return db.execute(sql, params).fetchone()


def study_state(db_path: Path, study_uid: str) -> str | None:
    """The node's state of a study."""
    row = node_db_row(db_path, "SELECT state FROM studies WHERE study_uid = ?", study_uid)
    return row[0] if row else None


def start_node(env: dict[str, str], workdir: Path, log) -> subprocess.Popen:
    """``cxrnode serve`` with ``env``, its output to the open file ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve"],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


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
    parser.add_argument("--input", choices=("uncompressed", "jpeg"), default="uncompressed")
    parser.add_argument("--stable-age", type=float, default=10.0)
    parser.add_argument("--pairing-window", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="per study, seconds")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cxrnode-latency-"))
    db_path = workdir / "node" / "cxrnode.db"
    node_port = free_port()
    orthanc = Orthanc(workdir / "orthanc", [Modality("cxrnode", "CXRNODE", "127.0.0.1", node_port)])
    env = node_env(workdir, node_port, args.stable_age, args.pairing_window)
    files = input_files(args.input)
    receive_s = []
    with orthanc:
        env["CXRNODE_DESTINATIONS"] = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        log = open(workdir / "node.log", "wb")  # noqa: SIM115
        node = start_node(env, workdir, log)
        try:
            wait_echo(node_port)
            for n in range(args.studies):
                study_uid, data = renamed(files[n % len(files)])
                uploaded = orthanc.upload(data)
                clock = time.perf_counter()
                orthanc.send_study("cxrnode", uploaded["ParentStudy"])
                receive_s.append(time.perf_counter() - clock)
                # One study at a time: the next is sent once every result of this one was
                # confirmed (the node's study state "done"), so runs never overlap.
                deadline = time.monotonic() + args.timeout
                while (state := study_state(db_path, study_uid)) != "done":
                    if state in ("failed", "skipped") or node.poll() is not None:
                        raise SystemExit(f"study {n + 1}: {state}; see {log.name}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"study {n + 1}: not done in time; see {log.name}")
                    time.sleep(0.05)
        finally:
            node.terminate()
            node.wait(timeout=60)

    def times(action: str) -> dict[str, str]:
        return {e["study_uid"]: e["time"] for e in audit(env, workdir, "--action", action)}

    complete, queued = times("study.complete"), times("study.queued")
    inferred = {e["study_uid"]: e for e in audit(env, workdir, "--action", "inference.completed")}
    sent: dict[str, dict[str, str]] = {}
    for e in audit(env, workdir, "--action", "result.sent"):
        sent.setdefault(e["study_uid"], {})
        kind = e["detail"]["kind"]
        # The overview is the first capture of a study; the SR is sent before it.
        sent[e["study_uid"]].setdefault(kind, e["time"])
    to_sr, to_both, stages = [], [], {"receive_s": receive_s}
    for study, t_complete in complete.items():
        to_sr.append(seconds(t_complete, sent[study]["SR"]))
        to_both.append(seconds(t_complete, max(sent[study]["SR"], sent[study]["SC"])))
        stages.setdefault("assembly_s", []).append(seconds(t_complete, queued[study]))
        for stage, value in inferred[study]["detail"]["timings"].items():
            stages.setdefault(stage, []).append(value)
        stages.setdefault("send_s", []).append(
            seconds(inferred[study]["time"], max(sent[study]["SR"], sent[study]["SC"]))
        )
    model_s = model_time(files[0])

    print(f"studies: {len(to_sr)} one-image studies, {INPUTS[args.input]}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    summarize("study complete (association released) -> SR stored in Orthanc", to_sr)
    summarize("study complete -> SR and overview capture stored in Orthanc", to_both)
    print("breakdown (median per study):")
    for stage, values in stages.items():
        print(f"  {stage.removesuffix('_s'):<12} {statistics.median(values) * 1000:8.1f} ms")
    print(f"pure model time, same image (forward + Grad-CAM, warm): {model_s * 1000:.1f} ms")
    print(f"end-to-end / model time = {statistics.median(to_both) / model_s:.1f}x")
    print(f"JPEG 2000 lossless decode, NIH 1024x1024: {j2k_decode_time() * 1000:.1f} ms")


INPUTS = {
    "uncompressed": "NIH ChestX-ray14 DX 1024x1024 8-bit, Implicit VR Little Endian",
    "jpeg": "RSNA CR 1024x1024, JPEG baseline",
}


def input_files(kind: str) -> list[Path]:
    if kind == "jpeg":
        return chest_files()
    return sorted((SHARED / "nih-chestxray14-dicom-gcp").glob("*.dcm"))


def model_time(path: Path, repeats: int = 10) -> float:
    """Median seconds of the default predictor's forward pass plus Grad-CAM of the top label,
    on the image of ``path`` (what the worker runs for one study)."""
    import numpy as np

    from models.default import bundled_default_package
    from models.package import load_package
    from models.predictor import Predictor
    from models.preprocess import dicom_to_display

    predictor = Predictor(load_package(bundled_default_package()))
    display = dicom_to_display(pydicom.dcmread(path))
    runs = []
    for _ in range(repeats + 1):  # the first is the warm-up
        clock = time.perf_counter()
        (prediction,) = predictor.predict([display])
        top = int(np.argmax(prediction.probabilities))
        predictor.explain_many([display], [[top, *np.flatnonzero(prediction.present)]])
        runs.append(time.perf_counter() - clock)
    return statistics.median(runs[1:])


def j2k_decode_time(repeats: int = 5) -> float:
    """Median seconds to decode the NIH image once compressed as JPEG 2000 lossless."""
    from pydicom.uid import JPEG2000Lossless

    from models.preprocess import decode_pixels

    ds = pydicom.dcmread(input_files("uncompressed")[0])
    ds.compress(JPEG2000Lossless)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    runs = []
    for _ in range(repeats):
        clock = time.perf_counter()
        decode_pixels(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
        runs.append(time.perf_counter() - clock)
    return statistics.median(runs)


def summarize(label: str, values: list[float]) -> None:
    p95 = (
        statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]
    )
    print(f"{label}: median {statistics.median(values):.3f} s, p95 {p95:.3f} s")


if __name__ == "__main__":
    main()
