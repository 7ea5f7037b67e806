"""The sharded stages run the way users run them, ``python -m tasks.<stage>`` with
``orchestration.dask_address`` set, on a real multi-process Dask cluster (``dask scheduler`` +
``dask worker`` subprocesses on 127.0.0.1), and write the same bytes as a local run.

Under ``python -m`` a stage's shard function lives in ``__main__``; plain Dask would pickle it
by value with its module globals (the score stage's model lock: ``cannot pickle
'_thread.lock'``). The task names recorded by the scheduler show that the shards really ran
on the cluster.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

from tests._model_helpers import tiny_models
from tests._scaleout_helpers import (
    DaskProcesses,
    StageWorld,
    dask_cluster,
    one_torch_thread,
    run_cli,
    stage_params,
    stage_world,
    tree_bytes,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> StageWorld:
    return stage_world(tmp_path_factory.mktemp("dask-cli-world"), tiny_models(tmp_path_factory))


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> DaskProcesses:
    return dask_cluster(request)


# stage, its extra CLI args, the output dirs it writes (metrics hold timings: not compared), and
# encode settings (batch_order tokens: the batch_order helper travels to the workers too)
STAGES = [
    ("tasks.encode", ("--system", "tiny"), ("embeddings",), {}),
    ("tasks.encode", ("--system", "tiny"), ("embeddings",), {"batch_order": "tokens"}),
    ("tasks.bm25_mine", (), ("negatives", "runs"), {}),
    ("tasks.score", (), ("scores", "out"), {}),
    ("tasks.rerank", (), ("runs/cross-encoder",), {}),
]


@pytest.mark.parametrize(
    ("module", "args", "outputs", "encode"), STAGES,
    ids=[s[0] + "".join(f"-{v}" for v in s[3].values()) for s in STAGES],
)  # fmt: skip
def test_stage_cli_on_dask_cluster_matches_local(
    module: str, args: tuple[str, ...], outputs: tuple[str, ...], encode: dict[str, str],
    world: StageWorld, cluster: DaskProcesses, tmp_path: Path,
) -> None:  # fmt: skip
    # the local reference in-process (how it is started does not change its bytes; saves an import
    # of torch) with the worker's one torch thread; the Dask run exactly as a user starts it
    main = importlib.import_module(module).main
    local = stage_params(world, tmp_path / "local", encode, local_workers=1)
    with one_torch_thread():
        assert main(["--params", str(local), *args]) == 0
    since = time.time()
    remote = run_cli(
        module, stage_params(world, tmp_path / "dask", encode, dask_address=cluster.address), *args
    )
    assert remote.returncode == 0, remote.stderr[-3000:] + cluster.logs()
    assert f"shards run on {cluster.address}" in remote.stderr
    ran = cluster.task_names(since)
    assert ran and set(ran) == {"run_readdressed"}, ran  # every shard, by reference to the module
    for out in outputs:
        files = tree_bytes(tmp_path / "local" / out)
        assert files, f"{module} wrote nothing under {out}/"
        assert tree_bytes(tmp_path / "dask" / out) == files, out
    if encode:
        assert (
            '"batch_order": "tokens"'
            in (tmp_path / "dask" / "embeddings" / "tiny" / "manifest.json").read_text()
        )


def test_ping_runs_a_probe_on_every_worker(world: StageWorld, cluster: DaskProcesses, tmp_path: Path) -> None:
    from tasks.config import ROOT

    res = run_cli("tasks.scaleout", stage_params(world, tmp_path, dask_address=cluster.address), "--ping")
    assert res.returncode == 0, res.stderr
    (pid,) = cluster.worker_pids()
    assert "ok: a shard ran on" in res.stderr and f"(pid {pid}) from {ROOT}" in res.stderr
    assert "WARNING" not in res.stderr


def test_ping_without_scheduler_names_the_key(world: StageWorld, tmp_path: Path) -> None:
    params = stage_params(world, tmp_path, dask_address="tcp://127.0.0.1:9")
    res = run_cli("tasks.scaleout", params, "--ping", "--timeout", "2")
    assert res.returncode == 2
    assert "orchestration.dask_address='tcp://127.0.0.1:9'" in res.stderr
