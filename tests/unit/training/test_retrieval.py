"""Retrieval metrics on rankings worked out by hand, and the indexes against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.similarity import ExactIndex, HnswIndex, build_index
from training.retrieval import evaluate_protocol, relevance, score_rankings


def test_metrics_of_a_ranking_worked_out_by_hand() -> None:
    # Relevant at ranks 2 and 4 of 6; 2 relevant in the gallery.
    ranked = np.array([[0, 1, 0, 1, 0, 0]], dtype=bool)
    scores = score_rankings(ranked, np.array([2]))
    assert scores["p_at_5"] == pytest.approx(2 / 5)
    assert scores["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert scores["mrr"] == pytest.approx(1 / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3)
    assert scores["dcg_at_5"] == pytest.approx(dcg / ideal)


def test_queries_without_any_relevant_case_are_left_out() -> None:
    ranked = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    scores = score_rankings(ranked, np.array([1, 0]))
    assert scores["mrr"] == 1.0 and scores["map"] == 1.0


def test_relevance_is_a_shared_positive_label_or_both_normal_ignoring_unknowns() -> None:
    labels = np.array(
        [[1, 0, np.nan], [1, 1, 0], [0, 0, 0], [0, 0, np.nan], [0, 1, 0]], dtype=np.float32
    )
    assert relevance(labels, labels).astype(int).tolist() == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 1, 0, 0, 1],
    ]


def test_exact_search_matches_brute_force_and_leaves_the_query_out() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(200, 16)).astype(np.float32)
    found = ExactIndex(gallery).search(gallery[:10], 5, exclude_self=True)
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    cosine = unit[:10] @ unit.T
    np.fill_diagonal(cosine[:, :10], -np.inf)
    assert found.indices.tolist() == np.argsort(-cosine, axis=1)[:, :5].tolist()
    assert np.allclose(found.distances, 1 - np.sort(cosine, axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert not (found.indices == np.arange(10)[:, None]).any()


def test_a_gallery_smaller_than_k_pads_with_minus_one() -> None:
    found = ExactIndex(np.eye(3, dtype=np.float32)).search(np.eye(3)[:1], 5)
    assert found.indices[0].tolist()[:3] == [0, 1, 2] and found.indices[0, 3:].tolist() == [-1, -1]


def test_hnsw_finds_what_exact_search_finds() -> None:
    pytest.importorskip("faiss", reason="faiss-cpu (the retrieval extra) is not installed")
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(3000, 32)).astype(np.float32)
    queries = gallery[:50]
    exact = ExactIndex(gallery).search(queries, 5, exclude_self=True).indices
    approx = HnswIndex(gallery).search(queries, 5, exclude_self=True).indices
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95
    assert not (approx == np.arange(50)[:, None]).any()


def test_an_unknown_index_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="index kind"):
        build_index(np.eye(2), "annoy")


def test_a_protocol_on_separable_embeddings_scores_perfectly() -> None:
    labels = np.array([[1, 0]] * 6 + [[0, 1]] * 6, dtype=np.float32)
    embeddings = np.concatenate([labels, np.zeros((12, 2))], axis=1) + 0.01 * np.arange(12)[:, None]
    scores = evaluate_protocol("test -> test", embeddings, labels, embeddings, labels, True)
    assert (scores.p_at_5, scores.mrr, scores.map, scores.dcg_at_5) == (1.0, 1.0, 1.0, 1.0)
    assert scores.queries == 12 and scores.gallery == 12 and scores.query_ms > 0
