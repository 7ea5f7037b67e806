"""Resume wherever ``score`` / ``ce_rerank`` are started: kill -9 under ``dvc repro`` and under the
CLI, then rerun: finished shards are reused (the log says how many), outputs byte-identical.

The shards live in ``paths.score_cache``, outside the DVC outputs that DVC deletes before it
runs a stage; these tests prove it with the real ``dvc repro`` of the real stage definitions.
The in-process tests at the end cover the cache itself and the resolved device/dtype.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.config import CrossEncoderCfg
from tasks.io import read_json
from tasks.score import ModelSpec, ShardSpec, run, score_shard
from tests._model_helpers import TinyModels, tiny_models
from tests._score_helpers import DvcProject, World, alive, dvc_project, reference_outputs, tiny_world

REUSED = re.compile(r"(\d+) shard\(s\) of (\d+) reused from \S+, (\d+) to compute")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def project(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DvcProject]:
    project = dvc_project(tmp_path_factory.mktemp("resume") / "p", models.cross_encoder, models.collection)
    yield project
    project.stop_all()  # nothing a failed test started outlives the module


@pytest.fixture(scope="module")
def reference(project: DvcProject) -> dict[str, bytes]:
    out = reference_outputs(project)
    assert len(out) == 6
    return out


def _wait_for(cond, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _reused(log: str) -> list[tuple[int, ...]]:
    return [tuple(map(int, m)) for m in REUSED.findall(log)]


@pytest.mark.slow  # two `dvc repro` runs whose stages import torch
def test_kill_9_under_dvc_repro_then_dvc_repro_resumes(project: DvcProject, reference, tmp_path: Path):
    """kill -9 of the ``score`` stage process under ``dvc repro score`` with some shards done; the
    next ``dvc repro`` reuses exactly the finished shards and writes the uninterrupted bytes."""
    shutil.rmtree(project.cache, ignore_errors=True)
    proc = project.spawn(project.dvc("repro", "score"), tmp_path / "killed.log")
    _wait_for(lambda: project.cached_shards() >= 3 or proc.poll() is not None, what="3 shards")
    holder = project.lock_holder("score")  # the stage process, found through its lock
    assert proc.poll() is None and holder, "the stage ended before it could be killed"
    os.kill(int(holder["pid"]), signal.SIGKILL)
    assert proc.wait(timeout=60) != 0
    done = project.cached_shards()
    assert not project.path("data/sample/scores/ce-scores.parquet").exists()
    assert project.lock_free("score")  # the kernel released the dead stage's lock

    again = project.run(project.dvc("repro"))  # score and ce_rerank
    assert again.returncode == 0, again.stdout + again.stderr
    [(reused, total, computed), *_rerank] = _reused(again.stdout + again.stderr)
    assert reused == done >= 3 and computed == total - done > 0  # every finished shard, no more
    assert project.outputs() == reference
    manifest = read_json(project.path("data/sample/scores/manifest.json"))
    assert (manifest["model"]["device"], manifest["model"]["dtype"]) == ("cpu", "fp32")


@pytest.mark.slow
def test_killed_dvc_repro_leaves_one_writer(project: DvcProject, reference, tmp_path: Path):
    """kill -9 of ``dvc repro`` itself: its stage lives on (here: stopped, holding its lock); a
    second ``dvc repro`` and the CLI refuse with exit 4 naming its pid; after it ends, they run.

    Every ``dvc repro`` here is forced: without it, DVC would restore outputs that another test
    left in its run-cache instead of running the stage."""
    proc = project.spawn(project.dvc("repro", "score", "--force"), tmp_path / "orphan.log")
    _wait_for(lambda: project.lock_holder("score") or proc.poll() is not None, what="the stage lock")
    pid = int(project.lock_holder("score")["pid"])
    try:
        os.kill(pid, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert alive(pid)
        cli = project.run(project.cli("tasks.score"))
        errors = [line for line in cli.stderr.splitlines() if " ERROR " in line]
        assert cli.returncode == 4 and len(errors) == 1, cli.stderr
        assert f"stage score is already running (pid {pid} " in errors[0] and f"kill {pid}" in errors[0]
        second = project.run(project.dvc("repro", "score", "--force"))
        assert second.returncode != 0 and f"already running (pid {pid} " in second.stdout + second.stderr
        assert project.lock_holder("score")["pid"] == pid
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait_for(lambda: not alive(pid), what=f"the orphaned stage {pid} to finish")
    assert "Traceback" not in (tmp_path / "orphan.log").read_text()

    after = project.run(project.dvc("repro", "score", "--force"))
    assert after.returncode == 0, after.stdout + after.stderr
    [(reused, total, computed)] = _reused(after.stdout + after.stderr)
    assert reused == total and computed == 0
    assert {k: v for k, v in project.outputs().items() if not k.startswith("runs/")} == {
        k: v for k, v in reference.items() if not k.startswith("runs/")
    }


@pytest.mark.slow
def test_cli_resumes_after_a_kill_and_a_params_typo(project: DvcProject, reference, tmp_path: Path):
    """kill -9 of ``python -m tasks.score``; a typo'd key fails (exit 2, nothing lost); a typo'd
    export name (DVC would rerun the stage for it) reuses every finished shard, same bytes."""
    shutil.rmtree(project.cache, ignore_errors=True)
    params = yaml.safe_load(project.path("params.yaml").read_text())
    proc = project.spawn(project.cli("tasks.score"), tmp_path / "killed.log")
    _wait_for(lambda: project.cached_shards() >= 3 or proc.poll() is not None, what="3 shards")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    done = project.cached_shards()

    bad = yaml.safe_load(yaml.safe_dump(params))
    bad["cross_encoder"]["shard_sise"] = bad["cross_encoder"].pop("shard_size")
    project.path("typo.yaml").write_text(yaml.safe_dump(bad))
    typo = project.run(project.cli("tasks.score", "--params", "typo.yaml"))
    assert typo.returncode == 2 and "cross_encoder.shard_sise" in typo.stderr
    assert project.cached_shards() == done

    renamed = yaml.safe_load(yaml.safe_dump(params))
    renamed["cross_encoder"]["name"] = "smoke-cross-encodr"
    project.path("renamed.yaml").write_text(yaml.safe_dump(renamed))
    first = project.run(project.cli("tasks.score", "--params", "renamed.yaml"))
    assert first.returncode == 0, first.stderr
    [(reused, total, computed)] = _reused(first.stderr)
    assert reused == done >= 3 and computed == total - done > 0
    pkl = project.path("data/sample/out/smoke-cross-encodr-scores.pkl.gz").read_bytes()
    assert pkl == reference["out/smoke-cross-encoder-scores.pkl.gz"]
    parquet = project.path("data/sample/scores/ce-scores.parquet").read_bytes()
    assert parquet == reference["scores/ce-scores.parquet"]


# --------------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def world(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> World:
    return tiny_world(tmp_path_factory.mktemp("resume-world"), models.collection, n_queries=5, per_system=4)


def _cfg(**kw) -> CrossEncoderCfg:
    settings = {"max_length": 64, "batch_size": 8, "shard_size": 10, "device": "cpu", "dtype": "fp32", **kw}
    return CrossEncoderCfg(name="tiny-ce", model="unused", **settings)


def _run(world: World, out: Path, ce: Path, cache: Path | None, cfg=None, executor=None) -> dict:
    return run(world.negatives, world.collection, world.queries, out / "scores", out / "ce.pkl.gz",
               cfg or _cfg(), model_path=str(ce), executor=executor, cache_dir=cache)  # fmt: skip


def _outputs(out: Path) -> dict[str, bytes]:
    return {
        f: (out / f).read_bytes() for f in ("scores/ce-scores.parquet", "scores/manifest.json", "ce.pkl.gz")
    }


class _FailAt(Executor):
    """Runs shards in-process but fails the given one, as a worker dying mid-run would."""

    def __init__(self, index: int) -> None:
        self.index = index

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        if args[0].index == self.index:
            fut.set_exception(RuntimeError(f"worker died on shard {self.index}"))
        else:
            fut.set_result(fn(*args, **kwargs))
        return fut


def test_cache_resumes_verifies_and_is_path_independent(world: World, models: TinyModels, tmp_path: Path):
    ref = _run(world, tmp_path / "ref", models.cross_encoder, None)  # in memory: no resume point
    assert ref["shards"] >= 4 and not (tmp_path / "ref" / "cache").exists()
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="worker died on shard 2"):
        _run(world, tmp_path / "a", models.cross_encoder, cache, executor=_FailAt(2))
    assert not (tmp_path / "a" / "scores").exists()  # outputs appear only when complete
    # another checkout: the model directory elsewhere, other output paths -> the same keys
    moved = shutil.copytree(models.cross_encoder, tmp_path / "elsewhere" / "ce")
    stats = _run(world, tmp_path / "b", moved, cache)
    assert stats["reused_shards"] == [0, 1] and stats["computed_shards"] == list(range(2, ref["shards"]))
    assert _outputs(tmp_path / "b") == _outputs(tmp_path / "ref")
    assert str(tmp_path) not in (tmp_path / "b" / "scores" / "manifest.json").read_text()
    # a damaged cache entry fails its hash and is scored again; the rest is reused
    victim = sorted(cache.rglob("*.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:-4])
    stats = _run(world, tmp_path / "b", models.cross_encoder, cache)
    assert len(stats["computed_shards"]) == 1 and len(stats["reused_shards"]) == ref["shards"] - 1
    assert _outputs(tmp_path / "b") == _outputs(tmp_path / "ref")


def test_other_settings_never_reuse_shards(world: World, models: TinyModels, tmp_path: Path):
    """Another dtype, max_length or shard size is other work: nothing is reused across them."""
    cache = tmp_path / "cache"
    base = _run(world, tmp_path / "fp32", models.cross_encoder, cache)
    manifest = read_json(tmp_path / "fp32" / "scores" / "manifest.json")
    assert (manifest["model"]["device"], manifest["model"]["dtype"]) == ("cpu", "fp32")
    for cfg in (_cfg(dtype="bf16"), _cfg(max_length=32), _cfg(shard_size=25)):
        stats = _run(world, tmp_path / "other", models.cross_encoder, cache, cfg=cfg)
        assert stats["reused_shards"] == [] and len(stats["computed_shards"]) == stats["shards"]
    bf16 = _run(world, tmp_path / "bf16", models.cross_encoder, cache, cfg=_cfg(dtype="bf16"))
    assert len(bf16["reused_shards"]) == bf16["shards"] == base["shards"]  # its own shards, again
    assert read_json(tmp_path / "bf16" / "scores" / "manifest.json")["model"]["dtype"] == "bf16"


def test_workers_never_pick_their_own_device_or_dtype(models: TinyModels) -> None:
    import torch

    one = (np.array([1]), np.array([2]), ["q"], ["p"])
    with pytest.raises(ValueError, match="resolve them in the parent"):
        score_shard(ShardSpec(0, ModelSpec(str(models.cross_encoder), dtype="auto"), *one))
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-CUDA worker case cannot happen here")
    with pytest.raises(ValueError, match="cannot score with cuda/fp32"):
        score_shard(ShardSpec(0, ModelSpec(str(models.cross_encoder), device="cuda"), *one))


def test_ce_rerank_resumes_from_the_cache(models: TinyModels, tmp_path: Path) -> None:
    """A re-ranking killed mid-way (a worker dies) resumes: the finished shards are reused and
    the run file is the uninterrupted one, byte for byte."""
    from tasks import rerank
    from tasks.records import Hit, write_id_text, write_run
    from tests._model_helpers import tiny_texts

    queries = tmp_path / "queries.tsv"
    write_id_text(queries, zip((11, 22, 33), tiny_texts(3, seed=5, max_len=6), strict=True))
    rng = np.random.default_rng(0)
    hits = [
        Hit(q, int(p), r + 1, 20.0 - r)
        for q in (11, 22, 33)
        for r, p in enumerate(rng.choice(300, 8, replace=False))
    ]
    write_run(tmp_path / "dev.full.trec", hits, "bm25")

    def go(out: str, cache: Path | None, executor=None) -> bytes:
        cfg = _cfg(shard_size=5)
        rerank.run(tmp_path / "dev.full.trec", queries, models.collection, tmp_path / out, 8, cfg,
                   model_path=str(models.cross_encoder), executor=executor, cache_dir=cache)  # fmt: skip
        return (tmp_path / out).read_bytes()

    ref = go("ref.trec", None)
    with pytest.raises(RuntimeError, match="worker died on shard 3"):
        go("resumed.trec", tmp_path / "cache", executor=_FailAt(3))
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 3 and not (tmp_path / "resumed.trec").exists()
    assert go("resumed.trec", tmp_path / "cache") == ref
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 5  # 24 pairs in shards of 5
