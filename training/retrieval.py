"""Case retrieval measured as seed 003 measures it: P@5, mAP, MRR, DCG@5 and query time.

A query's relevant cases are those sharing at least one positive label with it; a query with
no positive label (a normal study) is relevant to the other studies without one. Labels
unknown for a case (masked) are ignored. Two protocols, named as seed 003 names them:

- **generalization (test → test)**: each test case queries the other test cases;
- **historical (test → train)**: each test case queries the training cases (earlier cases a
  node would hold).

Per query the whole gallery is ranked by cosine similarity of the model's embeddings
(``CxrClassifier.embed``: the fused image–text vector the classification head reads; for an
image-only model, the pooled image features). ``P@5`` is the share of relevant cases in the
first five; ``AP`` averages the precision at each relevant case's rank over the full
ranking (so mAP is comparable across gallery sizes only roughly: a large gallery holds many
relevant cases); ``MRR`` is the mean of 1 / the first relevant rank; ``DCG@5`` is normalised
by the ideal ordering (nDCG@5, binary relevance), which is how a value below 1 like seed 003's
0.938 reads. Query time is the search alone, per query, averaged over the protocol's queries.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from models.network import CxrClassifier
from models.similarity import ExactIndex, build_index
from training.loader import SampleDataset, collate

SEED_003 = {  # its README, for the report
    "generalization (test -> test)": {"p_at_5": 0.7463, "mrr": 0.848, "dcg_at_5": 0.9381},
    "historical (test -> train)": {"p_at_5": 0.9173, "mrr": 0.881, "dcg_at_5": 0.9503},
    "query_ms": {"generalization (test -> test)": 0.77, "historical (test -> train)": 0.58},
}


@dataclass(frozen=True)
class RetrievalScores:
    protocol: str
    queries: int
    gallery: int
    p_at_5: float
    map: float
    mrr: float
    dcg_at_5: float
    query_ms: float
    index: str

    def to_dict(self) -> dict:
        return asdict(self)


def relevance(query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """``(Q, G)`` boolean: gallery case ``g`` is relevant to query ``q``.

    Labels are ``(N, L)`` with 1 positive, 0 negative and NaN unknown.
    """
    q = np.nan_to_num(np.asarray(query_labels, dtype=np.float32)) > 0.5
    g = np.nan_to_num(np.asarray(gallery_labels, dtype=np.float32)) > 0.5
    shares = (q.astype(np.float32) @ g.T.astype(np.float32)) > 0
    both_normal = (~q.any(axis=1))[:, None] & (~g.any(axis=1))[None, :]
    return shares | both_normal


def score_rankings(ranked_relevance: np.ndarray, total_relevant: np.ndarray) -> dict[str, float]:
    """Metrics of full rankings: ``(Q, G)`` booleans in rank order, and each query's count of
    relevant gallery cases. Queries without any relevant case are left out."""
    keep = total_relevant > 0
    ranked = ranked_relevance[keep].astype(np.float64)
    totals = total_relevant[keep].astype(np.float64)
    if len(ranked) == 0:
        return {
            "p_at_5": float("nan"),
            "map": float("nan"),
            "mrr": float("nan"),
            "dcg_at_5": float("nan"),
        }
    ranks = np.arange(1, ranked.shape[1] + 1, dtype=np.float64)
    hits = np.cumsum(ranked, axis=1)
    average_precision = (ranked * hits / ranks).sum(axis=1) / totals
    first = np.argmax(ranked > 0, axis=1)
    reciprocal = np.where(ranked.any(axis=1), 1.0 / (first + 1), 0.0)
    top = ranked[:, :5]
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    dcg = (top * discounts).sum(axis=1)
    ideal = np.array([discounts[: int(min(t, top.shape[1]))].sum() for t in totals])
    return {
        "p_at_5": float(top.sum(axis=1).mean() / 5),
        "map": float(average_precision.mean()),
        "mrr": float(reciprocal.mean()),
        "dcg_at_5": float((dcg / ideal).mean()),
    }


def evaluate_protocol(
    protocol: str,
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    same_set: bool,
    index_kind: str = "exact",
) -> RetrievalScores:
    """Score one protocol; ``same_set`` means the queries are the gallery (leave-one-out)."""
    relevant = relevance(query_labels, gallery_labels)
    if same_set:
        np.fill_diagonal(relevant, False)
    # The ranking the metrics read is exact; the timing is that of the index the node uses.
    ranking = ExactIndex(gallery).search(queries, len(gallery), exclude_self=same_set).indices
    valid = ranking >= 0
    ranked = np.take_along_axis(relevant, np.where(valid, ranking, 0), axis=1) & valid
    scores = score_rankings(ranked, relevant.sum(axis=1))
    index = build_index(gallery, index_kind)
    started = time.perf_counter()
    for row in queries:  # one at a time, as the node answers "similar cases" for one study
        index.search(row[None, :], 5, exclude_self=False)
    query_ms = (time.perf_counter() - started) * 1000 / max(len(queries), 1)
    return RetrievalScores(
        protocol, len(queries), len(gallery), **scores, query_ms=query_ms, index=index.kind
    )


def embed(
    model: CxrClassifier, dataset: SampleDataset, batch_size: int, device: torch.device
) -> np.ndarray:
    """``(N, D)`` embeddings (``CxrClassifier.embed``) of a dataset, in order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = []
    with torch.inference_mode():
        for batch in loader:
            text = model.tokenize(batch.texts) if model.uses_text else None
            images = batch.images.to(device)
            out.append(model.embed(images, text.to(device) if text else None).float().cpu())
    return torch.cat(out).numpy()
