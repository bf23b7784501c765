"""How long does "similar earlier cases" take against the node's database? ``node.similar``
over 1,000 and 10,000 stored studies, loading included.

Per gallery size, in a fresh SQLite file (or ``--database-url``, e.g. a PostgreSQL database
to fill): the studies are written as the worker leaves them (a done run with its findings and
one image's embedding, 1,280 float32 values as the shipped model makes), then

- ``cold``: the first query, which loads every study's latest embedding from the database and
  builds the index (``build_index("auto")``: exact below ``HNSW_FROM``);
- ``warm``: a query answered from the gallery kept, i.e. the check that no embedding was added
  or deleted (``storage.embeddings.version``), the search, and the read of the k runs found;
- ``study``: ``similar_to_study`` as ``cxrnode similar`` and the API call it (the query
  study's own embedding read as well), warm;
- ``version``: the check alone.

Times are medians over ``--queries`` queries (k = 5) in milliseconds; cold is one load.

    .venv/bin/python benchmarks/similar.py [--sizes 1000 10000] [--queries 50]
        [--database-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import delete, insert

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node import similar  # noqa: E402
from storage import embeddings  # noqa: E402
from storage.database import Database  # noqa: E402
from storage.run_summary import ImageSummary, RunSummary  # noqa: E402
from storage.schema import Embedding, Job, JobState, Study, StudyState  # noqa: E402

MODEL = "benchmark-model@1.0.0+000000000000"
DIM = 1280
CHUNK = 1000


def fill(db: Database, size: int, rng: np.random.Generator) -> None:
    """``size`` done studies, each with one run and one image's embedding."""
    with db.transaction() as session:
        for table in (Embedding, Job, Study):
            session.execute(delete(table))
    # Vectors around 50 centres, as findings cluster: a query has true neighbours.
    centres = rng.normal(size=(50, DIM)).astype(np.float32)
    for start in range(0, size, CHUNK):
        ids = range(start + 1, min(start + CHUNK, size) + 1)
        vectors = centres[rng.integers(0, 50, len(ids))] + rng.normal(size=(len(ids), DIM))
        result = RunSummary(
            images=(ImageSummary.of("x", {"Effusion": 0.3, "Pneumonia": 0.7}, ["Pneumonia"]),)
        ).to_json()
        with db.transaction() as session:
            session.execute(
                insert(Study),
                [
                    {"id": i, "study_uid": f"2.25.{i}", "accession": f"A{i}", "patient_id": f"P{i}"}
                    | {"state": StudyState.DONE, "runs": 1, "instance_count": 1}
                    for i in ids
                ],
            )
            session.execute(
                insert(Job),
                [
                    {"id": i, "study_id": i, "run": 1, "state": JobState.DONE, "model_id": MODEL}
                    | {"result": result, "attempts": 1}
                    for i in ids
                ],
            )
            session.execute(
                insert(Embedding),
                [
                    {"study_id": i, "job_id": i, "sop_uid": f"2.25.{i}.1", "model_id": MODEL}
                    | {"dim": DIM, "vector": embeddings.to_bytes(vector)}
                    for i, vector in zip(ids, vectors, strict=True)
                ],
            )


def median_ms(call, arguments) -> float:
    """The median milliseconds of ``call(a)`` over the ``arguments``."""
    times = []
    for argument in arguments:
        started = time.perf_counter()
        call(argument)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(db: Database, size: int, repeat: int, rng: np.random.Generator) -> tuple:
    """Cold, warm, study and version milliseconds over ``size`` stored studies."""
    queries = rng.normal(size=(repeat, DIM)).astype(np.float32)
    keys = [f"2.25.{i}" for i in rng.integers(1, size + 1, repeat)]
    with db.reading() as session:
        similar._galleries.clear()
        started = time.perf_counter()
        similar.nearest(session, queries[0], MODEL)
        cold = (time.perf_counter() - started) * 1000
        warm = median_ms(lambda query: similar.nearest(session, query, MODEL), queries)
        study = median_ms(lambda key: similar.similar_to_study(session, key), keys)
        version = median_ms(lambda _: embeddings.version(session), range(repeat))
    return cold, warm, study, version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--database-url", help="an empty database to fill (default: SQLite)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"dim {DIM}, k = 5, median of {args.queries} queries (ms); cold: one gallery load")
    print(f"{'studies':>8} {'db':>10} {'cold':>9} {'warm':>9} {'study':>9} {'version':>9}")
    with tempfile.TemporaryDirectory() as folder:
        db = Database(args.database_url or f"sqlite:///{Path(folder) / 'node.db'}")
        db.create_schema()
        for size in args.sizes:
            fill(db, size, rng)
            cold, warm, study, version = measure(db, size, args.queries, rng)
            print(
                f"{size:>8} {db.engine.dialect.name:>10} {cold:>9.1f} {warm:>9.2f} "
                f"{study:>9.2f} {version:>9.2f}"
            )
        db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
