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
    """Reference: full score matrix, order by score desc then pid asc."""
    s = q.astype(np.float32) @ c.astype(np.float32).T
    out_p = np.empty((len(q), k), dtype=np.int64)
    out_s = np.empty((len(q), k), dtype=np.float32)
    for r in range(len(q)):
        order = sorted(range(len(ids)), key=lambda j: (-s[r, j], ids[j]))[:k]
        out_p[r], out_s[r] = ids[order], s[r, order]
    return out_s, out_p
