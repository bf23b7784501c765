"""Ingest throughput: the node's storage SCP versus dcmtk's storescp, same host, same files.

Files are real chest radiographs from ../shared/data replicated with new UIDs: the public
samples as they are (~1 MB, RSNA JPEG baseline and NIH uncompressed), and the NIH image
upscaled to 2816x2816 16-bit (~15 MB, the size of a real CR). Senders are dcmtk storescu
processes (1 and 4 concurrent, each one association). Baselines: storescp with TCP_NODELAY=1
and --max-pdu 131072, and the same with --fork.

    .venv/bin/python benchmarks/ingest.py [--files 40] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CXRNODE_SHARED_DATA", REPO.parent / "shared" / "data"))


def replicate(source: Path, count: int, folder: Path, upscale: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(source)
    if upscale:
        pixels = base.pixel_array.astype(np.uint16) * 16
        factor = upscale // pixels.shape[0]
        pixels = np.kron(pixels, np.ones((factor, factor), dtype=np.uint16))
        base.PixelData = pixels.tobytes()
        base.Rows, base.Columns = pixels.shape
        base.BitsAllocated, base.BitsStored, base.HighBit = 16, 12, 11
        base.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    paths = []
    study = generate_uid()
    for n in range(count):
        base.StudyInstanceUID = study if n % 2 else generate_uid()
        base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{n:04d}.dcm"
        base.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def wait_listening(port: int, ae_title: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.3)
    raise SystemExit(f"nothing answered on port {port}")


def send(port: int, ae_title: str, paths: list[Path], senders: int, proposal: list[str]) -> float:
    """Seconds for `senders` concurrent storescu processes to send `paths` between them."""
    chunks = [paths[i::senders] for i in range(senders)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                "BENCH",
                "-aec",
                ae_title,
                "--max-pdu",
                "131072",
                *proposal,
                "127.0.0.1",
                str(port),
                *map(str, chunk),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


class Receiver:
    def __init__(self, name: str, command: list[str], env: dict, ae_title: str, port: int):
        self.name, self.command, self.env = name, command, env
        self.ae_title, self.port = ae_title, port

    def __enter__(self):
        self.process = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_listening(self.port, self.ae_title)
        return self

    def __exit__(self, *exc):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("storescp"):
        raise SystemExit("dcmtk not installed")
    work = Path(tempfile.mkdtemp(prefix="cxrnode-ingest-"))
    nih = next((SHARED / "nih-chestxray14-dicom-gcp").glob("*.dcm"))
    rsna = sorted((SHARED / "rsna-pneumonia-sample" / "stage_1_train_images").glob("*.dcm"))[0]
    sets = {
        "RSNA JPEG baseline 1024x1024": (replicate(rsna, args.files, work / "rsna"), ["-xy"]),
        "NIH uncompressed 1024x1024": (replicate(nih, args.files, work / "nih"), []),
        "NIH upscaled 2816x2816 16-bit": (
            replicate(nih, max(args.files // 4, 8), work / "big", upscale=2816),
            [],
        ),
    }
    for label, (paths, proposal) in sets.items():
        size_mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        print(f"\n{label}: {len(paths)} files, {size_mb:.2f} MB each, median of {args.runs} runs")
        for senders in (1, 4):
            figures = {}
            for name, factory in receivers(work).items():
                rates = []
                for run in range(args.runs):
                    port = free_port()
                    with factory(port, work / f"out-{name}-{run}") as receiver:
                        seconds = send(port, receiver.ae_title, paths, senders, proposal)
                    rates.append(len(paths) / seconds)
                figures[name] = statistics.median(rates)
            node = figures["cxrnode"]
            line = ", ".join(
                f"{n} {r:7.1f}/s ({r * size_mb:6.1f} MB/s)" for n, r in figures.items()
            )
            print(f"  {senders} sender(s): {line}")
            print(
                f"    node / storescp(TCP_NODELAY) = {node / figures['storescp']:.2f}x, "
                f"node / storescp --fork = {node / figures['storescp --fork']:.2f}x"
            )


def receivers(work: Path) -> dict:
    def storescp(fork: bool):
        def make(port: int, out: Path) -> Receiver:
            out.mkdir(parents=True, exist_ok=True)
            command = [
                "storescp",
                "--max-pdu",
                "131072",
                "+xa",
                "-aet",
                "STORESCP",
                "-od",
                str(out),
            ]
            command += ["--fork"] if fork else []
            return Receiver(
                "storescp", [*command, str(port)], {"TCP_NODELAY": "1"}, "STORESCP", port
            )

        return make

    def node(port: int, out: Path) -> Receiver:
        env = {
            "CXRNODE_DICOM_HOST": "127.0.0.1",
            "CXRNODE_DICOM_PORT": str(port),
            "CXRNODE_DATA_DIR": str(out),
            "CXRNODE_ALLOWED_CALLING_AES": "BENCH",
            "CXRNODE_STABLE_AGE_S": "3600",  # receive only: this measures ingest
            "CXRNODE_HL7_PORT": "0",
            "CXRNODE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
        return Receiver(
            "cxrnode", [sys.executable, "-m", "node.cli", "serve"], env, "CXRNODE", port
        )

    return {"storescp": storescp(False), "storescp --fork": storescp(True), "cxrnode": node}


if __name__ == "__main__":
    main()
