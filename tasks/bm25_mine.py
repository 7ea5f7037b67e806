"""Stage bm25_mine: BM25 hard negatives for every training query, and BM25 evaluation runs.

- ``paths.negatives/bm25.parquet``: for each training query (in ``queries_train`` and with a
  positive in ``qrels_train``), the top ``mine.top_k`` passages with positives removed
  (hits format: qid, rank, pid, score; score descending, ties by pid ascending).
- ``paths.runs/bm25/dev.full.trec`` and ``dl19.full.trec``: full retrieval to
  ``mine.eval_depth`` for ``queries_dev`` / ``queries_dl19``; positives are kept (evaluation).
- ``paths.metrics/bm25_mine.json``: query counts, queries that analysed to nothing (they get no
  hits and are counted, not failed), qrels rows whose pid is not in the collection (counted and
  logged: such a positive can never be retrieved), qrels qids without query text, queries/s.

Queries are searched by ``bm25.threads`` worker processes (threads for Elasticsearch; in the
stage's own process while queries x passages stays under :data:`IN_PROCESS_WORK`), or, with
``orchestration.dask_address`` set, in batches of ``bm25.query_batch`` on that Dask cluster
(:func:`search_shard`; each worker opens the index once, from a shared filesystem).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tasks.bm25_backends import Ranked, Searcher, load_pids, open_backend
from tasks.cli import run_stage, stage_parser
from tasks.config import Bm25, Config, Mine
from tasks.io import DataError, write_json
from tasks.records import (
    Query,
    hits_table,
    qrels_by_query,
    read_qrels,
    read_queries,
    write_hits,
    write_run_arrays,
)
from tasks.scaleout import executor as shard_executor
from tasks.scaleout import process_pool

log = logging.getLogger(__name__)

TAG = "bm25"
_WORKER: Searcher | None = None


def _init_worker(index_dir: Path, params: Bm25) -> None:
    global _WORKER
    _WORKER = open_backend(index_dir, params)


def _work(task: tuple[list[str], int]) -> list[Ranked]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.search(*task)


_SHARD_SEARCHERS: dict[tuple[str, Bm25], Searcher] = {}


def search_shard(index_dir: str, params: Bm25, texts: list[str], k: int) -> list[Ranked]:
    """Top ``k`` of each text: a pure shard for any executor (a Dask worker opens the index once)."""
    key = (index_dir, params)
    if key not in _SHARD_SEARCHERS:
        _SHARD_SEARCHERS[key] = open_backend(Path(index_dir), params)
    return _SHARD_SEARCHERS[key].search(texts, k)


# Below this much work (queries x passages in the index) the embedded backend searches in the
# stage's own process even when bm25.threads > 1: two spawned searchers (imports, index open)
# cost ~1 s on 2 cores, more than they save. Measured on 2 cores with the corpus of
# benchmarks/mine_compare.py (1,800 queries, 6,000 passages: 1.1e7): the stage took 1.6-1.8 s
# in process, 2.3-2.6 s with two searcher processes. Outputs are the same either way.
IN_PROCESS_WORK = 20_000_000


class QueryPool:
    """``bm25.threads`` searchers opened once and reused for every query set of the stage.

    With ``cluster`` (a Dask ``get_executor()`` or any ``concurrent.futures`` executor), the
    query batches go there instead, as :func:`search_shard` calls; results keep input order.
    ``work`` (queries x passages, when known): at most ``in_process_work`` searches in this
    process with the embedded backend (:data:`IN_PROCESS_WORK`).
    """

    def __init__(
        self,
        index_dir: Path,
        params: Bm25,
        cluster: Executor | None = None,
        work: int | None = None,
        in_process_work: int = IN_PROCESS_WORK,
    ) -> None:
        self.params = params
        self.index_dir = str(Path(index_dir).resolve())
        self.cluster = cluster
        self.searcher: Searcher | None = None
        self.pool: Executor | None = None
        small = params.backend == "embedded" and work is not None and work <= in_process_work
        if cluster is None and (params.threads == 1 or small):
            if params.threads > 1:
                log.info(
                    "bm25: searching in this process: queries x passages = %s, at most %s "
                    "(IN_PROCESS_WORK); %d searcher processes would cost more than they save",
                    f"{work:,}", f"{in_process_work:,}", params.threads,
                )  # fmt: skip
            self.searcher = open_backend(index_dir, params)
        elif cluster is None and params.backend == "embedded":  # tantivy holds the GIL: processes
            # (that end with this process, even on kill -9: see tasks.scaleout.process_pool)
            self.pool = process_pool(params.threads, initializer=_init_worker, initargs=(index_dir, params))
        elif cluster is None:  # Elasticsearch does the work: threads are enough
            self.pool = ThreadPoolExecutor(
                params.threads, initializer=_init_worker, initargs=(index_dir, params)
            )

    def __enter__(self) -> QueryPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.searcher is not None:
            self.searcher.close()
        if self.pool is not None:
            self.pool.shutdown()

    def search(self, texts: Sequence[str], k: int, desc: str) -> list[Ranked]:
        """Top ``k`` for every text, in input order, with a progress bar (queries/s)."""
        step = self.params.query_batch
        tasks = [(list(texts[i : i + step]), k) for i in range(0, len(texts), step)]
        out: list[Ranked] = []
        with tqdm(total=len(texts), desc=desc, unit="q", mininterval=2) as bar:
            results: Iterator[list[Ranked]]
            if self.cluster is not None:
                futures = [self.cluster.submit(search_shard, self.index_dir, self.params, *t) for t in tasks]
                results = (f.result() for f in futures)
            elif self.searcher is not None:
                results = (self.searcher.search(*task) for task in tasks)
            else:
                assert self.pool is not None
                results = self.pool.map(_work, tasks)
            for task, res in zip(tasks, results, strict=True):
                out.extend(res)
                bar.update(len(task[0]))
        return out


def search_all(index_dir: Path, params: Bm25, texts: Sequence[str], k: int, desc: str) -> list[Ranked]:
    """One-shot :class:`QueryPool` search (benchmarks, small callers)."""
    with QueryPool(index_dir, params) as pool:
        return pool.search(texts, k, desc)


def _qrels_report(path: Path, positives: dict[int, list[int]], pids: np.ndarray) -> int:
    all_pos = np.fromiter((p for ps in positives.values() for p in ps), dtype=np.int64)
    unknown = int((~np.isin(all_pos, pids)).sum())
    if unknown:
        log.warning("%s: %d positive(s) name pids absent from the collection (counted, kept)", path, unknown)
    return unknown


def run(
    index_dir: Path,
    queries_train: Path,
    qrels_train: Path,
    eval_queries: dict[str, Path],
    negatives_out: Path,
    runs_dir: Path,
    summary_out: Path,
    params: Bm25,
    mine: Mine,
    cluster: Executor | None = None,
    in_process_work: int = IN_PROCESS_WORK,
) -> dict:
    """Mine BM25 negatives for the training queries and write the eval runs; returns the summary.

    ``cluster``: an executor (Dask) to run the query batches on; default ``bm25.threads`` local
    processes, or this process for a small stage (``in_process_work``, see :class:`QueryPool`).
    """
    index_dir = Path(index_dir)
    pids = load_pids(index_dir)
    positives = qrels_by_query(read_qrels(qrels_train))
    if not positives:
        raise DataError(f"{qrels_train}: no positive qrels; nothing to mine")
    queries = {q.qid: q.text for q in read_queries(queries_train)}
    train = sorted(set(queries) & set(positives))
    missing_text = len(set(positives) - set(queries))
    if missing_text:
        log.warning(
            "%s: %d qrels qid(s) have no query text in %s (skipped)", qrels_train, missing_text, queries_train
        )
    if not train:
        raise DataError(
            f"{queries_train}: no query has qrels in {qrels_train}; check the two files belong together"
        )
    summary: dict = {
        "train_queries": len(train),
        "qrels_unknown_pids": _qrels_report(Path(qrels_train), positives, pids),
        "qrels_qids_without_text": missing_text,
    }

    evals = {name: list(read_queries(path)) for name, path in sorted(eval_queries.items())}
    n_queries = len(train) + sum(map(len, evals.values()))
    with QueryPool(index_dir, params, cluster, len(pids) * n_queries, in_process_work) as pool:
        _mine(pool, train, queries, positives, negatives_out, summary, mine)
        for name, evq in evals.items():
            summary[name] = _eval_run(pool, name, evq, Path(runs_dir), mine)
    write_json(summary_out, summary)
    return summary


def _mine(
    pool: QueryPool,
    train: list[int],
    queries: dict[int, str],
    positives: dict[int, list[int]],
    negatives_out: Path,
    summary: dict,
    mine: Mine,
) -> None:
    start = time.perf_counter()
    max_pos = max(len(positives[q]) for q in train)
    ranked = pool.search([queries[q] for q in train], mine.top_k + max_pos, "bm25 mine")
    secs = time.perf_counter() - start
    qids_col: list[int] = []
    pids_col: list[int] = []
    scores_col: list[float] = []
    empty = 0
    for qid, hits in zip(train, ranked, strict=True):
        pos = set(positives[qid])
        kept = [h for h in hits if h[0] not in pos][: mine.top_k]
        empty += not hits
        qids_col.extend([qid] * len(kept))
        pids_col.extend(p for p, _ in kept)
        scores_col.extend(s for _, s in kept)
    write_hits(
        negatives_out,
        hits_table(np.array(qids_col, dtype=np.int64), np.array(pids_col), np.array(scores_col)),
    )
    # timings go to the log, not the summary: a DVC output must not change from run to run
    summary.update(train_empty_result=empty, train_hits=len(qids_col))
    log.info(
        "bm25 mine: %d train queries (%d empty) in %.1f s (%.0f queries/s) -> %s",
        len(train), empty, secs, len(train) / max(secs, 1e-9), negatives_out,
    )  # fmt: skip


def _eval_run(pool: QueryPool, name: str, evq: list[Query], runs_dir: Path, mine: Mine) -> dict:
    start = time.perf_counter()
    ranked = pool.search([q.text for q in evq], mine.eval_depth, f"bm25 {name}")
    secs = time.perf_counter() - start
    sizes = np.array([len(hits) for hits in ranked], dtype=np.int64)
    qid = np.repeat(np.array([q.qid for q in evq], dtype=np.int64), sizes)
    flat = [hit for hits in ranked for hit in hits]
    pid = np.array([p for p, _ in flat], dtype=np.int64)
    score = np.array([s for _, s in flat], dtype=np.float64)
    rank = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
    order = np.lexsort((rank, qid))  # by (qid, rank): the queries file's order need not be sorted
    write_run_arrays(runs_dir / f"{name}.full.trec", qid[order], pid[order], rank[order], score[order], TAG)
    log.info(
        "bm25 %s: %d queries in %.1f s (%.0f queries/s)", name, len(evq), secs, len(evq) / max(secs, 1e-9)
    )
    return {"queries": len(evq), "empty_result": sum(not h for h in ranked)}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.bm25_mine",
        "Mine BM25 hard negatives (top mine.top_k, positives removed) for every training query "
        "into paths.negatives/bm25.parquet, and write BM25 runs of the dev and TREC DL 2019 queries "
        "(depth mine.eval_depth) into paths.runs/bm25/. Needs the index of 'python -m tasks.bm25_index'.",
        "python -m tasks.bm25_mine --params params.yaml",
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        with contextlib.ExitStack() as stack:
            cluster = None
            if cfg.orchestration.dask_address:  # local runs keep bm25.threads processes
                cluster = stack.enter_context(shard_executor(cfg.orchestration))
            run(
                index_dir=cfg.path("bm25_index"),
                queries_train=cfg.input_path("queries_train"),
                qrels_train=cfg.input_path("qrels_train"),
                eval_queries=cfg.eval_queries(),
                negatives_out=cfg.path("negatives") / "bm25.parquet",
                runs_dir=cfg.path("runs") / TAG,
                summary_out=cfg.path("metrics") / "bm25_mine.json",
                params=cfg.bm25,
                mine=cfg.mine,
                cluster=cluster,
            )

    return run_stage(args.params, work)


if __name__ == "__main__":
    sys.exit(main())
