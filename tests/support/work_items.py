"""A worker's hand-off to the result builders, as the tests of the builders need it, and a
study queued for a worker."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from node.build import WorkItem
from storage import jobs
from storage.schema import utcnow
from storage.studies import add_instance, stable_studies
from support.instances import frontal_cr

if TYPE_CHECKING:  # the builders' tests need no model
    from node.worker import Worker


def work_item(study_uid: str, run: int = 1) -> WorkItem:
    """A first run of one study without report text, for ``ResultJob``."""
    return WorkItem(
        job_id=1,
        run=run,
        study_uid=study_uid,
        accession=None,
        patient_id="P1",
        images=(),
        text=None,
        text_source="none",
        reason="first",
        replaces_sr=None,
    )


def queue_study(worker: Worker, study_uid: str, source: Path | bytes) -> None:
    """A one-image study, spooled and queued as the SCP and the assembler would."""
    relpath = f"{study_uid}/image.dcm"
    data = source if isinstance(source, bytes) else source.read_bytes()
    worker.spool.write(relpath, data)
    header = frontal_cr(study_uid, transfer_syntax=None)
    with worker.db.transaction() as session:
        add_instance(session, header, relpath=relpath, size=len(data), sha256="0", calling_ae="X")
        (study,) = [s for s in stable_studies(session, utcnow()) if s.study_uid == study_uid]
        jobs.queue_run(session, study)
