"""Nearest cases by embedding: exact cosine search, or FAISS's HNSW graph when the count pays.

Vectors are L2-normalised once, so the inner product is the cosine similarity and the
distance reported is ``1 - cosine`` (0 for the same direction, 2 for the opposite). Exact
search is one matrix product: at the node's scale (thousands of studies) it answers in well
under a millisecond and is never wrong. An approximate index (``faiss.IndexHNSWFlat``) is
built only when asked for, or for ``auto`` from ``HNSW_FROM`` vectors on (see the figures
there); it needs the ``faiss-cpu`` package (the ``retrieval`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Where HNSW starts to pay (benchmarks/retrieval.py, 2-core CPU, 1,280-d): exact search takes
# 0.11 ms a query at 1,000 cases, 0.60 at 5,000, 2.6 at 20,000 and 9.1 at 50,000, while HNSW is
# slower up to 5,000 and, where faster (1.9 ms at 50,000), finds only 0.43-0.64 of the exact top
# 5 on unclustered vectors. Exact search stays the default well past any single node's archive.
HNSW_FROM = 100_000
INDEX_KINDS = ("auto", "exact", "hnsw")


@dataclass(frozen=True)
class Neighbours:
    """The ``k`` nearest gallery rows of each query, nearest first."""

    indices: np.ndarray  # (Q, k) int64, -1 where the gallery had fewer than k rows
    distances: np.ndarray  # (Q, k) float32, 1 - cosine similarity


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a (N, D) array, not shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class ExactIndex:
    """Cosine search by one matrix product over every gallery row."""

    kind = "exact"

    def __init__(self, gallery: np.ndarray) -> None:
        self.gallery = normalise(gallery)

    def __len__(self) -> int:
        return len(self.gallery)

    def search(self, queries: np.ndarray, k: int, exclude_self: bool = False) -> Neighbours:
        """The ``k`` nearest rows; ``exclude_self`` drops row ``i`` from query ``i``'s answer
        (a query set that is the gallery itself: leave-one-out)."""
        queries = normalise(queries)
        similarity = queries @ self.gallery.T
        if exclude_self:
            np.fill_diagonal(similarity, -np.inf)
        k_found = min(k, len(self.gallery) - (1 if exclude_self else 0))
        if k_found <= 0:
            empty = np.full((len(queries), k), -1, dtype=np.int64)
            return Neighbours(empty, np.full((len(queries), k), np.nan, dtype=np.float32))
        top = np.argpartition(-similarity, k_found - 1, axis=1)[:, :k_found]
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
        indices = np.take_along_axis(top, order, axis=1)
        distances = 1.0 - np.take_along_axis(similarity, indices, axis=1)
        return _padded(indices, distances.astype(np.float32), k)


class HnswIndex:
    """FAISS's HNSW graph over the normalised rows (inner product = cosine)."""

    kind = "hnsw"

    def __init__(self, gallery: np.ndarray, neighbours: int = 32, ef_search: int = 128) -> None:
        try:
            import faiss
        except ImportError as exc:  # an optional extra
            raise RuntimeError(
                "an HNSW index needs the faiss-cpu package (pip install 'cxrnode[retrieval]')"
            ) from exc
        gallery = normalise(gallery)
        self.index = faiss.IndexHNSWFlat(gallery.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efSearch = ef_search
        self.index.add(gallery)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int, exclude_self: bool = False) -> Neighbours:
        queries = normalise(queries)
        wanted = min(k + (1 if exclude_self else 0), len(self))
        similarity, indices = self.index.search(queries, wanted)
        if exclude_self:
            keep = indices != np.arange(len(queries))[:, None]
            # Each row keeps its first k entries that are not itself.
            indices = np.array([row[mask][:k] for row, mask in zip(indices, keep, strict=True)])
            similarity = np.array(
                [row[mask][:k] for row, mask in zip(similarity, keep, strict=True)]
            )
        return _padded(indices.astype(np.int64), (1.0 - similarity).astype(np.float32), k)


def build_index(gallery: np.ndarray, kind: str = "auto") -> ExactIndex | HnswIndex:
    """An index over ``gallery`` rows: ``exact``, ``hnsw``, or ``auto`` (HNSW from
    ``HNSW_FROM`` rows on, when FAISS is installed)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {kind!r} is not one of {INDEX_KINDS}")
    if kind == "hnsw":
        return HnswIndex(gallery)
    if kind == "auto" and len(gallery) >= HNSW_FROM:
        try:
            return HnswIndex(gallery)
        except RuntimeError:
            pass  # no FAISS: exact search, slower but right
    return ExactIndex(gallery)


def _padded(indices: np.ndarray, distances: np.ndarray, k: int) -> Neighbours:
    if indices.ndim == 1:
        indices, distances = indices[:, None], distances[:, None]
    missing = k - indices.shape[1]
    if missing > 0:
        indices = np.pad(indices, ((0, 0), (0, missing)), constant_values=-1)
        distances = np.pad(distances, ((0, 0), (0, missing)), constant_values=np.nan)
    return Neighbours(indices, distances)
