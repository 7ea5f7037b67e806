"""Scale-out test helpers: deterministic shard functions, one real Dask cluster per session,
and a params.yaml for the sharded stages (encode, bm25_mine, score) over a tiny world.

``dask_cluster(request)`` starts ``dask scheduler`` and ``dask worker`` as real subprocesses on
127.0.0.1 (the commands the README gives), once per pytest session whichever test module asks
first, and stops them at the end of the session.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASK = Path(sys.executable).with_name("dask")
WORKER_THREADS = 2  # one worker process, two task threads: shards run concurrently


def shard_fn(shard: int, rows: int, seed: int) -> bytes:
    """A float32 'embedding' shard: seeded random inputs through a small matmul + normalise."""
    rng = np.random.default_rng([seed, shard])
    x = rng.standard_normal((rows, 32), dtype=np.float32)
    w = np.random.default_rng(seed).standard_normal((32, 16), dtype=np.float32)
    y = np.tanh(x @ w)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return y.astype("<f4").tobytes()


def failing_shard(shard: int) -> int:
    if shard == 2:
        raise ValueError(f"shard {shard}: bad input")
    return shard


def digest(parts: list[bytes]) -> str:
    return hashlib.sha256(b"".join(parts)).hexdigest()


def sleepy_shard(seconds: float) -> int:
    """Say (on the inherited stdout) that this worker runs a shard, then block like a long one."""
    print(f"shard running in {os.getpid()}", flush=True)  # noqa: T201
    time.sleep(seconds)
    return os.getpid()


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie holds no memory, files or pipes)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --------------------------------------------------------------------------- ``python -m`` shards
_LOCK = threading.Lock()  # module state that cannot be pickled, as in tasks/score.py
_CALLS: dict[int, int] = {}


@dataclass(frozen=True)
class Job:
    shard: int


def locked_shard(job: Job) -> tuple[Job, int]:
    """A shard using module state: the lock, and a per-process call counter."""
    with _LOCK:
        _CALLS[os.getpid()] = _CALLS.get(os.getpid(), 0) + 1
        return Job(job.shard * 2), _CALLS[os.getpid()]


def _main_on_dask(address: str, raw: bool) -> None:
    """``python -m tests._scaleout_helpers ADDRESS [--raw]``: submit :func:`locked_shard` from
    ``__main__`` (``--raw``: straight to Dask's executor, without the re-addressing)."""
    from distributed import Client

    from tasks.config import Orchestration
    from tasks.scaleout import executor, map_ordered

    if raw:
        with Client(address, timeout=30) as client, client.get_executor(pure=False) as ex:
            map_ordered(ex, locked_shard, [(Job(i),) for i in range(4)])
        return
    with executor(Orchestration(dask_address=address)) as ex:
        out = map_ordered(ex, locked_shard, [(Job(i),) for i in range(4)])
    # results come back as this module's own classes, as in-process
    assert [o[0] for o in out] == [Job(0), Job(2), Job(4), Job(6)], out
    assert all(type(o[0]) is Job for o in out), out
    # the worker imported the module once, by name: one counter across the shards of a process
    print(json.dumps(sorted(o[1] for o in out)))  # noqa: T201


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run in-process model work with one torch thread, as a ``dask worker`` process does.

    fp32 scores of the tiny cross-encoder differ in the last bits between 1 and 2 torch threads
    (measured: 3 of 183 pairs, by up to 3.6e-9), so a byte comparison needs equal thread counts.
    """
    import torch

    before_env, before_n = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"  # tasks.accel.configure_threads reads it
    torch.set_num_threads(1)
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env
        torch.set_num_threads(before_n)


# --------------------------------------------------------------------------- a real cluster
class DaskProcesses:
    """``dask scheduler`` + ``dask worker`` subprocesses on 127.0.0.1, found via a scheduler file."""

    def __init__(self, workdir: Path, nthreads: int = WORKER_THREADS, timeout_s: float = 90) -> None:
        self.workdir = workdir
        self.scheduler_file = workdir / "scheduler.json"
        # `dask worker` runs each worker process with OMP_NUM_THREADS=1 (its nanny's default
        # distributed.nanny.pre-spawn-environ): compare with local runs under one_torch_thread()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.procs: list[subprocess.Popen] = []
        self.log = open(workdir / "dask.log", "wb")  # noqa: SIM115 (closed in stop())
        common = {"stdout": self.log, "stderr": subprocess.STDOUT, "env": env, "cwd": workdir}
        scheduler = [DASK, *"scheduler --host 127.0.0.1 --port 0 --no-dashboard".split()]
        worker = [DASK, *f"worker --host 127.0.0.1 --nworkers 1 --nthreads {nthreads} --no-dashboard".split()]
        for cmd in (
            [*scheduler, "--scheduler-file", self.scheduler_file],
            [*worker, "--scheduler-file", self.scheduler_file, "--local-directory", workdir / "worker"],
        ):
            self.procs.append(subprocess.Popen(cmd, start_new_session=True, **common))
        try:
            self.address = self._wait(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout_s: float) -> str:
        from distributed import Client

        deadline = time.monotonic() + timeout_s
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"dask scheduler did not start: {self.logs()}")
            time.sleep(0.1)
        while True:  # the file may be half-written
            try:
                address = json.loads(self.scheduler_file.read_text())["address"]
                break
            except (json.JSONDecodeError, KeyError):
                time.sleep(0.1)
        with Client(address, timeout=timeout_s) as client:
            client.wait_for_workers(1, timeout=max(1.0, deadline - time.monotonic()))
            client.get_task_stream()  # start recording which tasks run (see task_names)
        return address

    def task_names(self, since: float) -> list[str]:
        """Key prefixes of the tasks that ran on the cluster since ``time.time()`` = ``since``."""
        from dask.utils import key_split
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            stream = client.get_task_stream(start=since)
        return sorted(key_split(rec["key"]) for rec in stream)

    def logs(self) -> str:
        self.log.flush()
        return (self.workdir / "dask.log").read_text(errors="replace")[-4000:]

    def worker_pids(self) -> list[int]:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            return sorted(client.run(os.getpid).values())

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, then the scheduler
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.log.close()


_CLUSTER = pytest.StashKey[DaskProcesses]()


def dask_cluster(request: pytest.FixtureRequest) -> DaskProcesses:
    """The session's cluster, started on first use and stopped when the session ends."""
    config = request.config
    if _CLUSTER not in config.stash:
        workdir = Path(tempfile.mkdtemp(prefix="dask-cluster-"))
        cluster = DaskProcesses(workdir)
        config.stash[_CLUSTER] = cluster

        def stop() -> None:
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)

        config.add_cleanup(stop)
    return config.stash[_CLUSTER]


# --------------------------------------------------------------------------- stage params
@dataclass(frozen=True)
class StageWorld:
    """Inputs shared by every run (``raw``), and a built BM25 index to copy into each run."""

    raw: Path
    negatives: Path
    bm25_index: Path
    runs: Path
    cross_encoder: Path
    bi_encoder: Path


def stage_world(root: Path, models: Any) -> StageWorld:
    """A tiny world for encode, bm25_mine, score and ce_rerank: the tiny models' 300-passage
    collection, 12 training queries with qrels and a hard-negatives file, dev and DL19 queries
    with BM25 runs."""
    from tasks.bm25_index import run as build_index
    from tasks.config import Bm25
    from tasks.records import Hit, write_id_text, write_run
    from tests._model_helpers import tiny_texts
    from tests._score_helpers import tiny_world

    raw = root / "raw"
    world = tiny_world(raw, models.collection)
    shutil.copy(models.collection, raw / "collection.tsv")
    qrels = "".join(f"{r.qid}\t0\t{p}\t1\n" for r in world.records for p in r.pos)
    (raw / "qrels.train.tsv").write_text(qrels)
    for name, qids in (("dev", (5, 6)), ("dl19", (7,))):
        texts = tiny_texts(len(qids), seed=len(name))
        write_id_text(raw / f"queries.{name}.tsv", zip(qids, texts, strict=True))
        hits = [Hit(q, p, r + 1, 10.0 - r) for q in qids for r, p in enumerate(range(q, q + 8))]
        write_run(root / "runs" / "bm25" / f"{name}.full.trec", hits, "bm25")  # ce_rerank's input
    build_index(raw / "collection.tsv", root / "bm25-index", Bm25(threads=1))
    return StageWorld(
        raw, world.negatives, root / "bm25-index", root / "runs", models.cross_encoder, models.bi_mean_cos
    )


def stage_params(
    world: StageWorld, root: Path, encode: dict[str, Any] | None = None, **orchestration: Any
) -> Path:
    """``root/params.yaml`` (sample profile) whose outputs and caches all live under ``root``,
    reading ``world``'s inputs; ``orchestration`` overrides keys of that section, ``encode`` of
    the encode section."""
    from tasks.config import compose

    data = yaml.safe_load(compose("sample"))
    data["paths"] = {key: str(root / key) for key in data["paths"]}
    data["paths"]["raw"] = str(world.raw)
    data["inputs"].update(
        collection="collection.tsv",
        queries_train="queries.train.tsv",
        qrels_train="qrels.train.tsv",
        queries_dev="queries.dev.tsv",
        queries_dl19="queries.dl19.tsv",
    )
    data["systems"] = {"tiny": {"model": str(world.bi_encoder), "score": "cos", "max_seq_length": 64}}
    data["encode"].update(batch_size=16, shard_size=64, device="cpu", dtype="fp32", **(encode or {}))
    data["bm25"].update(threads=1, query_batch=4)  # 12 training queries: 3 shards
    data["mine"].update(top_k=10, eval_depth=20)
    data["cross_encoder"].update(
        model=str(world.cross_encoder), shard_size=50, max_length=64, batch_size=8, device="cpu", dtype="fp32"
    )
    data["evaluate"].update(dev_candidates="bm25", dl19_candidates="bm25", ce_rerank_depth=4)
    data["orchestration"].update(orchestration)
    (root / "out").mkdir(parents=True, exist_ok=True)
    shutil.copy(world.negatives, root / "out" / world.negatives.name)
    shutil.copytree(world.bm25_index, data["paths"]["bm25_index"], dirs_exist_ok=True)
    shutil.copytree(world.runs, data["paths"]["runs"], dirs_exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (missing root: empty)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(module: str, params: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m <module> --params <params> ...`` as a user runs it, from the project root."""
    return subprocess.run(
        [sys.executable, "-m", module, "--params", str(params), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


if __name__ == "__main__":
    _main_on_dask(sys.argv[1], "--raw" in sys.argv)
