"""Peak memory of the worker running one many-image study: the 12 RSNA chest X-rays (JPEG
baseline, 1024 x 1024) repeated under new SOP Instance UIDs into one study of ``--images``
instances, spooled and queued as the SCP and the assembler would, then claimed and run by the
real worker (bundled model, CPU, results built in a builder process as by default).

Prints the peak resident set size of the worker process and of the builder process(es), in
MiB, and the images the run read (the rest skipped with the audited reason). Run it against
another checkout to compare (its code is imported from ``--repo``):

    .venv/bin/python benchmarks/study_memory.py --images 120 [--repo ../other-checkout]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose code runs")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    run(args.images, args.data)


def run(count: int, data: Path) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    from models.default import bundled_default_package
    from models.package import load_package
    from models.predictor import Predictor
    from node.config import Settings
    from node.worker import Worker
    from storage import jobs
    from storage.database import Database
    from storage.schema import Job, utcnow
    from storage.spool import FileStore
    from storage.studies import InstanceHeader, add_instance, stable_studies

    sources = sorted((data / "rsna-pneumonia-sample/stage_1_train_images").glob("*.dcm"))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), outputs=("SR", "SC", "GSPS"), min_free_disk_mb=0)
        db = Database(settings.database_url)
        db.create_schema()
        spool = FileStore(Path(tmp) / "spool")
        study_uid = generate_uid()
        for n in range(count):
            ds = pydicom.dcmread(sources[n % len(sources)])
            ds.StudyInstanceUID = study_uid
            ds.PatientID = ds.PatientName = "MEMORY^BENCH"  # one patient
            ds.PatientBirthDate = ""
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            buffer = io.BytesIO()
            ds.save_as(buffer)
            stored = spool.write(f"{study_uid}/{ds.SOPInstanceUID}.dcm", buffer.getvalue())
            header = InstanceHeader(
                sop_uid=ds.SOPInstanceUID,
                sop_class_uid=str(ds.SOPClassUID),
                study_uid=study_uid,
                series_uid=str(ds.SeriesInstanceUID),
                modality="CR",
                patient_id="MEMORY^BENCH",
                accession=None,
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                view="frontal",
                processable=True,
                skip_reason=None,
            )
            with db.transaction() as session:
                add_instance(
                    session,
                    header,
                    relpath=stored.relpath,
                    size=stored.size,
                    sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
                    calling_ae="BENCH",
                )
        with db.transaction() as session:
            jobs.queue_run(session, stable_studies(session, utcnow())[0])
        predictor = Predictor(load_package(bundled_default_package()), device="cpu")
        inference = Worker(settings, db, spool, FileStore(Path(tmp) / "results"), predictor)
        inference.start_builders()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        clock = time.perf_counter()
        inference.process_next(settings.batch_studies)
        inference.flush()  # waits for the builder and commits the run
        seconds = time.perf_counter() - clock
        worker = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # The builders' own peaks (VmHWM restarts at exec; a child's ru_maxrss would count the
        # parent's pages at the fork).
        builders = max(_peak_kib(pid) for pid in inference._builders._processes)
        inference.close()
        with db.transaction() as session:
            job = session.query(Job).one()
            read = len((job.result or {}).get("images", []))
            state = job.state
        limits = {
            f.name: getattr(settings, f.name)
            for f in dataclasses.fields(settings)
            if f.name in ("max_run_images", "batch_studies", "build_processes")
        }
        print(f"study of {count} images; settings {limits}")
        print(f"run: {state}, {read} images read, {seconds:.1f} s")
        print(
            f"peak RSS worker process: {worker / 1024:.0f} MiB (before the run {before / 1024:.0f})"
        )
        print(f"peak RSS builder process: {builders / 1024:.0f} MiB")


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
