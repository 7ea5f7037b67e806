"""Where shard work runs: a Dask cluster, local processes, or this process.

The heavy stages (encode, score, ce_rerank, BM25 mining) split their work into shards and hand
each shard to a module-level, pure function. This module decides where those calls run, from
``params.yaml``'s ``orchestration`` section:

- ``dask_address: tcp://scheduler:8786`` -> the shards go to that ``dask.distributed`` cluster
  (``Client.get_executor()``). Every worker needs this project importable (installed, or
  ``PYTHONPATH`` at the checkout) and the same data directories at the same paths (a shared
  filesystem), since shard functions read and write by path.
- otherwise ``local_workers > 1`` -> a local :class:`~concurrent.futures.ProcessPoolExecutor`
  (``spawn`` context: safe with torch and threads), each worker limited to its share of the
  cores (``OMP_NUM_THREADS`` = cores // workers), so N workers never run N x cores threads;
- ``local_workers == 1`` -> in-process, one shard after another;
- ``local_workers: auto`` (the default) -> in-process on CPU (torch's threads use every core:
  one model load, no worker start-up, no idle core while the last shard of one worker runs; on
  2 cores one process encoded 7,800 texts in 62 s against 85 s for two, ``benchmarks/RESULTS.md``),
  one worker per visible GPU on CUDA.

Where the stage's model runs decides the local worker count (:func:`plan_local`; a stage passes
its ``device`` param to :func:`executor`): on CPU, ``local_workers`` processes; on CUDA, one
worker per visible GPU, at most ``local_workers`` of them, each pinned to its own GPU
(``CUDA_VISIBLE_DEVICES`` set in the worker before anything can initialise CUDA, so it sees
that GPU alone, as ``cuda:0``). One GPU (or ``local_workers: 1``) runs the shards in-process:
every extra worker on a GPU would hold one more copy of the model in its memory and compete
for the same compute. With more GPUs than ``local_workers``, the log line says how many sit
idle and which setting to raise. BM25 mining (no model) passes no device: the CPU plan. The
log says the plan in one line (``2 local workers on CPU, 1 thread(s) each``; ``1 worker per
GPU: 4 workers on cuda:0..3, 4 CPU thread(s) each``). None of this changes a byte of output:
a shard's result depends only on its spec, and :func:`map_ordered` keeps submission order.

All three are ``concurrent.futures``-style (``submit(fn, *args)`` returning futures), and
:func:`map_ordered` returns results in submission order whichever finishes first, so the
outputs are identical wherever the shards ran. The scheduler address is deliberately not a
DVC param of any stage: where the work runs does not change what it produces.

Two guarantees this layer adds, because users run stages as ``python -m tasks.<stage>`` under
``dvc repro`` and the Prefect flow:

- **No orphans** (:func:`process_pool`): a local worker dies within a second of its parent
  (kill -9 included). Otherwise it would block forever on its task pipe, holding its model
  (~700 MB; GPU memory on a GPU machine) and the stage's stdout, so ``dvc`` and the flow
  reading that stdout would never see EOF.
- **Stage functions pickle by reference** (:class:`ImportableCalls`): under ``python -m
  tasks.score`` the shard function lives in ``__main__``, which cloudpickle ships *by value*
  with its module globals (a ``threading.Lock`` fails to pickle; a module-level model cache
  would be rebuilt per shard). Calls are re-addressed to the importable module
  (``tasks.score``), which every worker imports once.

    python -m tasks.scaleout --params params.yaml          # which executor the config selects
    python -m tasks.scaleout --params params.yaml --ping   # and run a probe on every Dask worker
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import importlib
import io
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import operator
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import cloudpickle
from tqdm import tqdm

from tasks.accel import cpu_count
from tasks.config import ConfigError, Orchestration, load_config

log = logging.getLogger(__name__)

T = TypeVar("T")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_POLL_S = 0.5  # parent check interval where no parent pipe is available


class InlineExecutor(Executor):
    """Runs each call at ``submit`` time in this process; returns a finished future."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the caller through the future, as a pool would
            fut.set_exception(exc)
        return fut


# --------------------------------------------------------------------------- no orphans
def _limit_threads(threads: int) -> None:
    """This worker's share of the cores, for torch, OpenMP and BLAS alike.

    Set before torch is imported in the (spawned) worker, so torch starts with that many
    threads; ``tasks.accel.configure_threads`` honours it too. Measured on 2 cores, the sample's
    ``score`` stage with 2 workers: 2 threads each, 100-230 pairs/s per worker (10+ min);
    1 thread each, 870-1,270 pairs/s per worker (86 s).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def _set_pdeathsig() -> bool:
    """Ask Linux to SIGKILL this process when the thread that spawned it ends."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:  # no libc / no prctl: the watchdog still works
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
        return False
    return True


def _orphaned() -> None:
    # The main thread may be blocked on the task pipe or deep in a model call: end the process
    # itself, at once. Nothing to flush: the parent that would read results is gone; and no
    # logging: stderr may be a full pipe nobody reads any more, and a write would block.
    os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid == parent_pid:
        # the read end of the pipe the parent spawned us through: EOF (ready) when it dies
        multiprocessing.connection.wait([parent.sentinel])
    else:
        while os.getppid() == parent_pid:
            time.sleep(WATCH_POLL_S)
    _orphaned()


def exit_with_parent(parent_pid: int) -> None:
    """End this process as soon as process ``parent_pid`` (its parent) ends, however it ends.

    Two mechanisms, because either alone has a gap: ``PR_SET_PDEATHSIG`` (Linux; a SIGKILL from
    the kernel, immediate even while this process is stuck in a C call) fires when the parent
    *thread* that spawned us ends, so the parent must spawn from a thread that lives as long as
    it does (:func:`process_pool` does); the watchdog thread (any POSIX system) waits for EOF on
    the pipe multiprocessing spawned us through, or polls the parent pid. A parent that died
    before this call is caught by comparing ``os.getppid()`` afterwards.
    """
    _set_pdeathsig()
    if os.getppid() != parent_pid:
        _orphaned()
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _pin_gpu(gpus: tuple[str, ...], slot: Any) -> str:
    """Give this worker the next GPU of ``gpus`` (``slot``: a shared counter) as its only one.

    ``CUDA_VISIBLE_DEVICES`` is read once, when CUDA initialises in this process (the first
    ``torch.cuda`` call that needs the driver, never ``import torch`` itself), so it is set
    here, before any shard runs; a worker whose CUDA is already up would silently share the
    first GPU, so it fails instead.
    """
    with slot.get_lock():
        index = slot.value
        slot.value += 1
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError(
            "this shard worker initialised CUDA before it could be pinned to one GPU (a module its "
            "parent's __main__ imports touches torch.cuda at import time?)"
        )
    gpu = gpus[index % len(gpus)]
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def _init_worker(
    parent_pid: int,
    threads: int | None,
    initializer: Callable[..., object] | None,
    initargs: tuple,
    gpus: tuple[str, ...] = (),
    slot: Any = None,
) -> None:
    """Pool initializer: die with the parent, take this worker's share of cores and its GPU,
    then the caller's own initializer."""
    exit_with_parent(parent_pid)
    if threads is not None:
        _limit_threads(threads)
    if gpus:
        _pin_gpu(gpus, slot)
    if initializer is not None:
        initializer(*initargs)


class _Spawner:
    """One daemon thread, alive as long as this process, that starts every pool worker.

    ``ProcessPoolExecutor`` starts workers from whichever thread submits (or from its own
    management thread), and ``PR_SET_PDEATHSIG`` fires when *that thread* ends: a pool used
    from a short-lived thread (a Prefect task runner's, say) would have its workers killed
    under it.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], None], Future[None]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            call, done = self._calls.get()
            try:
                call()
                done.set_result(None)
            except BaseException as exc:  # handed back to the caller of start()
                done.set_exception(exc)

    def call(self, fn: Callable[[], None]) -> None:
        if threading.current_thread() is self._thread:
            fn()
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="worker-spawner", daemon=True)
                self._thread.start()
        done: Future[None] = Future()
        self._calls.put((fn, done))
        done.result()


_SPAWNER = _Spawner()


class _SpawnedByKeeper(multiprocessing.context.SpawnProcess):
    def start(self) -> None:
        _SPAWNER.call(super().start)


class _KeeperSpawnContext(multiprocessing.context.SpawnContext):
    """The ``spawn`` context, with every process started from :data:`_SPAWNER`'s thread."""

    Process = _SpawnedByKeeper  # type: ignore[assignment]


def process_pool(
    max_workers: int,
    *,
    threads: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple = (),
    gpus: Sequence[str] = (),
) -> ProcessPoolExecutor:
    """A ``spawn`` process pool whose workers exit within a second of this process's death.

    ``threads``: OpenMP/BLAS/torch threads per worker (``None``: leave as is). ``gpus``: one
    ``CUDA_VISIBLE_DEVICES`` value per worker (empty: workers inherit this process's); worker
    *i* started gets ``gpus[i]``, so each sees one GPU of its own. Every worker runs
    :func:`exit_with_parent` before ``initializer(*initargs)``.
    """
    ctx = _KeeperSpawnContext()
    gpus = tuple(gpus)
    if gpus and len(gpus) != max_workers:
        raise ValueError(f"process_pool: {len(gpus)} GPU(s) for {max_workers} workers; give one per worker")
    # a shared counter hands out the GPUs: the pool starts its workers one at a time, on demand
    slot = ctx.Value("i", 0) if gpus else None
    return ProcessPoolExecutor(
        max_workers=max_workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(os.getpid(), threads, initializer, initargs, gpus, slot),
    )


# --------------------------------------------------------------------------- Dask pickling
class _ModuleRef:
    """Pickles as ``importlib.import_module(name)``: the module, looked up where it is loaded."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return importlib.import_module, (self.name,)


class _Readdressing(cloudpickle.CloudPickler):
    """cloudpickle, except that functions and classes of module ``src`` are pickled by
    reference to module ``dst``; everything else as cloudpickle would."""

    def __init__(self, file: io.BytesIO, src: str, dst: str) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._src, self._dst = src, dst

    def reducer_override(self, obj: Any) -> Any:
        if (
            isinstance(obj, type | types.FunctionType)
            and getattr(obj, "__module__", None) == self._src
            and "<locals>" not in obj.__qualname__
            and "<lambda>" not in obj.__qualname__
        ):
            # stdlib callables only: nothing of ``src`` itself (this module under ``python -m
            # tasks.scaleout``) may appear in the reduction, or it would recurse
            return operator.attrgetter(obj.__qualname__), (_ModuleRef(self._dst),)
        return super().reducer_override(obj)


def _dumps(obj: Any, src: str, dst: str) -> bytes:
    buf = io.BytesIO()
    _Readdressing(buf, src, dst).dump(obj)
    return buf.getvalue()


def run_readdressed(payload: bytes, main_name: str) -> bytes:
    """Worker side: run the call; its result goes back with ``main_name``'s objects re-addressed
    to ``__main__``, so the submitting stage gets its own classes back, as in-process."""
    fn, args, kwargs = pickle.loads(payload)
    return _dumps(fn(*args, **kwargs), main_name, "__main__")


def importable_main() -> str | None:
    """The importable name of ``__main__`` (``tasks.score`` under ``python -m tasks.score``),
    or ``None`` for a script, ``-c`` or an interactive session."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    return name if name and name != "__main__" and not name.endswith(".__main__") else None


class _ChainedFuture(Future[T]):
    def __init__(self, inner: Future[bytes]) -> None:
        super().__init__()
        self._inner = inner

    def cancel(self) -> bool:
        return self._inner.cancel() and super().cancel()


class ImportableCalls(Executor):
    """Wraps an executor whose calls are pickled (Dask) so ``__main__`` objects travel by
    reference to their importable module.

    ``submit(fn, *args)`` pickles ``(fn, args, kwargs)`` with every function and class of
    ``__main__`` replaced by a reference to ``main_name`` (``tasks.score``), sends that to
    :func:`run_readdressed` (itself importable), and unpickles the result here. Objects that
    are not importable (lambdas, local functions) still go by value, as with plain Dask.
    """

    def __init__(self, inner: Executor, main_name: str) -> None:
        self._inner = inner
        self._main = main_name

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        payload = _dumps((fn, args, kwargs), "__main__", self._main)
        inner: Future[bytes] = self._inner.submit(run_readdressed, payload, self._main)
        outer: _ChainedFuture[T] = _ChainedFuture(inner)

        def settle(done: Future[bytes]) -> None:
            if done.cancelled():
                outer.cancel()
                return
            exc = done.exception()
            try:
                if exc is not None:
                    outer.set_exception(exc)
                else:
                    outer.set_result(pickle.loads(done.result()))
            except Exception as err:  # an undecodable result: the caller sees why
                if not outer.done():
                    outer.set_exception(err)

        inner.add_done_callback(settle)
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inner.shutdown(wait=wait, cancel_futures=cancel_futures)


def readdress_main(ex: Executor) -> Executor:
    """``ex`` wrapped in :class:`ImportableCalls` when ``__main__`` is importable, else ``ex``."""
    main_name = importable_main()
    return ImportableCalls(ex, main_name) if main_name else ex


# --------------------------------------------------------------------------- selection
def describe(orch: Orchestration) -> str:
    """One line saying where shard work will run for this config."""
    if orch.dask_address:
        return f"dask cluster at {orch.dask_address}"
    if orch.local_workers == "auto":
        return "in-process on CPU, one local worker per visible GPU on CUDA (local_workers: auto)"
    if orch.local_workers > 1:
        return f"{orch.local_workers} local processes"
    return "in-process"


@dataclass(frozen=True)
class LocalPlan:
    """Local shard workers: how many, their CPU threads, and the GPU each one sees."""

    workers: int  # 1 = in this process
    threads: int | None  # OpenMP/BLAS/torch threads per worker process; None in-process
    gpus: tuple[str, ...]  # CUDA_VISIBLE_DEVICES of each worker; empty = not pinned
    line: str  # what the log says


def visible_gpus(n_gpus: int, cuda_visible_devices: str | None) -> tuple[str, ...]:
    """The ``CUDA_VISIBLE_DEVICES`` value that names each of the ``n_gpus`` GPUs this process sees.

    Unset: GPU *i* is ``"i"``. Set (``"2,3"``, or UUIDs): its entries, in order; CUDA ignores
    everything from the first invalid entry on, which ``n_gpus`` (torch's count) already reflects.
    """
    if cuda_visible_devices is None:
        return tuple(str(i) for i in range(n_gpus))
    entries = tuple(e.strip() for e in cuda_visible_devices.split(",") if e.strip())
    return entries[:n_gpus]


def _gpu_list(gpus: tuple[str, ...]) -> str:
    if gpus == tuple(str(i) for i in range(len(gpus))):
        return f"cuda:0..{len(gpus) - 1}" if len(gpus) > 1 else "cuda:0"
    return ("GPUs " if len(gpus) > 1 else "GPU ") + ",".join(gpus) + " (CUDA_VISIBLE_DEVICES)"


def plan_local(
    local_workers: int | Literal["auto"],
    device: str,
    n_gpus: int,
    cpus: int,
    visible: Sequence[str] | None = None,
) -> LocalPlan:
    """Local shard workers for a stage whose model runs on ``device`` (``cpu`` | ``cuda``).

    ``cpu``: ``local_workers`` processes sharing the ``cpus`` cores (1: in-process). ``cuda``:
    one worker per GPU, at most ``local_workers`` (the most local processes the config allows),
    each pinned to one GPU of ``visible`` (default ``"0"`` .. ``"n_gpus-1"``); a single worker
    runs in-process on ``cuda:0``. No GPU visible: in-process (the stage itself then fails,
    naming its ``device`` param, if it asked for ``cuda``). ``auto``: in-process on CPU, one
    worker per GPU on CUDA.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"plan_local: device must be cpu or cuda (resolved), got {device!r}")
    if device == "cuda" and n_gpus < 1:
        return LocalPlan(1, None, (), "in-process: the stage asks for cuda but no CUDA device is visible")
    most = (1 if device == "cpu" else max(1, n_gpus)) if local_workers == "auto" else local_workers
    return _plan(most, device, n_gpus, cpus, visible)


def _plan(
    local_workers: int, device: str, n_gpus: int, cpus: int, visible: Sequence[str] | None
) -> LocalPlan:
    if device == "cpu":
        if local_workers == 1:
            return LocalPlan(1, None, (), "in-process on CPU")
        threads = max(1, cpus // local_workers)
        return LocalPlan(
            local_workers, threads, (), f"{local_workers} local workers on CPU, {threads} thread(s) each"
        )
    gpus = tuple(visible if visible is not None else visible_gpus(n_gpus, None))[:n_gpus]
    if len(gpus) < n_gpus:
        raise ValueError(f"plan_local: {n_gpus} GPUs but only {len(gpus)} CUDA_VISIBLE_DEVICES entries")
    workers = min(local_workers, n_gpus)
    idle = ""
    if n_gpus > workers:
        idle = (
            f"; {n_gpus - workers} of {n_gpus} visible GPUs idle: orchestration.local_workers is "
            f"{local_workers}, set it to {n_gpus} to use them all"
        )
    if workers == 1:
        return LocalPlan(1, None, (), f"in-process on {_gpu_list(gpus[:1])} (one model copy){idle}")
    threads = max(1, cpus // workers)
    return LocalPlan(
        workers,
        threads,
        gpus[:workers],
        f"1 worker per GPU: {workers} workers on {_gpu_list(gpus[:workers])}, {threads} CPU thread(s) "
        f"each{idle}",
    )


def resolved_device(device: str | None) -> str:
    """``cpu`` or ``cuda``: where a stage with this ``device`` param runs its model.

    The rule of :func:`tasks.accel.resolve` (``auto`` = CUDA when torch sees a GPU), without its
    side effects (dtype, threads, log line); ``None`` (a stage without a model) is ``cpu``.
    """
    if device in (None, "cpu"):
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda":
        return "cuda"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def local_plan(orch: Orchestration, device: str | None = None) -> LocalPlan:
    """:func:`plan_local` for this machine: its cores, its visible GPUs, ``orch.local_workers``."""
    dev = resolved_device(device)
    n_gpus = 0
    if dev == "cuda":
        import torch

        n_gpus = torch.cuda.device_count()  # honours CUDA_VISIBLE_DEVICES; torch's CUDA state stays lazy
    visible = visible_gpus(n_gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return plan_local(orch.local_workers, dev, n_gpus, cpu_count(), visible)


@contextlib.contextmanager
def local_executor(plan: LocalPlan) -> Iterator[Executor]:
    """The executor of ``plan``: in-process, or a :func:`process_pool` (its workers pinned to
    their GPUs); shut down afterwards."""
    if plan.workers > 1:
        with process_pool(plan.workers, threads=plan.threads, gpus=plan.gpus) as ex:
            yield ex
    else:
        yield InlineExecutor()


@contextlib.contextmanager
def executor(
    orch: Orchestration, *, device: str | None = None, timeout_s: float = 30.0
) -> Iterator[Executor]:
    """Yield the executor selected by ``orch`` and shut it down afterwards.

    ``device``: the stage's model ``device`` param (``auto`` | ``cpu`` | ``cuda``; ``None`` for a
    stage without a model); locally it decides the worker count (:func:`plan_local`), on Dask
    nothing (the cluster's workers are what they are). With a Dask address, connecting waits at
    most ``timeout_s`` and fails with a message naming ``orchestration.dask_address`` if no
    scheduler answers.
    """
    if orch.dask_address:
        from distributed import Client

        try:
            client = Client(orch.dask_address, timeout=timeout_s)
        except OSError as exc:
            raise ConfigError(
                f"params.yaml: orchestration.dask_address={orch.dask_address!r}: no Dask scheduler "
                f"answered within {timeout_s:g}s ({exc}); start one (`dask scheduler`) or set it to null"
            ) from None
        n_workers = len(client.scheduler_info()["workers"])
        log.info("shards run on %s (%d workers)", orch.dask_address, n_workers)
        if not n_workers:
            log.warning("no Dask worker is connected: shards wait until one joins (`dask worker ADDRESS`)")
        try:
            with client.get_executor(pure=False) as ex:
                yield readdress_main(ex)
        finally:
            client.close()
    else:
        plan = local_plan(orch, device)
        log.info("shard work: %s", plan.line)
        with local_executor(plan) as ex:
            yield ex


def map_ordered(
    ex: Executor | None,
    fn: Callable[..., T],
    arg_tuples: Iterable[Sequence[Any]],
    *,
    desc: str = "shards",
) -> list[T]:
    """Submit ``fn(*args)`` for each tuple and return the results in submission order.

    ``ex=None`` runs in-process. All shards are submitted first (so a cluster can run them in
    parallel); the progress bar counts completed shards; the first failure is re-raised.
    """
    ex = ex or InlineExecutor()
    futures = [ex.submit(fn, *args) for args in arg_tuples]
    with tqdm(total=len(futures), desc=desc, unit="shard", disable=len(futures) < 2) as bar:
        results = []
        for fut in futures:
            results.append(fut.result())
            bar.update(1)
    return results


# --------------------------------------------------------------------------- CLI
def probe() -> dict[str, Any]:
    """Where a shard ran and which checkout it imported (``--ping``)."""
    from tasks.config import ROOT

    return {"host": socket.gethostname(), "pid": os.getpid(), "root": str(ROOT)}


def _ping(orch: Orchestration, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Run :func:`probe` on every Dask worker (pinned to each), or once locally."""
    from tasks.config import ROOT

    with executor(orch, timeout_s=timeout_s) as ex:
        if orch.dask_address:
            from distributed import get_client

            client = get_client()
            probes = []
            for addr in sorted(client.scheduler_info()["workers"]):
                with client.get_executor(pure=False, workers=[addr], allow_other_workers=False) as pinned:
                    probes += map_ordered(readdress_main(pinned), probe, [()], desc="ping")
        else:
            probes = map_ordered(ex, probe, [()], desc="ping")
    if not probes:
        raise ConfigError(
            f"params.yaml: orchestration.dask_address={orch.dask_address!r}: the scheduler has no "
            f"workers; start some (`dask worker {orch.dask_address}`)"
        )
    for p in probes:
        log.info("ok: a shard ran on %s (pid %d) from %s", p["host"], p["pid"], p["root"])
        if p["root"] != str(ROOT):
            log.warning(
                "that worker imports the project from %s, this process from %s: shards read and "
                "write by path, so both need the same code and data at the same paths",
                p["root"],
                ROOT,
            )
    return probes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.scaleout",
        description="Say where shard work (encode, score, ce_rerank, BM25 mining) runs for this "
        "config: a Dask cluster (orchestration.dask_address), local processes "
        "(orchestration.local_workers) or in-process; with --ping, also run a probe shard there.",
        epilog="example: dask scheduler --scheduler-file s.json & dask worker --scheduler-file s.json & "
        "python -m tasks.scaleout --ping",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--ping", action="store_true", help="connect and run one probe shard per worker")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="wait at most S s for the scheduler (30)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.params)
        orch = cfg.orchestration
        log.info("shard work runs on: %s", describe(orch))
        if not orch.dask_address:  # locally, the worker count depends on where each model runs
            for stages, key, device in (
                ("encode", "encode.device", cfg.encode.device),
                ("score, ce_rerank", "cross_encoder.device", cfg.cross_encoder.device),
            ):
                log.info("%s (%s: %s): %s", stages, key, device, local_plan(orch, device).line)
        if args.ping:
            _ping(orch, args.timeout)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
