"""Saturation: studies/s the node sustains with a full queue, beside its two floors.

200 one-image studies (real RSNA chest CRs, new UIDs each) are sent to the node in one go by
dcmtk storescu; the node, on its defaults except a 2 s stable age and no pairing wait, then
works the queue down, writing SR, GSPS and captures back to a real Orthanc. Sustained
throughput = studies / (first study queued -> last study done), read from the audit log.

Floors, measured in the same run on the same files:
- ingest floor: dcmtk storescp (TCP_NODELAY=1, --max-pdu 131072) receiving them, studies/s;
- model floor: the default package's predictor with Grad-CAM on the same images, batch 8.

The builder: its seconds per study in the saturated node (``build_s`` of each run's
``inference.completed``, measured in the builder process), and, from one batch of studies run
through a node worker in this process, what the worker hands the builder per study: the bytes
of the pickled call (job and images, as the process pool sends them) and the build's CPU
seconds alone (the first study, which loads highdicom's tables, left out).

    .venv/bin/python benchmarks/saturation.py [--studies 200] [--handoff-studies 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ingest import Receiver, replicate, send  # noqa: E402
from latency import (  # noqa: E402
    SHARED,
    audit,
    node_db_row,
    node_env,
    seconds,
    start_node,
    wait_echo,
)

from node.orthanc import Modality, Orthanc, free_port  # noqa: E402

PROPOSAL = ["-xy"]  # propose JPEG baseline, the files' own transfer syntax


def model_floor(paths: list[Path], batch: int = 8) -> float:
    """Images/s of the default package's predictor with one Grad-CAM map per image, called as
    the worker calls it: the inputs prepared once for both, the maps left at the model's grid
    (on a predictor without ``prepare``, as older workers did: each call prepares its own)."""
    from models.default import bundled_default_package
    from models.package import load_package
    from models.predictor import Predictor
    from models.preprocess import image_file_to_display

    predictor = Predictor(load_package(bundled_default_package()), device="cpu")
    displays = [image_file_to_display(p) for p in paths[: batch * 4]]
    predictor.predict(displays[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(displays), batch):
        chunk = displays[i : i + batch]
        if hasattr(predictor, "prepare"):
            prepared = predictor.prepare(chunk)
            predictor.predict(prepared)
            predictor.explain_on_grid(prepared, [[0]] * len(chunk))
        else:
            predictor.predict(chunk)
            predictor.explain_many(chunk, [[0]] * len(chunk))
    return len(displays) / (time.perf_counter() - started)


def done_studies(db_path: Path) -> int:
    row = node_db_row(db_path, "SELECT count(*) FROM studies WHERE state = 'done'")
    return row[0] if row else 0


def handoff(paths: list[Path], work: Path) -> tuple[list[int], list[float], list[float]]:
    """Bytes of the pickled builder call, CPU seconds to pickle and unpickle it, and CPU seconds
    of the build, per study, for one batch of one-image studies through a node worker (SQLite,
    real model, builds in this process)."""
    from models.default import bundled_default_package
    from models.package import load_package
    from models.predictor import Predictor
    from node import worker
    from node.build import keep_identifiers_out_of_the_log
    from node.config import Settings
    from storage import jobs
    from storage.database import Database
    from storage.schema import utcnow
    from storage.spool import FileStore
    from storage.studies import InstanceHeader, add_instance, stable_studies

    keep_identifiers_out_of_the_log()  # as the node does
    settings = Settings(data_dir=work / "handoff", build_processes=0, batch_studies=len(paths))
    db = Database(settings.database_url)
    db.create_schema()
    spool = FileStore(work / "handoff" / "spool")
    predictor = Predictor(load_package(bundled_default_package()), device="cpu")
    node = worker.Worker(settings, db, spool, FileStore(work / "handoff" / "results"), predictor)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        relpath = f"{ds.StudyInstanceUID}/{path.name}"
        spool.write(relpath, path.read_bytes())
        header = InstanceHeader(
            sop_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            modality=str(ds.Modality),
            patient_id=str(ds.PatientID),
            accession=None,
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            view="frontal",
            processable=True,
            skip_reason=None,
        )
        with db.transaction() as session:
            add_instance(session, header, relpath=relpath, size=0, sha256="0", calling_ae="X")
            (study,) = [
                s for s in stable_studies(session, utcnow()) if s.study_uid == header.study_uid
            ]
            jobs.queue_run(session, study)
    sizes, times, handing = [], [], []
    build = worker.build_in_process

    def measured(*args):
        # What a builder process is sent: the pool pickles the function and its arguments.
        cpu = time.thread_time()
        sent = ForkingPickler.dumps((build, args))
        ForkingPickler.loads(sent)
        handing.append(time.thread_time() - cpu)
        sizes.append(len(sent))
        # CPU seconds, which other load on a shared machine disturbs less than wall time.
        cpu = time.thread_time()
        built, build_s = build(*args)
        times.append(time.thread_time() - cpu)
        return built, build_s

    worker.build_in_process = measured
    try:
        node.process_next(limit=len(paths))
    finally:
        worker.build_in_process = build
        node.close()
    return sizes, times, handing


def ingest_floor(paths: list[Path], work: Path) -> float:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    command = ["storescp", "--max-pdu", "131072", "+xa", "-aet", "STORESCP", "-od", str(out)]
    command.append(str(port))
    with Receiver("storescp", command, {"TCP_NODELAY": "1"}, "STORESCP", port):
        elapsed = send(port, "STORESCP", paths, 1, PROPOSAL)
    return len(paths) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--handoff-studies", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument(
        "--handoff-only", action="store_true", help="only the builder's hand-off and time"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cxrnode-saturation-"))
    source = next((SHARED / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    files = replicate(source, args.studies, work / "files")
    # replicate() pairs files into studies; make each its own study of one image.
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.save_as(path, enforce_file_format=True)

    handoff_bytes, handoff_s, handing_s = handoff(files[: args.handoff_studies], work)
    print(
        f"builder per study alone ({len(handoff_s)} studies, one batch, first left out): "
        f"median {statistics.median(handoff_s[1:]):.3f} CPU s"
    )
    print(
        f"pickled builder call per study: median {statistics.median(handoff_bytes) / 1e6:.2f} MB "
        f"(max {max(handoff_bytes) / 1e6:.2f} MB), pickled and unpickled in "
        f"{statistics.median(handing_s) * 1e3:.1f} CPU ms"
    )
    if args.handoff_only:
        return
    ingest = ingest_floor(files, work)
    model = model_floor(files)

    node_port = free_port()
    orthanc = Orthanc(work / "orthanc", [Modality("cxrnode", "CXRNODE", "127.0.0.1", node_port)])
    env = node_env(work, node_port, 2.0, 0.0, CXRNODE_ALLOWED_CALLING_AES="BENCH")
    with orthanc:
        env["CXRNODE_DESTINATIONS"] = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        with (work / "node.log").open("wb") as log:
            node = start_node(env, work, log)
            try:
                wait_echo(node_port)
                sent_in = send(node_port, "CXRNODE", files, 1, PROPOSAL)
                deadline = time.monotonic() + args.timeout
                while done_studies(work / "node" / "cxrnode.db") < args.studies:
                    if node.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the node did not finish; see {log.name}")
                    time.sleep(1)
            finally:
                node.terminate()
                node.wait(timeout=120)

    queued = sorted(e["time"] for e in audit(env, work, "--action", "study.queued"))
    done = sorted(e["time"] for e in audit(env, work, "--action", "study.done"))
    span = seconds(queued[0], done[-1])
    build_s = [
        e["detail"]["timings"]["build_s"]
        for e in audit(env, work, "--action", "inference.completed")
    ]
    sustained = args.studies / span
    floor = min(ingest, model)
    print(f"studies: {args.studies} one-image studies, RSNA CR 1024x1024 JPEG baseline")
    print(f"node ingest of all studies: {sent_in:.1f} s ({args.studies / sent_in:.1f} studies/s)")
    print(f"ingest floor (storescp, TCP_NODELAY, --max-pdu 131072): {ingest:.1f} studies/s")
    print(f"model floor (default package, batch 8, with Grad-CAM):   {model:.1f} studies/s")
    print(f"sustained (first queued -> last done, {span:.1f} s):        {sustained:.2f} studies/s")
    print(f"sustained / min(floors) = {sustained / floor:.2f} (target >= 0.9)")
    print(
        f"builder per study in the node (build_s): median {statistics.median(build_s):.3f} s, "
        f"mean {statistics.fmean(build_s):.3f} s"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
