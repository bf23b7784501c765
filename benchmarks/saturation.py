"""Saturation: studies/s the node sustains with a full queue, beside its two floors.

200 one-image studies (real RSNA chest CRs, new UIDs each) are sent to the node in one go by
dcmtk storescu; the node, on its defaults except a 2 s stable age and no pairing wait, then
works the queue down, writing SR, GSPS and captures back to a real Orthanc. Sustained
throughput = studies / (first study queued -> last study done), read from the audit log.

Floors, measured in the same run on the same files:
- ingest floor: dcmtk storescp (TCP_NODELAY=1, --max-pdu 131072) receiving them, studies/s;
- model floor: the default package's predictor with Grad-CAM on the same images, batch 8.

    .venv/bin/python benchmarks/saturation.py [--studies 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
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
    """Images/s of the default package's predictor with one Grad-CAM map per image."""
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
        predictor.predict(chunk)
        predictor.explain_many(chunk, [[0]] * len(chunk))
    return len(displays) / (time.perf_counter() - started)


def done_studies(db_path: Path) -> int:
    row = node_db_row(db_path, "SELECT count(*) FROM studies WHERE state = 'done'")
    return row[0] if row else 0


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
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cxrnode-saturation-"))
    source = next((SHARED / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))
    files = replicate(source, args.studies, work / "files")
    # replicate() pairs files into studies; make each its own study of one image.
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.save_as(path, enforce_file_format=True)

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
    sustained = args.studies / span
    floor = min(ingest, model)
    print(f"studies: {args.studies} one-image studies, RSNA CR 1024x1024 JPEG baseline")
    print(f"node ingest of all studies: {sent_in:.1f} s ({args.studies / sent_in:.1f} studies/s)")
    print(f"ingest floor (storescp, TCP_NODELAY, --max-pdu 131072): {ingest:.1f} studies/s")
    print(f"model floor (default package, batch 8, with Grad-CAM):   {model:.1f} studies/s")
    print(f"sustained (first queued -> last done, {span:.1f} s):        {sustained:.2f} studies/s")
    print(f"sustained / min(floors) = {sustained / floor:.2f} (target >= 0.9)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
