"""Evaluation of a full-size MS MARCO dev run: tasks.metrics vs pytrec_eval, time and agreement.

A synthetic run with the shape of the real one (6,980 queries x 1,000 hits, int pids out of
8.8M, scores rounded to 4 decimals so that ties occur) and dev-like qrels (1-2 relevant per
query, some of them retrieved) are evaluated by both, in one process:

    .venv/bin/python benchmarks/eval_bench.py [--queries 6980] [--depth 1000] [--seed 13]

Prints a side-by-side table: seconds for each (building pytrec_eval's dicts counted apart),
the speed ratio, and the largest absolute per-query difference of every measure.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.metrics import Qrels, Run, msmarco_mrr, trec_eval  # noqa: E402

MEASURES = ["recip_rank", "ndcg_cut_10", "recall_10", "recall_50", "recall_100", "recall_1000", "map", "P_10"]
PYTREC = {"recip_rank", "ndcg_cut.10", "recall.10", "recall.50", "recall.100", "recall.1000", "map", "P.10"}


def make(queries: int, depth: int, seed: int) -> tuple[Run, Qrels]:
    rng = np.random.default_rng(seed)
    qid = np.repeat(np.arange(queries, dtype=np.int64) + 1_000_000, depth)
    pid = rng.integers(0, 8_841_823, size=queries * depth, dtype=np.int64)
    score = np.round(rng.normal(size=queries * depth), 4)
    # Distinct pids per query: resolve the rare collisions by shifting.
    for _ in range(5):
        order = np.lexsort((pid, qid))
        dup = np.flatnonzero((qid[order][1:] == qid[order][:-1]) & (pid[order][1:] == pid[order][:-1]))
        if not len(dup):
            break
        pid[order[dup + 1]] = rng.integers(0, 8_841_823, size=len(dup))
    order = np.lexsort((pid, -score, qid))
    qid, pid, score = qid[order], pid[order], score[order]
    rank = np.tile(np.arange(1, depth + 1), queries)
    nrel = rng.integers(1, 3, size=queries)
    rq = np.repeat(np.arange(queries, dtype=np.int64) + 1_000_000, nrel)
    # Half of the relevant passages are retrieved (at a random depth), half are not.
    retrieved = rng.random(len(rq)) < 0.5
    at = rng.integers(0, depth, size=len(rq))
    rp = np.where(retrieved, pid[(rq - 1_000_000) * depth + at], 9_000_000 + np.arange(len(rq)))
    rp = np.where((rp == np.roll(rp, 1)) & (rq == np.roll(rq, 1)), 9_500_000 + np.arange(len(rq)), rp)
    return Run.from_arrays(qid, pid, score, rank), Qrels.from_arrays(rq, rp, np.ones(len(rq), dtype=np.int64))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=6980)
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    import pytrec_eval

    run, qrels = make(args.queries, args.depth, args.seed)
    rows = len(run.qid)

    t0 = time.perf_counter()
    ours = trec_eval(run, qrels, MEASURES, relevance_level=1)
    mrr = msmarco_mrr(run, qrels)
    t_ours = time.perf_counter() - t0

    shuffle = np.random.default_rng(args.seed + 1).permutation(rows)
    shuffled = Run.from_arrays(run.qid[shuffle], run.docno[shuffle], run.score[shuffle], run.rank[shuffle])
    t0 = time.perf_counter()
    ours_shuffled = trec_eval(shuffled, qrels, MEASURES, relevance_level=1)
    msmarco_mrr(shuffled, qrels)
    t_shuffled = time.perf_counter() - t0
    assert all(np.array_equal(ours.per_query[m], ours_shuffled.per_query[m]) for m in MEASURES)

    t0 = time.perf_counter()
    q_rel: dict[str, dict[str, int]] = {}
    for q, d in zip(qrels.qid.tolist(), qrels.docno.tolist(), strict=True):
        q_rel.setdefault(str(q), {})[str(d)] = 1
    q_run: dict[str, dict[str, float]] = {}
    for q, d, s in zip(run.qid.tolist(), run.docno.tolist(), run.score.tolist(), strict=True):
        q_run.setdefault(str(q), {})[str(d)] = s
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = pytrec_eval.RelevanceEvaluator(q_rel, PYTREC).evaluate(q_run)
    t_pytrec = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    qids = [str(q) for q in ours.qids.tolist()]
    print(f"run: {args.queries} queries x {args.depth} hits = {rows:,} rows; qrels {len(qrels.qid):,} rows")
    print()
    print("| measure | tasks.metrics mean | pytrec_eval mean | max abs diff per query |")
    print("|---|---:|---:|---:|")
    worst = 0.0
    for name in MEASURES:
        a = ours.per_query[name]
        b = np.array([theirs[q][name] for q in qids])
        diff = float(np.abs(a - b).max())
        worst = max(worst, diff)
        print(f"| {name} | {a.mean():.6f} | {b.mean():.6f} | {diff:.1e} |")
    # MRR@10 (msmarco_eval) vs trec_eval's recip_rank cut at 10: the run's ranks follow the
    # score order with ties by pid ascending, trec_eval breaks ties by docno descending.
    rr10 = np.array([theirs[q]["recip_rank"] if theirs[q]["recip_rank"] >= 0.1 else 0.0 for q in qids])
    print(
        f"| MRR@10 (msmarco_eval rule) vs recip_rank cut at 10 | {mrr.mrr:.6f} | {rr10.mean():.6f} | "
        f"{abs(mrr.mrr - rr10.mean()):.1e} (mean; ties ordered differently) |"
    )
    print()
    print("| tool | seconds | ratio |")
    print("|---|---:|---:|")
    print(f"| tasks.metrics (trec_eval measures + MRR@10) | {t_ours:.2f} | 1.00 |")
    print(f"| tasks.metrics, rows shuffled (full sort path) | {t_shuffled:.2f} | {t_shuffled / t_ours:.2f} |")
    print(f"| pytrec_eval (evaluate only) | {t_pytrec:.2f} | {t_pytrec / t_ours:.2f} |")
    print(
        f"| pytrec_eval (build dicts + evaluate) | {t_build + t_pytrec:.2f} "
        f"| {(t_build + t_pytrec) / t_ours:.2f} |"
    )
    print()
    print(f"peak RSS of this process: {peak_mib:,.0f} MiB; largest per-query difference: {worst:.1e}")
    return 0 if worst < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
