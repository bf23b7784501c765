"""When does an approximate index pay for "similar cases"? Exact cosine search against
FAISS's HNSW graph (``models.similarity``), per query as the node answers one study at a time.

For each gallery size: the time to build each index, the mean time per query (k = 5), the
ratio exact / HNSW, and HNSW's recall of the exact top 5. Vectors are random unit vectors of
the shipped model's embedding width (Lite0: 1,280), a worst case for HNSW's graph (real
embeddings cluster, which helps it). ``HNSW_FROM`` in models/similarity.py is set from these
figures: the smallest size where HNSW is faster per query with recall >= 0.95.

    .venv/bin/python benchmarks/retrieval.py [--sizes 1000 10000 50000 100000] [--dim 1280]
        [--queries 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.similarity import ExactIndex, HnswIndex  # noqa: E402


def _per_query_ms(index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    found = []
    started = time.perf_counter()
    for row in queries:
        found.append(index.search(row[None, :], 5).indices[0])
    return (time.perf_counter() - started) * 1000 / len(queries), np.array(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000, 100000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"dim {args.dim}, {args.queries} queries, k = 5")
    print(
        f"{'gallery':>8} {'build exact':>12} {'build hnsw':>11} {'exact ms':>9} "
        f"{'hnsw ms':>8} {'exact/hnsw':>11} {'recall@5':>9}"
    )
    for size in args.sizes:
        gallery = rng.normal(size=(size, args.dim)).astype(np.float32)
        queries = gallery[rng.choice(size, args.queries, replace=False)] + 0.1 * rng.normal(
            size=(args.queries, args.dim)
        ).astype(np.float32)
        started = time.perf_counter()
        exact = ExactIndex(gallery)
        exact_build = time.perf_counter() - started
        started = time.perf_counter()
        hnsw = HnswIndex(gallery)
        hnsw_build = time.perf_counter() - started
        exact_ms, exact_found = _per_query_ms(exact, queries)
        hnsw_ms, hnsw_found = _per_query_ms(hnsw, queries)
        recall = np.mean(
            [len(set(a) & set(e)) / 5 for a, e in zip(hnsw_found, exact_found, strict=True)]
        )
        print(
            f"{size:>8} {exact_build:>11.2f}s {hnsw_build:>10.2f}s {exact_ms:>9.3f} "
            f"{hnsw_ms:>8.3f} {exact_ms / hnsw_ms:>10.1f}x {recall:>9.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
