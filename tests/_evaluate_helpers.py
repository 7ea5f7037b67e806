"""Shared test data for the evaluation tests: reference fixtures and small synthetic runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.metrics import Qrels, Run
from tasks.records import HITS_SCHEMA, Hit, Qrel, hits_table, write_hits, write_qrels, write_run

ROOT = Path(__file__).resolve().parent.parent


def fixture_dir(name: str) -> Path:
    """``tests/fixtures/<name>`` if vendored, else the shared ``../shared/fixtures/<name>``."""
    for base in (ROOT / "tests" / "fixtures", ROOT.parent / "shared" / "fixtures"):
        if (base / name).is_dir():
            return base / name
    pytest.fail(f"reference fixtures {name!r} not found under tests/fixtures or ../shared/fixtures")


def read_trec_results(path: Path) -> Run:
    """trec_eval's own results files (string docnos such as FR940202-2-00150)."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return Run.from_arrays(
        [r[0] for r in rows], [r[2] for r in rows], [float(r[4]) for r in rows], [int(r[3]) for r in rows]
    )


def read_trec_qrels(path: Path) -> Qrels:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return Qrels.from_arrays([r[0] for r in rows], [r[2] for r in rows], [int(r[3]) for r in rows])


def read_all_lines(text: str) -> dict[str, str]:
    """The ``all`` (summary) lines of trec_eval output: measure -> printed value."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "all":
            out[parts[0]] = parts[2]
    return out


def synthetic(
    n_queries: int, depth: int, n_docs: int, seed: int, graded: bool = True, tie_every: int = 0
) -> tuple[Run, Qrels]:
    """A random run (scores rounded so that ties occur) and qrels over int docnos."""
    rng = np.random.default_rng(seed)
    qids, docs, scores = [], [], []
    for q in range(n_queries):
        d = rng.choice(n_docs, size=depth, replace=False)
        s = rng.random(depth)
        if tie_every:
            s = np.round(s * tie_every) / tie_every
        qids.append(np.full(depth, 1000 + q))
        docs.append(d)
        scores.append(s)
    qid, doc, score = np.concatenate(qids), np.concatenate(docs), np.concatenate(scores)
    order = np.lexsort((doc, -score, qid))
    qid, doc, score = qid[order], doc[order], score[order]
    starts = np.r_[0, np.flatnonzero(np.diff(qid)) + 1]
    rank = np.arange(len(qid)) - np.repeat(starts, np.diff(np.r_[starts, len(qid)])) + 1
    run = Run.from_arrays(qid, doc, score, rank)
    jq, jd, jr = [], [], []
    for q in range(n_queries):
        judged = rng.choice(n_docs, size=min(n_docs, 30), replace=False)
        rel = rng.integers(0, 4 if graded else 2, size=len(judged))
        jq.append(np.full(len(judged), 1000 + q))
        jd.append(judged)
        jr.append(rel)
    return run, Qrels.from_arrays(np.concatenate(jq), np.concatenate(jd), np.concatenate(jr))


def write_skipped_hits(path: Path, reason: str) -> None:
    table = pa.table(
        {c: [] for c in HITS_SCHEMA.names}, schema=HITS_SCHEMA.with_metadata({"skipped": reason})
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def make_project(tmp: Path, with_scores: bool = True) -> dict[str, Path]:
    """A small evaluation input tree: runs, qrels, negatives, CE scores, hard negatives."""
    import gzip
    import json

    paths = {
        "runs": tmp / "runs",
        "negatives": tmp / "negatives",
        "scores": tmp / "scores" / "ce-scores.parquet",
        "hard_negatives": tmp / "out" / "msmarco-hard-negatives.jsonl.gz",
        "qrels_dev": tmp / "raw" / "qrels.dev.small.tsv",
        "qrels_dl19": tmp / "raw" / "2019qrels-pass.txt",
        "metrics": tmp / "metrics",
        "report": tmp / "report",
    }
    # dev: queries 1..6, one relevant each (pid = 10 * qid); DL19: queries 101, 102 graded.
    write_qrels(paths["qrels_dev"], [Qrel(q, 10 * q, 1) for q in range(1, 7)])
    dl19 = [
        Qrel(101, 1, 3),
        Qrel(101, 2, 2),
        Qrel(101, 3, 1),
        Qrel(101, 4, 0),
        Qrel(102, 5, 2),
        Qrel(102, 6, 1),
    ]
    write_qrels(paths["qrels_dl19"], dl19, sep=" ")

    def hits(qid: int, pids: list[int]) -> list[Hit]:
        return [Hit(qid, p, i + 1, float(100 - i)) for i, p in enumerate(pids)]

    # bm25: relevant at rank 1 for q1, rank 3 for q2, rank 11 for q3, missing for q4..q6.
    bm25_dev = hits(1, [10, 7, 8]) + hits(2, [21, 22, 20]) + hits(3, [31 + i for i in range(10)] + [30])
    write_run(paths["runs"] / "bm25" / "dev.full.trec", bm25_dev, "bm25")
    write_run(paths["runs"] / "bm25" / "dl19.full.trec", hits(101, [3, 1, 9, 2]) + hits(102, [6, 5]), "bm25")
    dense_dev = [h for q in range(1, 7) for h in hits(q, [10 * q + 1, 10 * q])]
    write_run(paths["runs"] / "dense-a" / "dev.full.trec", dense_dev, "dense-a")
    write_run(paths["runs"] / "dense-a" / "dev.rerank.trec", hits(1, [10, 7]), "dense-a")
    write_run(
        paths["runs"] / "dense-a" / "dl19.full.trec", hits(101, [1, 2, 3]) + hits(102, [5, 6]), "dense-a"
    )
    write_run(paths["runs"] / "cross-encoder" / "dl19.rerank.trec", hits(101, [2, 1]) + hits(102, [5]), "ce")

    write_hits(
        paths["negatives"] / "bm25.parquet", hits_table([1, 1, 1, 2, 2], [7, 8, 9, 22, 23], [3, 2, 1, 2, 1])
    )
    write_hits(paths["negatives"] / "dense-a.parquet", hits_table([1, 1, 2, 3], [7, 5, 22, 33], [2, 1, 1, 1]))
    write_skipped_hits(
        paths["negatives"] / "dense-b.parquet", "no public weights (set systems.dense-b.model)"
    )

    if with_scores:
        table = pa.table(
            {
                "qid": pa.array([1, 1, 1, 2, 2, 2], pa.int64()),
                "pid": pa.array([7, 8, 10, 20, 22, 23], pa.int64()),
                "score": pa.array([-2.0, -1.0, 5.0, 4.0, -3.0, 0.5], pa.float32()),
            }
        )
        paths["scores"].parent.mkdir(parents=True)
        pq.write_table(table, paths["scores"])
        paths["hard_negatives"].parent.mkdir(parents=True)
        with gzip.open(paths["hard_negatives"], "wt") as fh:
            fh.write(json.dumps({"qid": 1, "pos": [10], "neg": {"bm25": [7, 8], "dense-a": [7]}}) + "\n")
            fh.write(json.dumps({"qid": 2, "pos": [20], "neg": {"bm25": [22, 23]}}) + "\n")
    return paths
