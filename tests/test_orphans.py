"""No orphans: the local shard workers of a killed stage exit within seconds, and the stdout pipe
they inherited (the one ``dvc`` and the flow read the stage's output from) reaches EOF.

Before ``tasks.scaleout.process_pool``, spawn workers outlived a kill -9 of their parent, blocked
forever on their task pipe holding their model, and kept the captured stdout open: the flow's
``subprocess.run`` of ``dvc repro`` never returned.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tasks.scaleout import process_pool
from tests._model_helpers import tiny_models
from tests._scaleout_helpers import ROOT, gone, sleepy_shard, stage_params, stage_world

DEADLINE_S = 5.0


def _lines(stream) -> queue.Queue:
    """Lines of ``stream`` as they come; ``None`` at EOF."""
    out: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, ""):
            out.put(line)
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _kill_and_check(proc: subprocess.Popen, lines: queue.Queue, workers: list[int]) -> None:
    """kill -9 ``proc``; every descendant must be gone and its stdout at EOF within the deadline."""
    family = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert set(workers) <= set(family), (workers, family)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    start = time.monotonic()
    while not all(gone(pid) for pid in family) and time.monotonic() - start < DEADLINE_S:
        time.sleep(0.05)
    alive = [pid for pid in family if not gone(pid)]
    for pid in alive:  # leave no orphan behind, even when failing
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"still running {time.monotonic() - start:.1f}s after kill -9 of the parent: {alive}"
    while True:  # the pipe every worker inherited: EOF once they are all gone
        line = lines.get(timeout=max(0.1, DEADLINE_S - (time.monotonic() - start)))
        if line is None:
            break


def test_workers_exit_when_parent_is_killed() -> None:
    code = (
        "from tasks.config import Orchestration\n"
        "from tasks.scaleout import executor\n"
        "from tests._scaleout_helpers import sleepy_shard\n"
        "with executor(Orchestration(local_workers=2)) as ex:\n"
        "    [f.result() for f in [ex.submit(sleepy_shard, 600) for _ in range(2)]]\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        lines = _lines(proc.stdout)
        workers = []
        while len(workers) < 2:  # both workers are inside a shard
            line = lines.get(timeout=60)
            assert line is not None, "the parent ended early"
            if line.startswith("shard running in "):  # other output on the shared stdout is not ours
                workers.append(int(line.split()[-1]))
        _kill_and_check(proc, lines, workers)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_score_stage_workers_exit_when_stage_is_killed(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """``python -m tasks.score`` with 2 local workers, killed as a crash or an OOM killer would."""
    world = stage_world(tmp_path_factory.mktemp("orphan-world"), tiny_models(tmp_path_factory))
    params = stage_params(world, tmp_path / "run", local_workers=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.score", "--params", str(params)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines = _lines(proc.stdout)
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2:  # spawned pool workers (not the resource tracker)
            assert proc.poll() is None and time.monotonic() < deadline, "the stage ended early"
            workers = [
                c.pid
                for c in psutil.Process(proc.pid).children()
                if "spawn_main" in " ".join(c.cmdline()) and c.status() != psutil.STATUS_ZOMBIE
            ]
            time.sleep(0.05)
        time.sleep(1.0)  # into their initializer and the model load
        _kill_and_check(proc, lines, workers)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_pool_outlives_the_thread_that_started_its_workers() -> None:
    """PR_SET_PDEATHSIG fires when the *thread* that spawned a worker ends: the pool must start
    its workers from a thread that lives as long as the process, not from the submitter."""
    with process_pool(2) as pool:
        first: list[int] = []

        def submit_from_a_short_lived_thread() -> None:
            first.extend(f.result() for f in [pool.submit(sleepy_shard, 0.5) for _ in range(2)])

        t = threading.Thread(target=submit_from_a_short_lived_thread)
        t.start()
        t.join()
        time.sleep(0.5)  # a SIGKILL from the kernel would have landed by now
        assert all(not gone(pid) for pid in first), first
        again = [f.result(timeout=30) for f in [pool.submit(sleepy_shard, 0.1) for _ in range(4)]]
        assert set(again) <= set(pool._processes), (again, list(pool._processes))
