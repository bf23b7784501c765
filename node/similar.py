"""Similar earlier cases: the stored studies whose embeddings lie nearest a query's.

A study is one vector in the search: the mean of its latest run's image embeddings, each
scaled to unit length (most studies have one frontal image, and then it is that image's).
:func:`nearest` takes a vector, so a study of the node (:func:`similar_to_study`) and an image
read from a file search alike; it answers the studies whose latest run was made by the same
model package (``storage.embeddings``), nearest first, by ``1 - cosine`` distance, with the
findings that run stored. The search is exact, or FAISS's HNSW from ``HNSW_FROM`` studies on
(``models.similarity.build_index("auto")``).

The gallery (vectors and index) is kept between queries, per database and package: a query
first asks the database whether any embedding was added or deleted since
(``storage.embeddings.version``, one aggregate over the ids) and reloads only then. The
figures are ``benchmarks/similar.py``'s.

Who asked, for which study, and which studies the answer named is audited
(``admin.similar``) before the answer is shown: the answer carries other patients'
identifiers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from models.similarity import ExactIndex, HnswIndex, build_index, normalise
from node.errors import CxrNodeError
from storage import audit, embeddings
from storage.actions import Action
from storage.database import Database
from storage.identifiers import StudyIds
from storage.queries import find_study
from storage.run_summary import Finding, RunSummary
from storage.schema import Job, Study

DEFAULT_K = 5
MAX_K = 100
NO_EMBEDDING = "no embedding stored for this study; rerun it"


class SimilarRefused(CxrNodeError):
    """No answer for this study; the message says why."""


class UnknownStudy(SimilarRefused):
    """No study has this Study Instance UID or accession."""


class NoEmbedding(SimilarRefused):
    """The study has no stored embedding: processed before they were stored, or not yet."""


@dataclass(frozen=True)
class SimilarCase:
    """One of the nearest studies, as its latest run saw it.

    Attributes
    ----------
    rank:
        1 for the nearest.
    distance:
        ``1 - cosine similarity`` of the two studies' vectors (0: the same direction).
    study:
        Its Study Instance UID, accession and patient ID.
    run, model_id, processed_at:
        The run whose embeddings and findings these are, and when it ended.
    findings:
        Its stored findings, highest probability first (``storage.run_summary``).
    """

    rank: int
    distance: float
    study: StudyIds
    run: int
    model_id: str
    processed_at: datetime
    findings: list[Finding]

    @property
    def present(self) -> list[Finding]:
        return [f for f in self.findings if f.present]


@dataclass(frozen=True)
class SimilarStudies:
    """The answer for a study of the node: which run's embedding was the query, and the
    nearest other studies."""

    study: StudyIds
    run: int
    model_id: str
    k: int
    cases: list[SimilarCase]


def nearest(
    session: Session,
    vector: np.ndarray,
    model_id: str,
    k: int = DEFAULT_K,
    exclude_study: str | None = None,
) -> list[SimilarCase]:
    """The ``k`` stored studies nearest ``vector``, nearest first.

    Parameters
    ----------
    vector:
        A ``(dim,)`` embedding made by package ``model_id`` (``Prediction.embedding``), or a
        study's vector (:func:`study_vector`).
    model_id:
        The package id: only studies whose latest run this package made are searched.
    k:
        How many at most; fewer when fewer studies are stored.
    exclude_study:
        A Study Instance UID left out of the answer (the query's own study).

    Returns
    -------
    list of SimilarCase
        Empty when no study of this package is stored.

    Raises
    ------
    ValueError
        If ``k`` is below 1, or ``vector`` is not a finite 1-D vector of the gallery's width.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    query = np.asarray(vector, dtype=np.float32)
    if query.ndim != 1 or not np.isfinite(query).all():
        raise ValueError(f"the query must be a finite 1-D vector, not shape {query.shape}")
    gallery = _gallery(session, model_id)
    if not len(gallery.study_ids):
        return []
    if query.shape[0] != gallery.dim:
        raise ValueError(
            f"the query has {query.shape[0]} values; {model_id}'s embeddings have {gallery.dim}"
        )
    excluded = _excluded_rows(session, gallery, exclude_study)
    found = gallery.index.search(query[None, :], k + len(excluded))
    hits = [
        (int(row), float(distance))
        for row, distance in zip(found.indices[0], found.distances[0], strict=True)
        if row >= 0 and row not in excluded
    ][:k]
    runs = _runs(session, [int(gallery.job_ids[row]) for row, _ in hits])
    return [
        _case(rank, distance, runs[int(gallery.job_ids[row])], model_id)
        for rank, (row, distance) in enumerate(hits, start=1)
    ]


def similar_to_study(session: Session, key: str, k: int = DEFAULT_K) -> SimilarStudies:
    """The ``k`` studies nearest study ``key`` (Study Instance UID or accession), by its
    latest run's embeddings, among those of the same package.

    Raises
    ------
    UnknownStudy
        No study has this UID or accession.
    NoEmbedding
        The study has no stored embedding (processed before they were stored, not processed
        yet, or no run of it got as far as results).
    """
    study = find_study(session, key)
    if study is None:
        raise UnknownStudy(f"no study with Study Instance UID or accession {key!r}")
    stored = embeddings.of_study(session, study.id)
    if stored is None:
        raise NoEmbedding(NO_EMBEDDING)
    run = session.get(Job, stored.job_id).run
    cases = nearest(
        session, study_vector(stored.vectors), stored.model_id, k, exclude_study=study.study_uid
    )
    return SimilarStudies(StudyIds.of(study), run, stored.model_id, k, cases)


@dataclass(frozen=True)
class SimilarToImage:
    """The answer for an image that is no study of the node (a file given to ``cxrnode
    similar``, an upload to ``POST /api/predict`` or the ``/try`` page): the nearest stored
    studies to its embedding."""

    sha256: str
    model_id: str
    k: int
    cases: list[SimilarCase]


def similar_to_image(
    db: Database,
    vector: np.ndarray,
    model_id: str,
    sha256: str,
    k: int = DEFAULT_K,
    *,
    via: str,
    actor: dict | None = None,
) -> SimilarToImage:
    """The ``k`` stored studies nearest an image's embedding (``node.predict.Prediction``'s),
    among those of the same package (see :func:`nearest`), audited before they are shown
    (``admin.similar``: who asked, the image's digest, never the image, and the studies
    named)."""
    with db.reading() as session:
        answer = SimilarToImage(sha256, model_id, k, nearest(session, vector, model_id, k))
    with db.transaction() as session:
        audit.record(
            session,
            Action.ADMIN_SIMILAR,
            audit.Outcome.SUCCESS,
            **(actor or {}),
            detail={
                "query": f"sha256:{sha256}",
                "k": k,
                "via": via,
                "model": model_id,
                "returned": [case.study.study_uid for case in answer.cases],
            },
        )
    return answer


def study_vector(vectors: np.ndarray) -> np.ndarray:
    """One study's vector from its images' ``(images, dim)`` embeddings: the mean of the
    unit-length rows (the search scales it to unit length again)."""
    return normalise(vectors).mean(axis=0)


def record_query(
    session: Session,
    key: str,
    k: int,
    answer: SimilarStudies | None,
    refused: SimilarRefused | None = None,
    *,
    via: str,
    actor: dict | None = None,
) -> None:
    """Audit one question for a study's similar cases (``admin.similar``): who asked, the
    query study, and the studies the answer named (or why there was none)."""
    detail: dict = {"query": key, "k": k, "via": via}
    ids = None
    if answer is not None:
        ids = answer.study
        detail |= {
            "run": answer.run,
            "model": answer.model_id,
            "returned": [case.study.study_uid for case in answer.cases],
        }
    else:
        if not isinstance(refused, UnknownStudy):
            found = find_study(session, key)
            ids = StudyIds.of(found) if found is not None else None
        detail["reason"] = str(refused)
    audit.record(
        session,
        Action.ADMIN_SIMILAR,
        audit.Outcome.SUCCESS if answer is not None else audit.Outcome.WARNING,
        ids=ids,
        **(actor or {}),
        detail=detail,
    )


# The gallery kept between queries --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Gallery:
    """One package's searchable studies, as of the database's ``version``."""

    version: tuple[int, int, int]
    study_ids: np.ndarray  # (N,) int64, a row per study
    job_ids: np.ndarray  # (N,) int64, the run each row's vector is of
    dim: int
    index: ExactIndex | HnswIndex


_galleries: dict[tuple[str, str], _Gallery] = {}
_loading = threading.Lock()


def _gallery(session: Session, model_id: str) -> _Gallery:
    """Package ``model_id``'s gallery in this session's database: the one kept, unless an
    embedding was added or deleted since it was loaded."""
    key = (str(session.get_bind().engine.url), model_id)
    version = embeddings.version(session)
    kept = _galleries.get(key)
    if kept is not None and kept.version == version:
        return kept
    with _loading:
        stored = embeddings.latest_runs(session, model_id)
        # One row per run: the mean of its images' unit vectors (study_vector, for all at once).
        starts = np.flatnonzero(np.diff(stored.job_ids, prepend=-1))
        rows = normalise(stored.vectors)
        if len(starts) < len(rows):  # some run has several images
            counts = np.diff(np.append(starts, len(rows)))
            rows = np.add.reduceat(rows, starts, axis=0) / counts[:, None]
        gallery = _Gallery(
            version=version,
            study_ids=stored.study_ids[starts],
            job_ids=stored.job_ids[starts],
            dim=stored.vectors.shape[1],
            index=build_index(rows),
        )
        _galleries[key] = gallery
        return gallery


def _excluded_rows(session: Session, gallery: _Gallery, study_uid: str | None) -> set[int]:
    if study_uid is None:
        return set()
    study_id = session.scalar(select(Study.id).where(Study.study_uid == study_uid))
    return {int(row) for row in np.flatnonzero(gallery.study_ids == study_id)}


def _runs(session: Session, job_ids: list[int]) -> dict[int, Job]:
    if not job_ids:
        return {}
    found = session.scalars(select(Job).options(selectinload(Job.study)).where(Job.id.in_(job_ids)))
    return {job.id: job for job in found}


def _case(rank: int, distance: float, job: Job, model_id: str) -> SimilarCase:
    return SimilarCase(
        rank=rank,
        distance=round(distance, 6),
        study=StudyIds.of(job.study),
        run=job.run,
        model_id=model_id,
        processed_at=job.updated_at,
        findings=RunSummary.from_json(job.result).findings,
    )
