"""Finished runs with stored embeddings, written as the worker writes them, for the tests of
case search, its CLI and API and retention."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select

from storage import embeddings, jobs
from storage.database import Database
from storage.run_summary import ImageSummary, RunSummary
from storage.schema import JobState, Study, StudyState
from storage.studies import add_instance
from support.instances import frontal_cr

MODEL = "tiny-similar@1.0.0+0123456789ab"


def finished_run(
    db: Database,
    study_uid: str,
    vectors: Sequence[Sequence[float]],
    model_id: str = MODEL,
    effusion: float = 0.2,
    accession: str | None = None,
    patient_id: str = "P1",
) -> int:
    """A new done run of ``study_uid`` (received first when it is not yet), its images'
    ``vectors`` stored as its embeddings and ``effusion`` as its findings; returns the run."""
    with db.transaction() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            header = frontal_cr(study_uid, accession=accession, patient_id=patient_id)
            study = add_instance(
                session, header, relpath=f"{study_uid}/1.dcm", size=1, sha256="0", calling_ae="X"
            ).study
        job = jobs.queue_run(session, study)
        session.flush()
        job.state, study.state, job.model_id = JobState.DONE, StudyState.DONE, model_id
        images = [
            ImageSummary.of(
                f"{study_uid}.1.{n}",
                {"Effusion": effusion, "Nodule": 0.1},
                ["Effusion"] if effusion >= 0.5 else [],
            )
            for n in range(len(vectors))
        ]
        job.result = RunSummary(images=tuple(images)).to_json()
        for image, vector in zip(images, vectors, strict=True):
            embeddings.add(session, job, image.sop_uid, model_id, np.asarray(vector))
        return job.run
