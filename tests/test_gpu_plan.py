"""Local shard workers follow the model's device: CPU processes, or one pinned worker per GPU.

The planning function is tested with explicit machine facts (GPU count, cores), since this
machine has no GPU; the pinning is tested on real spawned workers, which report their own
environment: each must see exactly one GPU of its own (``CUDA_VISIBLE_DEVICES``), whatever
the GPU count here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tasks.config import Orchestration
from tasks.scaleout import (
    InlineExecutor,
    LocalPlan,
    executor,
    local_executor,
    local_plan,
    map_ordered,
    plan_local,
    process_pool,
    visible_gpus,
)

ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def worker_env(rendezvous: str, n: int) -> dict[str, str | int | None]:
    """Runs in a pool worker: wait until ``n`` shards run at once (so each is on its own
    worker), then say which process this is and what it sees."""
    Path(rendezvous, str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(os.listdir(rendezvous)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(rendezvous))} of {n} workers started")
        time.sleep(0.05)
    return {"pid": os.getpid(), **{k: os.environ.get(k) for k in ENV_KEYS}}


# --------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("n_gpus", [0, 1, 4])
def test_cpu_plan_ignores_gpus(n_gpus):
    plan = plan_local(2, "cpu", n_gpus, cpus=16)
    assert plan == LocalPlan(2, 8, (), "2 local workers on CPU, 8 thread(s) each")
    assert plan_local(1, "cpu", n_gpus, cpus=16) == LocalPlan(1, None, (), "in-process on CPU")
    assert plan_local(3, "cpu", n_gpus, cpus=2).threads == 1  # never 0 threads


def test_cuda_without_gpu_runs_in_process():
    plan = plan_local(2, "cuda", 0, cpus=16)
    assert (plan.workers, plan.gpus) == (1, ())
    assert "no CUDA device is visible" in plan.line


def test_one_gpu_one_model_copy():
    for local_workers in (1, 2, 8):
        plan = plan_local(local_workers, "cuda", 1, cpus=16)
        assert (plan.workers, plan.threads, plan.gpus) == (1, None, ())
        assert plan.line == "in-process on cuda:0 (one model copy)"


def test_four_gpus_one_worker_each():
    plan = plan_local(4, "cuda", 4, cpus=16)
    assert plan == LocalPlan(
        4, 4, ("0", "1", "2", "3"), "1 worker per GPU: 4 workers on cuda:0..3, 4 CPU thread(s) each"
    )
    assert plan_local(8, "cuda", 4, cpus=16).workers == 4  # never 2 workers on one GPU


def test_four_gpus_capped_by_local_workers_says_so():
    plan = plan_local(2, "cuda", 4, cpus=16)
    assert (plan.workers, plan.gpus) == (2, ("0", "1"))
    assert "2 of 4 visible GPUs idle" in plan.line and "local_workers" in plan.line
    one = plan_local(1, "cuda", 4, cpus=16)
    assert one.workers == 1 and "3 of 4 visible GPUs idle" in one.line


def test_parent_visible_devices_are_handed_on():
    assert visible_gpus(4, None) == ("0", "1", "2", "3")
    assert visible_gpus(2, "5, 7") == ("5", "7")
    assert visible_gpus(1, "GPU-1c2b,GPU-9f00") == ("GPU-1c2b",)  # torch counted one: CUDA stops there
    assert visible_gpus(0, "") == ()
    plan = plan_local(4, "cuda", 2, cpus=4, visible=visible_gpus(2, "5,7"))
    assert plan.gpus == ("5", "7")
    assert "GPUs 5,7" in plan.line
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES entries"):
        plan_local(2, "cuda", 2, cpus=4, visible=("3",))


def test_plan_rejects_unresolved_device():
    with pytest.raises(ValueError, match="resolved"):
        plan_local(2, "auto", 1, cpus=4)


def test_this_machine(monkeypatch):
    import torch

    orch = Orchestration(local_workers=2)
    assert local_plan(orch, "cpu").workers == 2
    assert local_plan(orch, None).line.startswith("2 local workers on CPU")  # BM25: no model
    if not torch.cuda.is_available():  # here: auto resolves to the CPU plan
        assert local_plan(orch, "auto") == local_plan(orch, "cpu")
        assert local_plan(orch, "cuda").workers == 1
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        local_plan(orch, "tpu")


# --------------------------------------------------------------------------- real workers
def test_each_worker_gets_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7,9")  # what workers would inherit unpinned
    plan = plan_local(3, "cuda", 3, cpus=3, visible=visible_gpus(3, os.environ["CUDA_VISIBLE_DEVICES"]))
    assert plan.gpus == ("5", "7", "9")
    with local_executor(plan) as ex:
        seen = map_ordered(ex, worker_env, [(str(tmp_path), 3)] * 3)
    assert len({s["pid"] for s in seen}) == 3
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in seen) == ["5", "7", "9"]  # type: ignore[type-var]
    assert {s["OMP_NUM_THREADS"] for s in seen} == {"1"}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7,9"  # the parent is left as it was


def test_unpinned_pool_and_cpu_executor_leave_devices_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with executor(Orchestration(local_workers=2), device="cpu") as ex:
        assert not isinstance(ex, InlineExecutor)
        seen = map_ordered(ex, worker_env, [(str(tmp_path), 2)] * 2)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in seen] == ["3", "3"]
    with pytest.raises(ValueError, match="one per worker"):
        process_pool(2, gpus=("0",))


def test_single_gpu_plan_is_in_process():
    with local_executor(plan_local(2, "cuda", 1, cpus=16)) as ex:
        assert isinstance(ex, InlineExecutor)
        assert map_ordered(ex, os.getpid, [()]) == [os.getpid()]


def test_auto_is_in_process_on_cpu_and_one_worker_per_gpu_on_cuda():
    """The default ``local_workers: auto``: every core in one process on CPU; every GPU on CUDA."""
    from tasks.scaleout import describe

    assert Orchestration().local_workers == "auto"
    assert plan_local("auto", "cpu", 0, cpus=16) == LocalPlan(1, None, (), "in-process on CPU")
    assert plan_local("auto", "cuda", 1, cpus=16).line == "in-process on cuda:0 (one model copy)"
    four = plan_local("auto", "cuda", 4, cpus=16)
    assert (four.workers, four.gpus) == (4, ("0", "1", "2", "3")) and "idle" not in four.line
    assert plan_local("auto", "cuda", 0, cpus=16).workers == 1  # no GPU visible: in-process
    assert "in-process on CPU" in describe(Orchestration())
