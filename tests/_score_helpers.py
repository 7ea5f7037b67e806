"""A tiny hard-negatives world for the score / denoise / export / rerank tests.

``tiny_world(root, collection)`` writes training queries and a hard-negatives file whose
systems overlap (as real systems do), over the passages of ``collection`` (pids 0..N-1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.records import HardNegatives, read_collection, write_hard_negatives, write_id_text
from tasks.score import scores_table, write_table
from tests._model_helpers import tiny_texts

SYSTEMS = ("bm25", "sys-a", "sys-b")


@dataclass(frozen=True)
class World:
    collection: Path
    queries: Path
    negatives: Path
    records: list[HardNegatives]


def make_records(n_queries: int, n_passages: int, per_system: int = 8, seed: int = 3) -> list[HardNegatives]:
    """Queries 1000.. with 1-2 positives and ``per_system`` negatives per system, overlapping."""
    rng = random.Random(seed)
    records = []
    for i in range(n_queries):
        qid = 1000 + 7 * i
        pos = sorted(rng.sample(range(n_passages), rng.choice((1, 1, 2))))
        pool = [p for p in rng.sample(range(n_passages), 2 * per_system) if p not in pos]
        neg = {s: rng.sample(pool, min(per_system, len(pool))) for s in SYSTEMS}
        records.append(HardNegatives(qid, pos, neg))
    return records


def tiny_world(root: Path, collection: Path, n_queries: int = 12, per_system: int = 8) -> World:
    root.mkdir(parents=True, exist_ok=True)
    n_passages = sum(1 for _ in read_collection(collection))
    records = make_records(n_queries, n_passages, per_system)
    queries = root / "queries.train.tsv"
    write_id_text(
        queries, zip([r.qid for r in records], tiny_texts(n_queries, seed=9, max_len=8), strict=True)
    )
    negatives = root / "msmarco-hard-negatives.jsonl.gz"
    write_hard_negatives(negatives, records)
    return World(collection, queries, negatives, records)


def synthetic_scores(path: Path, records: list[HardNegatives], seed: int = 0) -> dict[tuple[int, int], float]:
    """Write a CE scores Parquet for every pair of ``records`` (no model); returns the scores."""
    rng = np.random.default_rng(seed)
    scores: dict[tuple[int, int], float] = {}
    for rec in records:
        for pid in rec.pos:
            scores[(rec.qid, pid)] = float(np.float32(rng.uniform(2, 8)))
        for negs in rec.neg.values():
            for pid in negs:
                scores.setdefault((rec.qid, pid), float(np.float32(rng.uniform(-8, 8))))
    keys = sorted(scores)
    write_table(
        path,
        scores_table(
            np.array([k[0] for k in keys]),
            np.array([k[1] for k in keys]),
            np.array([scores[k] for k in keys]),
        ),
    )
    return scores
