"""Processed images' embeddings, written with a run's results and read back for case search.

Each vector is stored as ``dim`` float32 values, little-endian, whatever the machine: a
database written on one node reads the same on another. What a search reads of a study is its
latest run that stored embeddings: a re-run's vectors replace the older run's for search (the
older rows stay, like the older run's results), and a study whose latest run used another
model package is not in that package's gallery, since embeddings of different packages are
not comparable. Retention deletes a study's embeddings with its spooled images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.schema import Embedding, Job

_DTYPE = np.dtype("<f4")


def to_bytes(vector: np.ndarray) -> bytes:
    """A 1-D vector as the bytes stored: float32, little-endian."""
    vector = np.asarray(vector)
    if vector.ndim != 1 or not vector.size:
        raise ValueError(f"an embedding must be a non-empty 1-D vector, not shape {vector.shape}")
    return vector.astype(_DTYPE).tobytes()


def from_bytes(data: bytes, dim: int) -> np.ndarray:
    """The stored bytes as a float32 vector of ``dim`` values (native byte order)."""
    if len(data) != dim * _DTYPE.itemsize:
        raise ValueError(f"an embedding of {dim} values takes {dim * 4} bytes, not {len(data)}")
    return np.frombuffer(data, dtype=_DTYPE).astype(np.float32)


def add(session: Session, job: Job, sop_uid: str, model_id: str, vector: np.ndarray) -> Embedding:
    """Store one image's embedding from run ``job`` of its study, made by package
    ``model_id``."""
    data = to_bytes(vector)
    row = Embedding(
        study_id=job.study_id,
        job_id=job.id,
        sop_uid=sop_uid,
        model_id=model_id,
        dim=len(data) // _DTYPE.itemsize,
        vector=data,
    )
    session.add(row)
    return row


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class RunEmbeddings:
    """The embeddings one run stored, one row per image.

    Attributes
    ----------
    job_id:
        The run's row id.
    model_id:
        The package that made them.
    vectors:
        ``(images, dim)`` float32.
    """

    job_id: int
    model_id: str
    vectors: np.ndarray


@dataclass(frozen=True, eq=False)
class LatestEmbeddings:
    """Every image embedding of the studies' latest runs, one row per image, the rows of one
    run together.

    Attributes
    ----------
    study_ids, job_ids:
        ``(N,)`` int64: each row's study and run.
    vectors:
        ``(N, dim)`` float32.
    """

    study_ids: np.ndarray
    job_ids: np.ndarray
    vectors: np.ndarray


def latest_runs(session: Session, model_id: str) -> LatestEmbeddings:
    """The embeddings of each study's latest run that stored any, for the studies whose such
    run package ``model_id`` made.

    Raises
    ------
    ValueError
        If the package's embeddings differ in width (a corrupt row).
    """
    latest = (
        select(Embedding.study_id, func.max(Job.run).label("run"))
        .join(Job, Job.id == Embedding.job_id)
        .group_by(Embedding.study_id)
        .subquery()
    )
    rows = session.execute(
        select(Embedding.study_id, Embedding.job_id, Embedding.dim, Embedding.vector)
        .join(Job, Job.id == Embedding.job_id)
        .join(latest, (latest.c.study_id == Embedding.study_id) & (latest.c.run == Job.run))
        .where(Embedding.model_id == model_id)
        .order_by(Embedding.study_id, Embedding.id)
    ).all()
    dims = {row.dim for row in rows}
    if len(dims) > 1:
        raise ValueError(f"{model_id}'s stored embeddings differ in width: {sorted(dims)}")
    dim = dims.pop() if dims else 0
    data = b"".join(row.vector for row in rows)
    return LatestEmbeddings(
        study_ids=np.array([row.study_id for row in rows], dtype=np.int64),
        job_ids=np.array([row.job_id for row in rows], dtype=np.int64),
        vectors=from_bytes(data, dim * len(rows)).reshape(len(rows), dim),
    )


def of_study(session: Session, study_id: int) -> RunEmbeddings | None:
    """The embeddings of the study's latest run that stored any; None when none did (a study
    processed before embeddings were stored, or not processed yet)."""
    job_id = session.scalar(
        select(Embedding.job_id)
        .join(Job, Job.id == Embedding.job_id)
        .where(Embedding.study_id == study_id)
        .order_by(Job.run.desc())
        .limit(1)
    )
    if job_id is None:
        return None
    rows = session.execute(
        select(Embedding.model_id, Embedding.dim, Embedding.vector)
        .where(Embedding.job_id == job_id)
        .order_by(Embedding.id)
    ).all()
    vectors = np.stack([from_bytes(row.vector, row.dim) for row in rows])
    return RunEmbeddings(job_id, rows[0].model_id, vectors)


def version(session: Session) -> tuple[int, int, int]:
    """What changes whenever a row is added or deleted: the count, highest and sum of the
    ids, so a reader can tell that its copy of the gallery is still the database's."""
    count, highest, total = session.execute(
        select(func.count(Embedding.id), func.max(Embedding.id), func.sum(Embedding.id))
    ).one()
    return int(count), int(highest or 0), int(total or 0)


def delete_of_studies(session: Session, study_ids: Iterable[int]) -> int:
    """Delete every embedding of these studies (retention); return how many rows went."""
    ids = sorted({int(i) for i in study_ids})
    if not ids:
        return 0
    result = session.execute(delete(Embedding).where(Embedding.study_id.in_(ids)))
    return result.rowcount
