"""mine@<system>: dense search over one system's embeddings; hard negatives and eval runs.

Reads ``paths.embeddings/<system>/`` (from ``tasks.encode``) and writes

- ``paths.negatives/<system>.parquet``: top ``mine.top_k`` passages per training query with
  qrels, positives removed (the hits format, ties broken by pid ascending);
- ``paths.runs/<system>/{dev,dl19}.full.trec``: full retrieval, depth ``mine.eval_depth``;
- ``paths.runs/<system>/{dev,dl19}.rerank.trec``: the set's re-ranking candidates (top
  ``evaluate.rerank_depth`` of BM25's ``<set>.full.trec``, or for dev of the official
  ``top1000.dev`` with ``evaluate.dev_candidates: top1000``) re-scored by this model;
- ``paths.metrics/mine-<system>.json``: counts and queries/s.

Search (``search.index``): ``flat`` is exact inner product (FAISS ``IndexFlatIP`` per corpus
shard on CPU; chunked torch matmul on CUDA), ``hnsw`` and ``ivfpq`` are approximate FAISS
indexes for large CPU runs. Vectors are L2-normalised for ``score: cos`` systems. Memory stays
bounded: queries go in chunks of ``search.query_chunk`` and exact search visits one corpus shard
at a time, merging per-shard top-k (never a full queries x corpus matrix).

A system skipped at encode time writes a zero-row hits file with Parquet metadata
``skipped=<reason>`` and no runs (its runs directory holds only ``SKIPPED.txt``).

    python -m tasks.dense_mine --system smoke-bi-cls-dot
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from tasks.accel import DevicePref, configure_threads, resolve
from tasks.cli import run_stage, stage_parser
from tasks.config import DenseSystem, Mine, Search
from tasks.encode import Embeddings, load_part, read_manifest
from tasks.io import DataError, atomic_path, write_json, write_text_atomic
from tasks.records import Hit, hits_table, qrels_by_query, read_candidates, read_qrels, write_hits, write_run

log = logging.getLogger(__name__)

EVAL_SETS = ("dev", "dl19")


# --------------------------------------------------------------------------- search
def _prep(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return out


def _order(scores: np.ndarray, pids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first ``k`` by score descending then pid ascending."""
    idx = np.lexsort((pids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, idx, 1), np.take_along_axis(pids, idx, 1)


def _exact_rows(q: np.ndarray, c: np.ndarray, cids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference exact top-k of a few rows (numpy), ties by pid."""
    s = q @ c.T
    return _order(s, np.broadcast_to(cids, s.shape), k)


def _faiss():
    """faiss, with exact search on the BLAS path for any query chunk of 20 or more queries.

    faiss 1.15 ships ``distance_compute_blas_threshold = 128000``; below it (in practice, chunks of
    fewer than ~384 queries) ``IndexFlatIP.search`` takes a scalar path. Measured here, 2 cores,
    25,000 x 384 corpus, top-51: 256 queries 0.57 s with the shipped value, 0.047 s with 20 (12x),
    the same results.
    """
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 20
    return faiss


def _shard_topk_cpu(q: np.ndarray, c: np.ndarray, cids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    faiss = _faiss()
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    kk = min(k + 1, len(c))
    scores, idx = index.search(q, kk)
    pids = cids[idx]
    if kk > k:  # the k-th and (k+1)-th tie: the cut is ambiguous; settle those rows exactly
        ambiguous = np.flatnonzero(scores[:, k - 1] == scores[:, k])
        scores, pids = _order(scores, pids, k)
        for r in ambiguous:
            scores[r], pids[r] = (a[0] for a in _exact_rows(q[r : r + 1], c, cids, k))
        return scores, pids
    return _order(scores, pids, k)


def _shard_topk_cuda(q: np.ndarray, c: np.ndarray, cids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    qt = torch.from_numpy(q).to("cuda")
    ct = torch.from_numpy(c).to("cuda")
    kk = min(k + 1, len(c))
    scores_t, idx_t = torch.topk(qt @ ct.T, kk, dim=1)
    scores, idx = scores_t.cpu().numpy(), idx_t.cpu().numpy()
    pids = cids[idx]
    if kk > k:
        ambiguous = np.flatnonzero(scores[:, k - 1] == scores[:, k])
        scores, pids = _order(scores, pids, k)
        for r in ambiguous:
            scores[r], pids[r] = (a[0] for a in _exact_rows(q[r : r + 1], c, cids, k))
        return scores, pids
    return _order(scores, pids, k)


def exact_search(
    queries: np.ndarray, corpus: Embeddings, k: int, normalize: bool, query_chunk: int, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, pids) per query; ties by pid; one corpus shard in memory at a time."""
    k = min(k, len(corpus.ids))
    topk = _shard_topk_cuda if device == "cuda" else _shard_topk_cpu
    q_all = _prep(queries, normalize)
    best_s = np.full((len(q_all), k), -np.inf, dtype=np.float32)
    best_p = np.full((len(q_all), k), np.iinfo(np.int64).max, dtype=np.int64)
    for cids, vec in corpus.iter_shards():
        c = _prep(vec, normalize)
        kk = min(k, len(c))
        for start in range(0, len(q_all), query_chunk):
            sl = slice(start, start + query_chunk)
            s, p = topk(q_all[sl], c, cids, kk)
            best_s[sl], best_p[sl] = _order(np.hstack([best_s[sl], s]), np.hstack([best_p[sl], p]), k)
    return best_s, best_p


def build_ann(corpus: Embeddings, params: Search, normalize: bool, seed: int = 1234):
    """An approximate FAISS index (``hnsw`` or ``ivfpq``) over the whole corpus, and the pid array."""
    import faiss

    dim, n = corpus.dim, len(corpus.ids)
    index: Any
    if params.index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = params.hnsw_ef_search
    elif params.index == "ivfpq":
        nlist = min(params.ivf_nlist, max(1, n // 39))
        pq_m = max(m for m in range(1, min(params.pq_m, dim) + 1) if dim % m == 0)
        nbits = min(8, max(1, int(np.log2(max(2, n // 39)))))
        if (nlist, pq_m, nbits) != (params.ivf_nlist, params.pq_m, 8):
            log.warning(
                "ivfpq on %d x %d: using nlist=%d pq_m=%d nbits=%d (params ask nlist=%d pq_m=%d)",
                n, dim, nlist, pq_m, nbits, params.ivf_nlist, params.pq_m,
            )  # fmt: skip
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        train = _prep(corpus.load(), normalize)
        index.train(train)
        index.nprobe = min(params.ivf_nprobe, nlist)
    else:
        raise ValueError(f"search.index: {params.index!r} is not an approximate index (hnsw | ivfpq)")
    for _, vec in corpus.iter_shards():
        index.add(_prep(vec, normalize))
    return index


def ann_search(index, pids: np.ndarray, queries: np.ndarray, k: int, normalize: bool, query_chunk: int):
    k = min(k, len(pids))
    q_all = _prep(queries, normalize)
    out_s = np.empty((len(q_all), k), dtype=np.float32)
    out_p = np.empty((len(q_all), k), dtype=np.int64)
    for start in range(0, len(q_all), query_chunk):
        sl = slice(start, start + query_chunk)
        s, idx = index.search(q_all[sl], k)
        p = np.where(idx >= 0, pids[np.maximum(idx, 0)], np.iinfo(np.int64).max)
        s = np.where(idx >= 0, s, -np.inf).astype(np.float32)
        out_s[sl], out_p[sl] = _order(s, p, k)
    return out_s, out_p


class Searcher:
    """One system's corpus, searched with the configured index."""

    def __init__(self, corpus: Embeddings, params: Search, normalize: bool, device: str):
        self.corpus, self.params, self.normalize, self.device = corpus, params, normalize, device
        self._ann = None
        if params.index != "flat":
            t0 = time.perf_counter()
            self._ann = build_ann(corpus, params, normalize)
            log.info(
                "built %s index over %d passages in %.1f s",
                params.index,
                len(corpus.ids),
                time.perf_counter() - t0,
            )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._ann is not None:
            return ann_search(self._ann, self.corpus.ids, queries, k, self.normalize, self.params.query_chunk)
        return exact_search(queries, self.corpus, k, self.normalize, self.params.query_chunk, self.device)


# --------------------------------------------------------------------------- stage
def _valid(scores: np.ndarray, pids: np.ndarray) -> np.ndarray:
    return np.isfinite(scores) & (pids != np.iinfo(np.int64).max)


def write_skipped(negatives_out: Path, reason: str) -> None:
    """Zero-row hits with Parquet key-value metadata ``skipped=<reason>``."""
    table = hits_table(np.zeros(0), np.zeros(0), np.zeros(0))
    table = table.replace_schema_metadata({"skipped": reason})
    # tasks.records.write_hits drops schema metadata (store_schema=False); keep it here.
    with atomic_path(negatives_out) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def rerank(
    corpus: Embeddings, qids: np.ndarray, qvecs: np.ndarray, candidates: Path, depth: int, normalize: bool
) -> list[Hit]:
    """Re-score each query's top ``depth`` candidates (a BM25 run or ``top1000``) with this model."""
    cands: dict[int, list[int]] = defaultdict(list)
    for h in read_candidates(candidates):
        if h.rank <= depth:
            cands[h.qid].append(h.pid)
    qrow = {int(q): i for i, q in enumerate(qids)}
    missing = sorted(set(cands) - set(qrow))
    if missing:
        raise DataError(f"{candidates}: {len(missing)} qid(s) (e.g. {missing[0]}) have no query embedding")
    order = np.argsort(corpus.ids, kind="stable")
    sorted_ids = corpus.ids[order]
    all_pids = np.fromiter((p for q in sorted(cands) for p in cands[q]), dtype=np.int64)
    pos = np.searchsorted(sorted_ids, all_pids)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    unknown = sorted_ids[pos] != all_pids
    if unknown.any():
        raise DataError(f"{candidates}: pid {all_pids[unknown][0]} is not in the encoded corpus")
    rows = order[pos]
    vecs = np.empty((len(rows), corpus.dim), dtype=np.float32)
    start = 0
    for _, vec in corpus.iter_shards():  # gather one shard at a time
        end = start + len(vec)
        sel = np.flatnonzero((rows >= start) & (rows < end))
        vecs[sel] = vec[rows[sel] - start]
        start = end
    vecs = _prep(vecs, normalize)
    q = _prep(qvecs, normalize)
    hits: list[Hit] = []
    offset = 0
    for qid in sorted(cands):
        n = len(cands[qid])
        scores = vecs[offset : offset + n] @ q[qrow[qid]]
        pids = all_pids[offset : offset + n]
        offset += n
        for rank, i in enumerate(np.lexsort((pids, -scores)), 1):
            hits.append(Hit(qid, int(pids[i]), rank, float(scores[i])))
    return hits


def run(
    system: str,
    params: DenseSystem,
    search: Search,
    mine: Mine,
    rerank_depth: int,
    emb_dir: Path,
    qrels_train: Path,
    candidates: dict[str, Path],
    negatives_out: Path,
    runs_dir: Path,
    summary_out: Path | None = None,
    device: DevicePref = "auto",
) -> dict[str, Any]:
    """Mine negatives for the training queries and write the dev/DL19 runs; returns the summary."""
    manifest = read_manifest(emb_dir)
    if manifest.get("skipped") or params.model is None:
        reason = manifest.get("skipped") or "no public weights"
        write_skipped(Path(negatives_out), reason)
        # DVC needs the declared runs directory to exist: it holds a note, and no .trec file
        with write_text_atomic(Path(runs_dir) / "SKIPPED.txt", gz=False) as fh:
            fh.write(
                f"{system}: skipped ({reason}); no runs. Set systems.{system}.model to supply weights.\n"
            )
        log.warning("mine %s skipped (%s): zero-row hits written, no runs", system, reason)
        summary: dict[str, Any] = {"skipped": reason}
        if summary_out:
            write_json(summary_out, summary)
        return summary
    if manifest.get("score") != params.score:
        raise DataError(f"{emb_dir}/manifest.json: score {manifest.get('score')!r} != systems.{system}.score")
    for name in EVAL_SETS:  # fail before any work, not after mining
        read_candidates(candidates[name])  # lazy: only checks the file is there, naming its stage
    normalize = params.score == "cos"
    dev = "cuda" if resolve(device, "fp32").device == "cuda" and search.index == "flat" else "cpu"
    threads = configure_threads()
    import faiss

    faiss.omp_set_num_threads(threads)
    corpus = load_part(emb_dir, "corpus")
    searcher = Searcher(corpus, search, normalize, dev)

    positives = qrels_by_query(read_qrels(qrels_train))
    if not positives:
        raise DataError(f"{qrels_train}: no positive qrels; nothing to mine")
    train = load_part(emb_dir, "train")
    row_of = {int(q): i for i, q in enumerate(train.ids)}
    qids = np.array(sorted(set(row_of) & set(positives)), dtype=np.int64)
    if not len(qids):
        raise DataError(f"{qrels_train}: no training query with qrels has an embedding in {emb_dir}")
    summary = {"train_queries": len(qids), "qrels_qids_without_text": len(set(positives) - set(row_of))}
    qvecs = train.load()[[row_of[int(q)] for q in qids]]
    max_pos = max(len(positives[int(q)]) for q in qids)
    t0 = time.perf_counter()
    qid_col, pid_col, score_col = [], [], []
    chunk = max(search.query_chunk, 1)
    for start in tqdm(range(0, len(qids), chunk), desc=f"mine {system}", unit="chunk", dynamic_ncols=True):
        s, p = searcher.search(qvecs[start : start + chunk], mine.top_k + max_pos)
        for qid, srow, prow in zip(qids[start : start + chunk], s, p, strict=True):
            pos = set(positives[int(qid)])
            keep = [i for i in np.flatnonzero(_valid(srow, prow)) if int(prow[i]) not in pos][: mine.top_k]
            qid_col.extend([int(qid)] * len(keep))
            pid_col.extend(prow[keep].tolist())
            score_col.extend(srow[keep].tolist())
    secs = time.perf_counter() - t0
    write_hits(
        negatives_out, hits_table(np.array(qid_col, dtype=np.int64), np.array(pid_col), np.array(score_col))
    )
    summary.update(train_hits=len(qid_col))  # timings only in the log: DVC outputs stay byte-stable
    log.info(
        "mine %s: %d training queries, %d hits in %.1f s (%.0f queries/s) -> %s",
        system, len(qids), len(qid_col), secs, len(qids) / max(secs, 1e-9), negatives_out,
    )  # fmt: skip

    for name in EVAL_SETS:
        part = load_part(emb_dir, name)
        order = np.argsort(part.ids, kind="stable")
        eq, ev = part.ids[order], part.load()[order]
        t0 = time.perf_counter()
        s, p = searcher.search(ev, mine.eval_depth)
        secs = time.perf_counter() - t0
        full = [
            Hit(int(qid), int(prow[i]), r, float(srow[i]))
            for qid, srow, prow in zip(eq, s, p, strict=True)
            for r, i in enumerate(np.flatnonzero(_valid(srow, prow)), 1)
        ]
        write_run(Path(runs_dir) / f"{name}.full.trec", full, system)
        rr = rerank(corpus, eq, ev, Path(candidates[name]), rerank_depth, normalize)
        write_run(Path(runs_dir) / f"{name}.rerank.trec", rr, system)
        log.info("mine %s %s: %d queries in %.1f s", system, name, len(eq), secs)
        summary[name] = {"queries": len(eq), "rerank_queries": len({h.qid for h in rr})}
    summary["index"] = search.index
    if summary_out:
        write_json(summary_out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.dense_mine",
        "Search one system's embeddings (from tasks.encode): top mine.top_k hard negatives per training "
        "query (positives removed) into paths.negatives/<system>.parquet, and dev/DL19 runs (full "
        "retrieval and re-ranking of the candidates, evaluate.dev_candidates) into paths.runs/<system>/.",
        "python -m tasks.dense_mine --system smoke-bi-cls-dot",
    )
    parser.add_argument("--system", required=True, help="a key of 'systems' in params.yaml")
    args = parser.parse_args(argv)
    return run_stage(
        args.params,
        lambda cfg: run(
            args.system,
            cfg.system(args.system),
            cfg.search,
            cfg.mine,
            cfg.evaluate.rerank_depth,
            emb_dir=cfg.path("embeddings") / args.system,
            qrels_train=cfg.input_path("qrels_train"),
            candidates={name: cfg.candidates(name) for name in EVAL_SETS},
            negatives_out=cfg.path("negatives") / f"{args.system}.parquet",
            runs_dir=cfg.path("runs") / args.system,
            summary_out=cfg.path("metrics") / f"mine-{args.system}.json",
            device=cfg.encode.device,
        ),
        lock=f"mine@{args.system}",  # the dvc.yaml stage name: systems may run side by side
    )


if __name__ == "__main__":
    sys.exit(main())
