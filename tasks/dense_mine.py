"""mine@<system>: dense search over one system's embeddings; hard negatives and eval runs.

Reads ``paths.embeddings/<system>/`` (from ``tasks.encode``) and writes

- ``paths.negatives/<system>.parquet``: top ``mine.top_k`` passages per training query with
  qrels, positives removed (the hits format, ties broken by pid ascending);
- ``paths.runs/<system>/{dev,dl19}.full.trec``: full retrieval, depth ``mine.eval_depth``;
- ``paths.runs/<system>/{dev,dl19}.rerank.trec``: the set's re-ranking candidates re-scored by
  this model: the top ``evaluate.rerank_depth`` of BM25's ranked ``<set>.full.trec``, or with
  ``evaluate.dev_candidates`` / ``evaluate.dl19_candidates: top1000`` EVERY candidate of the
  official list (``top1000.dev``, ``msmarco-passagetest2019-top1000.tsv``: random order, so no
  depth applies; :func:`tasks.records.read_candidates`);
- ``paths.metrics/mine-<system>.json``: counts (with, per set, what was re-ranked: the candidate
  file, ordered or not, depth, candidates listed and re-ranked).

Search (``search.index``): ``flat`` is exact inner product (:func:`search_sets`), ``hnsw`` and
``ivfpq`` are approximate FAISS indexes, built once per system. Vectors are L2-normalised for
``score: cos`` systems. Flat search makes ONE pass over the corpus per system: blocks of whole
shards of at most ``search.memory_mb`` float32 (the whole corpus when it fits) are each read,
converted and normalised once and, on CUDA, uploaded once; every query chunk
(``search.query_chunk``) of the training, dev and DL19 sets then streams past the block, and the
re-ranking candidates' vectors are gathered on the way. Per query the float32 matmul keeps the
best few more than k, rescored in float64 while their block is resident; results are ranked by
the float64 score rounded to float32, ties by pid, identical on CPU and CUDA, for any block size,
tile, thread count or BLAS (an error bound decides when a query must be searched again). Memory:
one block, the queries, and per query k + a margin candidates (never a queries x corpus matrix).

A system skipped at encode time writes a zero-row hits file with Parquet metadata
``skipped=<reason>`` and no runs (its runs directory holds only ``SKIPPED.txt``).

    python -m tasks.dense_mine --system smoke-bi-cls-dot
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from tasks.accel import DevicePref, cpu_count, cuda_possible, resolve, thread_count
from tasks.cli import run_stage, stage_parser
from tasks.config import DenseSystem, Mine, Search
from tasks.encode import Embeddings, load_part, read_manifest
from tasks.io import DataError, atomic_path, record_work, write_json, write_text_atomic
from tasks.mine_refresh import fingerprint, incremental_search
from tasks.records import (
    Candidates,
    RunArrays,
    check_candidates,
    hits_table,
    qrels_by_query,
    read_candidates,
    read_qrels,
    write_hits,
    write_run_arrays,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- exact search
MAX_PID = np.iinfo(np.int64).max
DEVICES = ("cpu", "cuda", "torch-cpu")
CPU_TILE_ROWS = (
    512  # corpus rows per CPU matmul: x 1024 queries = 2 MiB of float32 scores, in cache when scanned
)
CUDA_TILE_ROWS = 65536
DEFAULT_MEMORY_MB = 4096  # search.memory_mb


def _prep(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    """float32, L2-normalised for cos systems; row by row, so a row's values never depend on its batch."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return out


def _order(scores: np.ndarray, pids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first ``k`` by score descending then pid ascending."""
    idx = np.lexsort((pids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, idx, 1), np.take_along_axis(pids, idx, 1)


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


def fp32_dot_error(dim: int) -> float:
    """``e`` with ``|fl32(q.c) - q.c| <= e |q| |c|`` for any summation order, plus float64's own.

    gamma_d = d u / (1 - d u) bounds a float32 dot product of length d however a BLAS or cuBLAS
    splits and orders the sum (Higham, *Accuracy and Stability of Numerical Algorithms*, 3.1),
    and by Cauchy-Schwarz sum |q_i c_i| <= |q| |c|. The float64 term covers the exact rescoring.
    """
    u32, u64 = 2.0**-24, 2.0**-53
    return dim * u32 / (1 - dim * u32) + dim * u64 / (1 - dim * u64)


def _norms64(x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x))
    for a in range(0, len(x), 16384):
        out[a : a + 16384] = np.linalg.norm(x[a : a + 16384].astype(np.float64), axis=1)
    return out


def _max_norm(x: np.ndarray) -> float:
    """An upper bound of the largest row norm (float32 sums of squares, widened by their error)."""
    if not len(x):
        return 0.0
    sq = max(
        float(np.einsum("ij,ij->i", x[a : a + 65536], x[a : a + 65536]).max())
        for a in range(0, len(x), 65536)
    )
    return float(np.sqrt(sq * (1 + 2 * fp32_dot_error(x.shape[1]))))


def _pids(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, ids[np.maximum(rows, 0)], MAX_PID)


class _NumpyBackend:
    """``cpu``: one single-threaded sgemm per (corpus tile x query chunk), query chunks in parallel.

    ``workers`` threads each take whole query chunks (numpy and BLAS release the GIL), so the
    threshold scan runs on every core and no BLAS thread pool synchronises per tile. A tile is
    (corpus rows x queries): the per-query threshold then broadcasts along contiguous rows.
    """

    def __init__(self, workers: int, tile_rows: int):
        self.workers, self.tile_rows = max(1, workers), tile_rows
        self._local = threading.local()

    def context(self) -> contextlib.AbstractContextManager:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, user_api="blas")

    def block(self, c: np.ndarray) -> np.ndarray:
        return c

    def queries(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return q.astype(np.float64), np.ascontiguousarray(q.T)

    def _buffers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf[0]) < size:
            buf = self._local.buf = (np.empty(size, np.float32), np.empty(size, bool))
        return buf

    def candidates(self, qh, bh, lo: int, hi: int, thr: np.ndarray, kth: int):
        qt = qh[1]
        m, w = qt.shape[1], hi - lo
        scores, mask = self._buffers(w * m)
        tile = scores[: w * m].reshape(w, m)
        np.dot(bh[lo:hi], qt, out=tile)
        if kth:
            thr = np.maximum(thr, np.partition(tile, w - kth, axis=0)[w - kth])
        hit = mask[: w * m].reshape(w, m)
        np.greater_equal(tile, thr, out=hit)
        flat = np.flatnonzero(hit)
        col, qi = np.divmod(flat, m)
        return qi, col, tile.ravel()[flat]

    def exact(self, qh, bh, qi: np.ndarray, col: np.ndarray) -> np.ndarray:
        q64 = qh[0]
        out = np.empty(len(qi))
        for a in range(0, len(qi), 8192):
            i, j = qi[a : a + 8192], col[a : a + 8192]
            out[a : a + 8192] = np.einsum("ij,ij->i", q64[i], bh[j], dtype=np.float64)
        return out


class _TorchBackend:
    """``cuda``: the block is uploaded once and stays on the GPU while every query chunk passes;
    ``torch-cpu`` runs the same code on the CPU (so the tests exercise it without a GPU)."""

    workers = 1

    def __init__(self, device: str, tile_rows: int, threads: int):
        import torch

        self.torch, self.device, self.tile_rows, self.threads = (
            torch,
            torch.device(device),
            tile_rows,
            threads,
        )

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        torch = self.torch
        old, old_threads = torch.get_float32_matmul_precision(), torch.get_num_threads()
        torch.set_float32_matmul_precision("highest")  # no TF32: the fp32 error bound must hold
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(old)
            torch.set_num_threads(old_threads)

    def block(self, c: np.ndarray):
        try:
            return self.torch.from_numpy(c).to(self.device)
        except self.torch.cuda.OutOfMemoryError as exc:
            mb = c.nbytes / 2**20
            raise ValueError(
                f"a {mb:,.0f} MiB corpus block does not fit on {self.device}: lower search.memory_mb"
            ) from exc

    def queries(self, q: np.ndarray):
        return self.torch.from_numpy(q).to(self.device)

    def candidates(self, qh, bh, lo: int, hi: int, thr: np.ndarray, kth: int):
        torch = self.torch
        tile = qh @ bh[lo:hi].T
        t = torch.from_numpy(thr).to(self.device)
        if kth:
            t = torch.maximum(t, torch.topk(tile, kth, dim=1).values[:, -1])
        qi, col = torch.nonzero(tile >= t[:, None], as_tuple=True)
        return qi.cpu().numpy(), col.cpu().numpy(), tile[qi, col].cpu().numpy()

    def exact(self, qh, bh, qi: np.ndarray, col: np.ndarray) -> np.ndarray:
        torch = self.torch
        out = np.empty(len(qi))
        for a in range(0, len(qi), 65536):
            i = torch.from_numpy(qi[a : a + 65536]).to(self.device)
            j = torch.from_numpy(col[a : a + 65536]).to(self.device)
            out[a : a + 65536] = (qh[i].double() * bh[j].double()).sum(dim=1).cpu().numpy()
        return out


def _backend(device: str, threads: int, tile_rows: int | None) -> _NumpyBackend | _TorchBackend:
    if device == "cpu":
        return _NumpyBackend(threads, tile_rows or CPU_TILE_ROWS)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("exact search device 'cuda': torch.cuda.is_available() is False")
        return _TorchBackend("cuda", tile_rows or CUDA_TILE_ROWS, threads)
    if device == "torch-cpu":
        return _TorchBackend("cpu", tile_rows or CPU_TILE_ROWS, threads)
    raise ValueError(f"exact search device {device!r}: expected one of {', '.join(DEVICES)}")


@dataclass
class _Pool:
    """One query set's running candidates: per query the best ``width`` by (score desc, pid asc).

    Main pass: ``score`` is the float32 matmul score and ``exact`` the float64 rescoring (NaN until
    the row's block rescored it). Settle pass: ``floor`` is a fixed float32 threshold per query and
    ``score`` is already the exact score rounded to float32.
    """

    q: np.ndarray  # prepared queries, float32
    k: int
    score: np.ndarray  # (queries, width)
    row: np.ndarray  # corpus row, -1 = empty
    exact: np.ndarray  # float64
    floor: np.ndarray | None = None

    @classmethod
    def empty(cls, q: np.ndarray, k: int, width: int, floor: np.ndarray | None = None) -> _Pool:
        shape = (len(q), width)
        return cls(
            q, k, np.full(shape, -np.inf, np.float32), np.full(shape, -1, np.int64),
            np.full(shape, np.nan), floor,
        )  # fmt: skip


def _desc_key(qi: np.ndarray, score: np.ndarray) -> np.ndarray:
    """One uint64 per entry ordering by query ascending, then float32 score descending."""
    bits = np.ascontiguousarray(score, dtype=np.float32).view(np.uint32)
    asc = bits ^ np.where(bits >> 31, np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    return (qi.astype(np.uint64) << np.uint64(32)) | (~asc).astype(np.uint64)


def _merge(pool: _Pool, sl: slice, found: list[tuple[np.ndarray, ...]], ids: np.ndarray) -> None:
    """Fold candidates ``(query in sl, score, corpus row, exact)`` into the pool rows of ``sl``.

    Main pass: the best ``width`` float32 scores, equal scores in any order (the pool only has to
    hold every passage above its last score; the final order comes from the exact scores).
    Settle pass: by (score desc, pid asc), the final order.
    """
    if not found:
        return
    qi, score, rows, exact = (np.concatenate(col) for col in zip(*found, strict=True))
    if not len(qi):
        return
    s, r, x = pool.score[sl], pool.row[sl], pool.exact[sl]
    n_rows, w = s.shape
    counts = np.bincount(qi, minlength=n_rows)
    touched = np.flatnonzero(counts)
    local = np.cumsum(counts > 0)[qi] - 1
    n = len(touched)
    key_q = np.concatenate([np.repeat(np.arange(n), w), local])
    all_s = np.concatenate([s[touched].ravel(), score])
    all_r = np.concatenate([r[touched].ravel(), rows])
    all_x = np.concatenate([x[touched].ravel(), exact])
    if pool.floor is None:
        order = np.argsort(_desc_key(key_q, all_s))
    else:
        order = np.lexsort((_pids(all_r, ids), -all_s, key_q))
    first = np.searchsorted(key_q[order], np.arange(n))
    pick = order[(first[:, None] + np.arange(w)).ravel()]
    s[touched], r[touched], x[touched] = (a[pick].reshape(n, w) for a in (all_s, all_r, all_x))


def _sweep(be, pool: _Pool, sl: slice, bh, b0: int, rows: int, ids: np.ndarray) -> None:
    """One query chunk past one resident block, tile by tile; candidates merged lazily."""
    qh = be.queries(pool.q[sl])
    m, w = sl.stop - sl.start, pool.score.shape[1]
    settle = pool.floor is not None
    thr = pool.floor[sl] if pool.floor is not None else pool.score[sl, -1].copy()
    found: list[tuple[np.ndarray, ...]] = []
    pending = 0
    for lo in range(0, rows, be.tile_rows):
        hi = min(lo + be.tile_rows, rows)
        # a query without `width` candidates yet takes the tile's own width-th score as threshold
        kth = w if not settle and hi - lo >= w and np.isneginf(thr).any() else 0
        qi, col, score = be.candidates(qh, bh, lo, hi, thr, kth)
        if settle:
            exact = be.exact(qh, bh, qi, col + lo)
            score = exact.astype(np.float32)
        else:
            exact = np.full(len(qi), np.nan)
        found.append((qi, score, col + (b0 + lo), exact))
        pending += len(qi)
        if pending >= m * w:  # a stale threshold only lets more through: merge when it pays
            _merge(pool, sl, found, ids)
            found, pending = [], 0
            if not settle:
                thr = pool.score[sl, -1].copy()
    _merge(pool, sl, found, ids)
    if not settle:  # rescore this block's entrants exactly while the block is resident
        ex, row = pool.exact[sl], pool.row[sl]
        qi, j = np.nonzero(np.isnan(ex) & (row >= 0))
        if len(qi):
            ex[qi, j] = be.exact(qh, bh, qi, row[qi, j] - b0)


def _plan_blocks(corpus: Embeddings, memory_mb: float) -> list[list[int]]:
    """Shard row counts grouped into blocks of at most ``memory_mb`` of float32 (at least one shard)."""
    max_rows = max(1, int(memory_mb * 2**20) // (4 * corpus.dim))
    groups: list[list[int]] = []
    rows = 0
    for entry in corpus.shards:
        if not groups or rows + entry["rows"] > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(entry["rows"])
        rows += entry["rows"]
    return groups


def _blocks(corpus: Embeddings, normalize: bool, groups: list[list[int]]) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, prepared float32 block)`` per group, each shard read and prepared once."""
    shards = corpus.iter_shards()
    b0 = 0
    for group in groups:
        block = np.empty((sum(group), corpus.dim), dtype=np.float32)
        at = 0
        for _ in group:
            _, vec = next(shards)
            block[at : at + len(vec)] = vec  # float16 -> float32 in place
            if normalize:
                block[at : at + len(vec)] = _prep(block[at : at + len(vec)], True)
            at += len(vec)
        yield b0, block
        del block  # before the next block is allocated
        b0 += at


@dataclass(frozen=True)
class SearchResult:
    hits: list[tuple[np.ndarray, np.ndarray]]  # per query set: scores float32, pids int64, (n, k)
    gathered: np.ndarray | None  # prepared float32 corpus rows of ``gather``, in its order
    blocks: int
    settled: int  # queries whose float32 margin was too thin, searched again exactly


def search_sets(
    sets: Sequence[tuple[np.ndarray, int]],
    corpus: Embeddings,
    normalize: bool,
    *,
    query_chunk: int,
    device: str = "cpu",
    memory_mb: float = DEFAULT_MEMORY_MB,
    threads: int | None = None,
    gather: np.ndarray | None = None,
    tile_rows: int | None = None,
) -> SearchResult:
    """Exact top-``k`` of several query sets ``(vectors, k)`` in one pass over the corpus.

    The corpus is read in blocks of whole shards of at most ``memory_mb`` float32 (one block when
    it fits), each block prepared once (float32, normalised for cos) and, on CUDA, uploaded once;
    every query chunk of every set then passes it. Per tile of ``tile_rows`` corpus rows a float32
    matmul keeps each query's candidates at or above its running ``width``-th score (``width`` =
    k + a margin); the candidates of a block are rescored in float64 while it is resident.

    Result per query: the ``k`` best by (float32 of the float64 score desc, pid asc), the same on
    every device, BLAS, tile shape and thread count. A query is final when the float32 error bound
    (:func:`fp32_dot_error`) separates its k-th exact score from everything left out; otherwise
    (ties or near-ties across the margin) it is searched again with a fixed threshold below which
    no top-k passage can score, every candidate rescored exactly (counted in ``settled``).

    ``device``: ``cpu`` (numpy/BLAS, ``threads`` workers), ``cuda`` (torch), ``torch-cpu`` (the CUDA
    code on the CPU, for tests). ``gather``: corpus rows whose prepared vectors to return.
    """
    n = len(corpus.ids)
    be = _backend(device, threads or cpu_count(), tile_rows)
    pools = []
    for vectors, k in sets:
        k = min(k, n)
        pools.append(_Pool.empty(_prep(vectors, normalize), k, min(k + max(8, k // 16), n)))
    gathered = None if gather is None else np.empty((len(gather), corpus.dim), dtype=np.float32)
    groups = _plan_blocks(corpus, memory_mb)
    cmax = 0.0
    resident = None
    tasks = sum(-(-len(p.q) // query_chunk) for p in pools if p.k) * len(groups)
    with be.context(), tqdm(total=tasks, desc="exact search", unit="chunk", dynamic_ncols=True) as bar:
        for b0, block in _blocks(corpus, normalize, groups):
            cmax = max(cmax, _max_norm(block))
            if gather is not None and gathered is not None:
                at = np.flatnonzero((gather >= b0) & (gather < b0 + len(block)))
                gathered[at] = block[gather[at] - b0]
            bh = be.block(block)
            _pass(be, pools, bh, b0, len(block), corpus.ids, query_chunk, bar)
            if len(groups) == 1:  # kept for the settle pass
                resident = (b0, len(block), bh)
            del bh, block
        hits, redo = [], []
        err = fp32_dot_error(corpus.dim)
        for pool in pools:
            scores, pids, unsure = _finish(pool, corpus.ids, err, cmax, n)
            hits.append((scores, pids))
            redo.append(unsure)
        settled = int(sum(len(u) for u in redo))
        if settled:
            _settle(be, pools, hits, redo, corpus, normalize, groups, resident, query_chunk, err, cmax)
    log.info(
        "exact search: %d query set(s), %d queries over %d passages in %d block(s); %d settled exactly",
        len(pools), sum(len(p.q) for p in pools), n, len(groups), settled,
    )  # fmt: skip
    return SearchResult(hits, gathered, len(groups), settled)


def _pass(be, pools: list[_Pool], bh, b0: int, rows: int, ids: np.ndarray, chunk: int, bar=None) -> None:
    """Every query chunk of every pool past one resident block (``be.workers`` at a time)."""
    jobs = [(p, slice(a, min(a + chunk, len(p.q)))) for p in pools if p.k for a in range(0, len(p.q), chunk)]

    def job(item: tuple[_Pool, slice]) -> None:
        _sweep(be, item[0], item[1], bh, b0, rows, ids)
        if bar is not None:
            bar.update()

    if be.workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(be.workers) as pool:
            list(pool.map(job, jobs))
    else:
        for item in jobs:
            job(item)


def _finish(pool: _Pool, ids: np.ndarray, err: float, cmax: float, n: int):
    """Top-k by (float32 of the exact score desc, pid asc), and the queries it cannot vouch for."""
    score = np.where(pool.row >= 0, pool.exact, -np.inf).astype(np.float32)
    pids = _pids(pool.row, ids)
    idx = np.lexsort((pids, -score), axis=-1)[:, : pool.k]
    top_s, top_p = np.take_along_axis(score, idx, 1), np.take_along_axis(pids, idx, 1)
    if pool.floor is not None or pool.score.shape[1] >= n or not pool.k:  # nothing was left out
        return top_s, top_p, np.zeros(0, dtype=np.int64)
    # a passage left out scored <= the pool's last float32 score, so exactly <= last + margin
    margin = err * _norms64(pool.q) * cmax
    reach = (pool.score[:, -1].astype(np.float64) + margin).astype(np.float32)
    return top_s, top_p, np.flatnonzero(~(reach < top_s[:, -1]))


def _settle(be, pools, hits, redo, corpus, normalize, groups, resident, chunk, err, cmax) -> None:
    """Search the unsure queries again: every passage at or above a floor, rescored exactly."""
    again = []
    for pool, (scores, _), rows in zip(pools, hits, redo, strict=True):
        q = pool.q[rows]
        # a top-k passage rounds to >= the k-th score, so its exact score is > the float32 below
        # it, and its float32 score at least that minus the bound
        below = np.nextafter(scores[rows, -1], np.float32(-np.inf)).astype(np.float64)
        floor = np.nextafter((below - err * _norms64(q) * cmax).astype(np.float32), np.float32(-np.inf))
        again.append(_Pool.empty(q, pool.k, pool.k, floor.astype(np.float32)))
    if resident is not None:
        _pass(be, again, resident[2], resident[0], resident[1], corpus.ids, chunk)
    else:
        for b0, block in _blocks(corpus, normalize, groups):
            _pass(be, again, be.block(block), b0, len(block), corpus.ids, chunk)
    for (scores, pids), rows, pool in zip(hits, redo, again, strict=True):
        scores[rows], pids[rows] = pool.score[:, : pool.k], _pids(pool.row[:, : pool.k], corpus.ids)


def exact_search(
    queries: np.ndarray,
    corpus: Embeddings,
    k: int,
    normalize: bool,
    query_chunk: int,
    device: str = "cpu",
    *,
    memory_mb: float = DEFAULT_MEMORY_MB,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores float32, pids) per query, ties by pid: :func:`search_sets` for one set."""
    result = search_sets(
        [(queries, k)], corpus, normalize, query_chunk=query_chunk, device=device, memory_mb=memory_mb,
        threads=threads,
    )  # fmt: skip
    return result.hits[0]


def gather_rows(corpus: Embeddings, rows: np.ndarray, normalize: bool) -> np.ndarray:
    """Prepared vectors of some corpus rows, one shard at a time (the same values a block holds)."""
    out = np.empty((len(rows), corpus.dim), dtype=np.float32)
    start = 0
    for _, vec in corpus.iter_shards():
        end = start + len(vec)
        sel = np.flatnonzero((rows >= start) & (rows < end))
        out[sel] = _prep(vec[rows[sel] - start], normalize)
        start = end
    return out


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
        return exact_search(
            queries, self.corpus, k, self.normalize, self.params.query_chunk, self.device,
            memory_mb=self.params.memory_mb,
        )  # fmt: skip


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


@dataclass(frozen=True)
class RerankPlan:
    """One set's re-ranking candidates: per query (ascending) its pids (:class:`Candidates`)."""

    qids: np.ndarray
    counts: np.ndarray
    pids: np.ndarray  # flat, query after query
    rows: np.ndarray  # the corpus row of each pid
    candidates: Candidates  # what was read: for the log and the summary


def plan_rerank(corpus_ids: np.ndarray, qids: np.ndarray, candidates: Path, depth: int) -> RerankPlan:
    """The candidates of each query, checked against the embeddings: a BM25 run cut at its top
    ``depth``, an official ``top1000`` list in full (random order: no top to cut)."""
    cands = read_candidates(candidates, depth)
    missing = sorted(set(cands.sets) - {int(q) for q in qids})
    if missing:
        raise DataError(f"{candidates}: {len(missing)} qid(s) (e.g. {missing[0]}) have no query embedding")
    order = np.argsort(corpus_ids, kind="stable")
    sorted_ids = corpus_ids[order]
    all_pids = np.fromiter((p for pids in cands.sets.values() for p in pids), np.int64, cands.kept)
    pos = np.minimum(np.searchsorted(sorted_ids, all_pids), max(len(sorted_ids) - 1, 0))
    unknown = sorted_ids[pos] != all_pids if len(sorted_ids) else np.ones(len(all_pids), bool)
    if unknown.any():
        raise DataError(f"{candidates}: pid {all_pids[unknown][0]} is not in the encoded corpus")
    counts = np.array([len(p) for p in cands.sets.values()], dtype=np.int64)
    log.info("%s", cands.describe())
    return RerankPlan(np.array(list(cands.sets), dtype=np.int64), counts, all_pids, order[pos], cands)


def rerank(
    plan: RerankPlan, qids: np.ndarray, q: np.ndarray, vecs: np.ndarray, rows: np.ndarray
) -> RunArrays:
    """Re-score each query's candidates with this model (prepared ``q`` rows of ``qids``; the
    candidates' vectors are ``vecs[rows]``, plan order): the float64 score rounded to float32, as
    the full runs, ties by pid. One query's vectors are gathered at a time, never every candidate's."""
    qrow = {int(qid): i for i, qid in enumerate(qids)}
    order = np.empty(len(plan.pids), dtype=np.int64)
    scores = np.empty(len(plan.pids), dtype=np.float32)
    offset = 0
    for qid, n in zip(plan.qids.tolist(), plan.counts.tolist(), strict=True):
        block = vecs[rows[offset : offset + n]]
        exact = block.astype(np.float64) @ q[qrow[qid]].astype(np.float64)
        scores[offset : offset + n] = exact.astype(np.float32)
        order[offset : offset + n] = offset + np.lexsort(
            (plan.pids[offset : offset + n], -scores[offset : offset + n])
        )
        offset += n
    ranks = np.arange(len(order)) - np.repeat(np.cumsum(plan.counts) - plan.counts, plan.counts) + 1
    return RunArrays(
        np.repeat(plan.qids, plan.counts), plan.pids[order], ranks, scores[order].astype(np.float64)
    )


def ranked_run(qids: np.ndarray, scores: np.ndarray, pids: np.ndarray) -> RunArrays:
    """A full run from the search's per-query rows (best first): the valid hits, ranked from 1."""
    valid = _valid(scores, pids)
    ranks = np.cumsum(valid, axis=1)
    return RunArrays(
        np.repeat(np.asarray(qids, dtype=np.int64), valid.sum(axis=1)),
        pids[valid].astype(np.int64),
        ranks[valid].astype(np.int64),
        scores[valid].astype(np.float64),
    )


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
    state_dir: Path | None = None,
) -> dict[str, Any]:
    """Mine negatives for the training queries and write the dev/DL19 runs; returns the summary.

    Flat search makes one pass over the corpus for all three query sets (and gathers the
    re-ranking candidates' vectors on the way); an ANN index is built once and searched per set.
    ``mine.incremental`` (flat only) merges into the ranked lists kept in ``state_dir`` instead
    (:mod:`tasks.mine_refresh`): the same bytes, searching only what changed.
    """
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
    # the manifest holds the resolved similarity (score: auto took the model's): one source of truth
    score = manifest.get("score")
    if score not in ("cos", "dot"):
        raise DataError(f"{emb_dir}/manifest.json: score {score!r} is not cos or dot; rerun encode@{system}")
    if params.score != "auto" and score != params.score:
        raise DataError(
            f"{emb_dir}/manifest.json: score {score!r} != systems.{system}.score {params.score!r}; "
            f"rerun encode@{system}"
        )
    names = list(candidates)  # the profile's evaluation sets (Config.eval_sets)
    for name in names:  # fail before any work, not after mining
        check_candidates(candidates[name])  # the file is there, or an error naming its stage
    normalize = score == "cos"
    # numpy/BLAS on CPU; torch on CUDA, and to find out whether it is there, unless no GPU device
    # node exists (then torch is not imported at all: ~3 s of this stage's start)
    on_gpu = (device == "cuda" or (device == "auto" and cuda_possible())) and resolve(
        device, "fp32"
    ).device == "cuda"
    dev = "cuda" if on_gpu and search.index == "flat" else "cpu"
    threads = thread_count()
    import faiss

    faiss.omp_set_num_threads(threads)
    corpus = load_part(emb_dir, "corpus")

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
    evals, plans = {}, {}
    for name in names:
        part = load_part(emb_dir, name)
        order = np.argsort(part.ids, kind="stable")
        evals[name] = (part.ids[order], part.load()[order])
        plans[name] = plan_rerank(corpus.ids, evals[name][0], Path(candidates[name]), rerank_depth)
    gather = np.unique(np.concatenate([p.rows for p in plans.values()]))
    sets = [(qvecs, mine.top_k + max_pos)] + [(evals[name][1], mine.eval_depth) for name in names]

    t0 = time.perf_counter()
    gathered: np.ndarray | None
    incremental = mine.incremental and search.index == "flat" and state_dir is not None
    if mine.incremental and not incremental:
        log.warning("mine.incremental needs search.index flat (and a state directory): searching in full")
    if incremental:
        assert state_dir is not None

        def search_fn(some: Sequence[tuple[np.ndarray, int]], corp: Embeddings):
            return search_sets(
                some, corp, normalize, query_chunk=search.query_chunk, device=dev,
                memory_mb=search.memory_mb, threads=threads,
            ).hits  # fmt: skip

        named = [("train", *sets[0])] + [(name, *s) for name, s in zip(names, sets[1:], strict=True)]
        found, work = incremental_search(
            named, corpus, state_dir, fingerprint(normalize, corpus.dim), search_fn
        )
        gathered = gather_rows(corpus, gather, normalize)
        record_work(
            f"mine@{system}", "dot products", work.dots, work.total,
            queries=work.queries, queries_searched=work.researched,
        )  # fmt: skip
    elif search.index == "flat":
        result = search_sets(
            sets, corpus, normalize, query_chunk=search.query_chunk, device=dev,
            memory_mb=search.memory_mb, threads=threads, gather=gather,
        )  # fmt: skip
        found, gathered = result.hits, result.gathered
    else:
        searcher = Searcher(corpus, search, normalize, dev)  # the index is built once per system
        found = [searcher.search(vectors, k) for vectors, k in sets]
        gathered = gather_rows(corpus, gather, normalize)
    if not incremental:
        total = sum(len(v) for v, _ in sets) * len(corpus.ids)
        record_work(f"mine@{system}", "dot products", total, total, queries=sum(len(v) for v, _ in sets))
    assert gathered is not None
    secs, total = time.perf_counter() - t0, sum(len(v) for v, _ in sets)
    log.info(
        "mine %s: %s search of %d queries (train, %s) in %.1f s (%.0f queries/s)",
        system, search.index, total, ", ".join(names), secs, total / max(secs, 1e-9),
    )  # fmt: skip

    qid_col, pid_col, score_col = [], [], []
    for qid, srow, prow in zip(qids, *found[0], strict=True):
        pos = set(positives[int(qid)])
        keep = [i for i in np.flatnonzero(_valid(srow, prow)) if int(prow[i]) not in pos][: mine.top_k]
        qid_col.extend([int(qid)] * len(keep))
        pid_col.extend(prow[keep].tolist())
        score_col.extend(srow[keep].tolist())
    write_hits(
        negatives_out, hits_table(np.array(qid_col, dtype=np.int64), np.array(pid_col), np.array(score_col))
    )
    summary.update(train_hits=len(qid_col))  # timings only in the log: DVC outputs stay byte-stable
    log.info("mine %s: %d training queries, %d hits -> %s", system, len(qids), len(qid_col), negatives_out)

    for name, (s, p) in zip(names, found[1:], strict=True):
        eq = evals[name][0]
        write_run_arrays(Path(runs_dir) / f"{name}.full.trec", *ranked_run(eq, s, p), system)
        plan = plans[name]
        rr = rerank(plan, eq, _prep(evals[name][1], normalize), gathered, np.searchsorted(gather, plan.rows))
        write_run_arrays(Path(runs_dir) / f"{name}.rerank.trec", *rr, system)
        summary[name] = {"queries": len(eq), "rerank_queries": len(np.unique(rr.qid)),
                         "rerank": plan.candidates.summary()}  # fmt: skip
    summary["index"] = search.index
    if summary_out:
        write_json(summary_out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.dense_mine",
        "Search one system's embeddings (from tasks.encode): top mine.top_k hard negatives per training "
        "query (positives removed) into paths.negatives/<system>.parquet, and dev/DL19 runs (full "
        "retrieval, and re-ranking of the candidates: BM25's top evaluate.rerank_depth or all of the "
        "official top-1000 list, evaluate.dev_candidates / dl19_candidates) into paths.runs/<system>/.",
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
            candidates={name: cfg.candidates(name) for name in cfg.eval_sets},
            negatives_out=cfg.path("negatives") / f"{args.system}.parquet",
            runs_dir=cfg.path("runs") / args.system,
            summary_out=cfg.path("metrics") / f"mine-{args.system}.json",
            device=cfg.encode.device,
            state_dir=cfg.path("mine_cache") / args.system,
        ),
        lock=f"mine@{args.system}",  # the dvc.yaml stage name: systems may run side by side
    )


if __name__ == "__main__":
    sys.exit(main())
