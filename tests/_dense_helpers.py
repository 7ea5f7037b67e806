"""Shared fixtures of the dense-retrieval tests: encode the bundled sample once per session."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tasks.config import DenseSystem, Encode
from tasks.encode import Embeddings
from tasks.encode import run as encode_run
from tasks.records import Hit, read_queries, write_run
from tests._model_helpers import TINY_PARAMS, TinyModels, tiny_models

ENCODE = Encode(batch_size=32, shard_size=1000, device="cpu", dtype="fp32")


@dataclass(frozen=True)
class EncodedSample:
    inputs: dict[str, Path]
    models: TinyModels
    system: DenseSystem
    emb_dir: Path
    cache_dir: Path
    bm25_runs: Path
    stats: dict


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Encode with one torch thread: the test machine is shared and oversubscribed, where one
    thread is several times faster than two (measured); restores the previous settings."""
    import torch

    old_env, old_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_env
        torch.set_num_threads(old_threads)


def sample_parts(inputs: dict[str, Path]) -> dict[str, Path]:
    return {
        "corpus": inputs["collection"],
        "train": inputs["queries_train"],
        "dev": inputs["queries_dev"],
        "dl19": inputs["queries_dl19"],
    }


def fake_bm25_runs(inputs: dict[str, Path], corpus_ids: list[int], out: Path, depth: int = 30) -> Path:
    """BM25-shaped runs for dev/DL19 (random candidates, fixed seed): the rerank input."""
    rng = random.Random(5)
    for name, key in (("dev", "queries_dev"), ("dl19", "queries_dl19")):
        hits = [
            Hit(q.qid, pid, r, float(depth - r))
            for q in sorted(read_queries(inputs[key]))
            for r, pid in enumerate(rng.sample(corpus_ids, depth), 1)
        ]
        write_run(out / f"{name}.full.trec", hits, "bm25")
    return out


def encoded_sample(tmp_path_factory: pytest.TempPathFactory, inputs: dict[str, Path]) -> EncodedSample:
    models = tiny_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("encoded-sample")
    system = DenseSystem(
        model=str(models.bi_mean_cos), score="cos", max_seq_length=TINY_PARAMS.max_seq_length
    )
    with one_thread():
        stats = encode_run(
            "tiny-cos", system, ENCODE, sample_parts(inputs), root / "emb" / "tiny-cos", root / "cache"
        )
    from tasks.records import read_collection

    pids = [p.pid for p in read_collection(inputs["collection"])]
    runs = fake_bm25_runs(inputs, pids, root / "runs" / "bm25")
    return EncodedSample(inputs, models, system, root / "emb" / "tiny-cos", root / "cache", runs, stats)


def write_embeddings(root: Path, ids: np.ndarray, vectors: np.ndarray, shard_rows: int) -> Embeddings:
    """An :class:`Embeddings` over hand-made vectors (float16 shards), for search tests."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, start in enumerate(range(0, len(ids), shard_rows)):
        name = f"corpus/{i:05d}.npy"
        (root / "corpus").mkdir(exist_ok=True)
        np.save(root / name, vectors[start : start + shard_rows].astype(np.float16))
        shards.append({"file": name, "rows": len(ids[start : start + shard_rows])})
    return Embeddings(root, "corpus", np.asarray(ids, dtype=np.int64), tuple(shards), vectors.shape[1])


def brute_force(q: np.ndarray, c: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the full float64 score matrix rounded to float32, by score desc then pid asc."""
    s = (q.astype(np.float64) @ c.astype(np.float64).T).astype(np.float32)
    pids = np.broadcast_to(np.asarray(ids, dtype=np.int64), s.shape)
    idx = np.lexsort((pids, -s), axis=-1)[:, :k]
    return np.take_along_axis(s, idx, 1), np.take_along_axis(pids, idx, 1)


def quantised(n: int, d: int, seed: int, levels: int = 3) -> np.ndarray:
    """Vectors of multiples of 1/4 in [-levels/4, levels/4]: float16-exact, and every float32 dot
    product of them is exact in any summation order, so scores tie often and exactly."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-levels, levels + 1, size=(n, d)) / 4).astype(np.float32)


def previous_exact_search(
    queries: np.ndarray, corpus: Embeddings, k: int, normalize: bool, query_chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """The CPU exact search as it was before the resident-block rewrite (kept as a reference):
    every query chunk walks every shard, FAISS ``IndexFlatIP`` per shard, top-(k+1), rows with a
    k-th/(k+1)-th tie settled by brute force, per-shard results merged by (score desc, pid asc)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 20

    def prep(v: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(v, dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12) if normalize else out

    def order(s: np.ndarray, p: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.lexsort((p, -s), axis=-1)[:, :kk]
        return np.take_along_axis(s, idx, 1), np.take_along_axis(p, idx, 1)

    def shard_topk(q: np.ndarray, c: np.ndarray, cids: np.ndarray, kk: int):
        index = faiss.IndexFlatIP(c.shape[1])
        index.add(c)
        n = min(kk + 1, len(c))
        scores, idx = index.search(q, n)
        pids = cids[idx]
        if n > kk:
            ambiguous = np.flatnonzero(scores[:, kk - 1] == scores[:, kk])
            scores, pids = order(scores, pids, kk)
            for r in ambiguous:
                s = q[r : r + 1] @ c.T
                scores[r], pids[r] = (a[0] for a in order(s, np.broadcast_to(cids, s.shape), kk))
            return scores, pids
        return order(scores, pids, kk)

    k = min(k, len(corpus.ids))
    q_all = prep(queries)
    best_s = np.full((len(q_all), k), -np.inf, dtype=np.float32)
    best_p = np.full((len(q_all), k), np.iinfo(np.int64).max, dtype=np.int64)
    for cids, vec in corpus.iter_shards():
        c = prep(vec)
        for start in range(0, len(q_all), query_chunk):
            sl = slice(start, start + query_chunk)
            s, p = shard_topk(q_all[sl], c, cids, min(k, len(c)))
            best_s[sl], best_p[sl] = order(np.hstack([best_s[sl], s]), np.hstack([best_p[sl], p]), k)
    return best_s, best_p
