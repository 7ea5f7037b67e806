"""The real encode, score and BM25 shards on a multi-process Dask cluster (``dask scheduler`` +
``dask worker`` subprocesses, shared by the session): byte-identical to in-process.

tests/test_dask_cli.py runs the same stages through their CLIs, as users do."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tasks import encode, score
from tasks.config import CrossEncoderCfg, DenseSystem, Encode, Orchestration
from tasks.scaleout import executor
from tests._model_helpers import tiny_models, tiny_texts
from tests._scaleout_helpers import dask_cluster, one_torch_thread
from tests._score_helpers import tiny_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def dask_orch(request: pytest.FixtureRequest) -> Orchestration:
    # one worker process with two task threads: it imports torch once for the whole session
    return Orchestration(dask_address=dask_cluster(request).address)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_encode_shards_on_dask_match_in_process(models, dask_orch, tmp_path: Path):
    from tasks.records import write_id_text

    # small on purpose: the point is where shards run, not how fast
    corpus, queries = tmp_path / "corpus.tsv", tmp_path / "queries.tsv"
    write_id_text(corpus, enumerate(tiny_texts(80, seed=4)))
    write_id_text(queries, ((1000 + i, t) for i, t in enumerate(tiny_texts(40, seed=5))))
    system = DenseSystem(model=str(models.bi_mean_cos), score="cos", max_seq_length=64)
    params = Encode(batch_size=16, shard_size=32, device="cpu", dtype="fp32")
    parts = {"corpus": corpus, "dev": queries}

    def run(out: Path, ex) -> dict:
        # a cache per run, so the Dask run really computes every shard
        return encode.run("tiny", system, params, parts, out / "emb", out / "cache", executor=ex)

    with one_torch_thread():  # as in the dask worker process
        local = run(tmp_path / "local", None)
    with executor(dask_orch) as ex:
        remote = run(tmp_path / "dask", ex)
    assert local["computed"] == remote["computed"] == 5  # 80/32 + 40/32 shards
    assert _files(tmp_path / "local" / "emb") == _files(tmp_path / "dask" / "emb")


def test_score_shards_on_dask_match_in_process(models, dask_orch, tmp_path: Path):
    world = tiny_world(tmp_path / "world", models.collection)
    ce = CrossEncoderCfg(
        name="tiny-ce", model="unused", shard_size=40, max_length=64, batch_size=8, device="cpu"
    )

    def run(out: Path, ex) -> dict:
        return score.run(
            world.negatives, world.collection, world.queries, out / "scores", out / "ce.pkl.gz", ce,
            model_path=str(models.cross_encoder), executor=ex,
        )  # fmt: skip

    with one_torch_thread():  # as in the dask worker process
        local = run(tmp_path / "local", None)
    with executor(dask_orch) as ex:
        remote = run(tmp_path / "dask", ex)
    assert local == remote and local["shards"] >= 3
    for rel in ("scores/ce-scores.parquet", "ce.pkl.gz"):
        assert (tmp_path / "local" / rel).read_bytes() == (tmp_path / "dask" / rel).read_bytes()


def test_bm25_mining_on_dask_matches_local(dask_orch, tmp_path: Path):
    from tasks.bm25_index import run as build_index
    from tasks.bm25_mine import run as mine_run
    from tasks.config import Bm25, Mine
    from tests._bm25_helpers import synthetic, write_tsv

    passages, queries, qrels = synthetic()
    coll = write_tsv(tmp_path / "collection.tsv", passages)
    qtrain = write_tsv(tmp_path / "queries.train.tsv", queries)
    qrels_path = tmp_path / "qrels.train.tsv"
    qrels_path.write_text("".join(f"{q}\t0\t{p}\t1\n" for q, p in qrels))
    params = Bm25(threads=1, query_batch=4)  # several batches, so several shards on the cluster
    build_index(coll, tmp_path / "idx", params)

    def run(out: Path, ex) -> dict:
        return mine_run(
            tmp_path / "idx", qtrain, qrels_path, {"dev": qtrain}, out / "bm25.parquet", out / "runs",
            out / "summary.json", params, Mine(top_k=10, eval_depth=20), cluster=ex,
        )  # fmt: skip

    with one_torch_thread():  # as in the dask worker process
        local = run(tmp_path / "local", None)
    with executor(dask_orch) as ex:
        remote = run(tmp_path / "dask", ex)
    assert local == remote and local["train_hits"] > 0
    assert _files(tmp_path / "local") == _files(tmp_path / "dask")


def test_a_worker_on_another_cpu_refuses_the_drivers_keys(models, dask_orch, tmp_path: Path):
    """A cluster of mixed CPUs must not put two CPUs' fp32 bits under one key: a worker whose CPU
    computes other bits than the ones its driver's keys name (here: a driver on the other vendor's
    CPU than this one) refuses in the real worker process, for encode and score shards alike."""
    from tasks.accel import kernels_id, mkl_takes_named_branches
    from tasks.io import EnvironmentMismatch

    other = tmp_path / "cpuinfo"
    vendor, family, model = (
        ("AuthenticAMD", 25, 17) if mkl_takes_named_branches() else ("GenuineIntel", 6, 143)
    )
    other.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n")
    foreign = kernels_id("avx2", cpuinfo=other)
    assert foreign != kernels_id("avx2")
    spec = encode.ShardSpec("k", str(models.bi_mean_cos), None, 64, "cpu", "fp32", 8, ("a text",),
                            kernels_key=foreign)  # fmt: skip
    ce = score.ModelSpec(str(models.cross_encoder), max_length=64, kernels_key=foreign)
    pairs = score.ShardSpec(0, ce, np.array([1]), np.array([2]), ["a query"], ["a passage"])
    with executor(dask_orch) as ex:
        for fn, arg in ((encode.encode_shard, spec), (score.score_shard, pairs)):
            with pytest.raises(EnvironmentMismatch, match=f"the run's cache keys name {re.escape(foreign)}"):
                ex.submit(fn, arg).result()
    # the same specs with this CPU's own keys run (the worker was not spoiled by the refusals)
    here = kernels_id("avx2")
    with executor(dask_orch) as ex:
        assert (
            ex.submit(encode.encode_shard, replace(spec, kernels_key=here)).result().embeddings.shape[0] == 1
        )
        assert (
            len(
                ex.submit(score.score_shard, replace(pairs, model=replace(ce, kernels_key=here)))
                .result()
                .scores
            )
            == 1
        )
