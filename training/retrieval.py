"""Case retrieval measured as seed 003 measures it: P@5, mAP, MRR, DCG@5 and query time.

A query's relevant cases are those sharing at least one positive label with it; a query with
no positive label (a normal study) is relevant to the other studies without one. Labels
unknown for a case (masked) are ignored. Two protocols, named as seed 003 names them:

- **generalization (test → test)**: each test case queries the other test cases;
- **historical (test → train)**: each test case queries the training cases (earlier cases a
  node would hold).

Per query the whole gallery is ranked by cosine similarity of the model's embeddings
(``CxrClassifier.embed``): for a package with a joint image–text space (``joint_dim > 0``,
``training.contrastive``), the joint image embedding, which reads the image alone; otherwise
the fused image–text vector the classification head reads (for an image-only model, the pooled
image features). A model that reads text without a joint space is also scored on its image
alone (the "no report" embedding in place of the report), what a study without a report gets.
A joint space is also scored across modalities, as seed 003 retrieves: each test image ranks
reports (image → report) and each test report ranks images (report → image), the other test
cases' (leaving its own pair out) and the training cases'. ``P@5`` is the share of relevant
cases in the first five; ``AP`` averages the precision at each relevant case's rank over the
full ranking (so mAP is comparable across gallery sizes only roughly: a large gallery holds many
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

GENERALIZATION = "generalization (test -> test)"
HISTORICAL = "historical (test -> train)"
SEED_003 = {  # its README, for the report
    GENERALIZATION: {"p_at_5": 0.7463, "mrr": 0.848, "dcg_at_5": 0.9381},
    HISTORICAL: {"p_at_5": 0.9173, "mrr": 0.881, "dcg_at_5": 0.9503},
    "query_ms": {GENERALIZATION: 0.77, HISTORICAL: 0.58},
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
    model: CxrClassifier,
    dataset: SampleDataset,
    batch_size: int,
    device: torch.device,
    with_text: bool = True,
) -> np.ndarray:
    """``(N, D)`` embeddings (``CxrClassifier.embed``) of a dataset, in order; without
    ``with_text`` the reports are withheld (every row gets the "no report" embedding)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = []
    with torch.inference_mode():
        for batch in loader:
            text = model.tokenize(batch.texts) if model.uses_text and with_text else None
            images = batch.images.to(device)
            out.append(model.embed(images, text.to(device) if text else None).float().cpu())
    return torch.cat(out).numpy()


def embed_reports(
    model: CxrClassifier, dataset: SampleDataset, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Joint embeddings of a dataset's reports alone (no image is read).

    Returns
    -------
    tuple of numpy.ndarray
        ``(R, joint_dim)`` embeddings and the ``R`` dataset rows that have a report.
    """
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out, rows = [], []
    with torch.inference_mode():
        for start, batch in zip(range(0, len(dataset), batch_size), loader, strict=True):
            rows += [start + i for i, text in enumerate(batch.texts) if text is not None]
            text = model.tokenize(batch.texts)
            if text is not None:
                out.append(model.embed_text(text.to(device)).float().cpu())
    width = model.retrieval_dim
    vectors = torch.cat(out).numpy() if out else np.zeros((0, width), dtype=np.float32)
    return vectors, np.asarray(rows, dtype=np.int64)


def retrieval_protocols(
    model: CxrClassifier,
    test: SampleDataset,
    test_labels: np.ndarray,
    train: SampleDataset,
    train_labels: np.ndarray,
    device: torch.device,
    batch_size: int = 32,
) -> dict:
    """Every protocol the model's embeddings allow (see the module docstring).

    Parameters
    ----------
    model : CxrClassifier
    test, train : SampleDataset
        The queries' and the historical gallery's samples, as the model reads them.
    test_labels, train_labels : numpy.ndarray
        ``(N, L)`` targets, NaN where unknown.
    device : torch.device

    Returns
    -------
    dict
        ``embedding`` (which vector was ranked), ``protocols`` (a list of
        :meth:`RetrievalScores.to_dict`) and seed 003's figures.
    """
    queries, gallery = (embed(model, part, batch_size, device) for part in (test, train))
    scores = [
        evaluate_protocol(GENERALIZATION, queries, test_labels, queries, test_labels, True),
        evaluate_protocol(HISTORICAL, queries, test_labels, gallery, train_labels, False),
    ]
    if model.joint is not None:
        described = "joint image embedding (the report is not read)"
        scores += _across_modalities(
            model, queries, test, test_labels, gallery, train, train_labels, device, batch_size
        )
    elif model.uses_text:
        described = "fused image + report vector the head reads"
        alone = [embed(model, part, batch_size, device, with_text=False) for part in (test, train)]
        scores += [
            evaluate_protocol(
                f"{GENERALIZATION}, image alone", alone[0], test_labels, alone[0], test_labels, True
            ),
            evaluate_protocol(
                f"{HISTORICAL}, image alone", alone[0], test_labels, alone[1], train_labels, False
            ),
        ]
    else:
        described = "pooled image features"
    return {
        "embedding": described,
        "protocols": [score.to_dict() for score in scores],
        "seed_003": SEED_003,
    }


def _across_modalities(
    model: CxrClassifier,
    test_images: np.ndarray,
    test: SampleDataset,
    test_labels: np.ndarray,
    train_images: np.ndarray,
    train: SampleDataset,
    train_labels: np.ndarray,
    device: torch.device,
    batch_size: int,
) -> list[RetrievalScores]:
    """Image → report and report → image, test → test (own pair left out) and test → train."""
    test_reports, test_rows = embed_reports(model, test, batch_size, device)
    train_reports, train_rows = embed_reports(model, train, batch_size, device)
    if not len(test_rows) or not len(train_rows):
        return []
    paired_images, paired_labels = test_images[test_rows], test_labels[test_rows]
    return [
        evaluate_protocol(
            "image -> report (test -> test)",
            paired_images,
            paired_labels,
            test_reports,
            paired_labels,
            True,
        ),
        evaluate_protocol(
            "report -> image (test -> test)",
            test_reports,
            paired_labels,
            paired_images,
            paired_labels,
            True,
        ),
        evaluate_protocol(
            "image -> report (test -> train)",
            test_images,
            test_labels,
            train_reports,
            train_labels[train_rows],
            False,
        ),
        evaluate_protocol(
            "report -> image (test -> train)",
            test_reports,
            paired_labels,
            train_images,
            train_labels,
            False,
        ),
    ]
