"""Where shard work runs: a Dask cluster, local processes, or this process.

The heavy stages (encode, score, BM25 mining) split their work into shards and hand each
shard to a module-level, pure function. This module decides where those calls run, from
``params.yaml``'s ``orchestration`` section:

- ``dask_address: tcp://scheduler:8786`` -> the shards go to that ``dask.distributed`` cluster
  (``Client.get_executor()``). Every worker needs this project importable at the same path
  and the same data directories (a shared filesystem), since shard functions read and write
  by path.
- otherwise ``local_workers > 1`` -> a local :class:`~concurrent.futures.ProcessPoolExecutor`
  (``spawn`` context: safe with torch and threads), each worker limited to its share of the
  cores (``OMP_NUM_THREADS`` = cores // workers), so N workers never run N x cores threads;
- ``local_workers == 1`` -> in-process, one shard after another.

All three are ``concurrent.futures``-style (``submit(fn, *args)`` returning futures), and
:func:`map_ordered` returns results in submission order whichever finishes first, so the
outputs are identical wherever the shards ran. The scheduler address is deliberately not a
DVC param of any stage: where the work runs does not change what it produces.

    python -m tasks.scaleout --params params.yaml   # says which executor the config selects
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

from tasks.accel import cpu_count
from tasks.config import ConfigError, Orchestration, load_config

log = logging.getLogger(__name__)

T = TypeVar("T")


class InlineExecutor(Executor):
    """Runs each call at ``submit`` time in this process; returns a finished future."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the caller through the future, as a pool would
            fut.set_exception(exc)
        return fut


def _limit_threads(threads: int) -> None:
    """Pool initializer: this worker's share of the cores, for torch, OpenMP and BLAS alike.

    Set before torch is imported in the (spawned) worker, so torch starts with that many
    threads; ``tasks.accel.configure_threads`` honours it too. Measured on 2 cores, the sample's
    ``score`` stage with 2 workers: 2 threads each, 100-230 pairs/s per worker (10+ min);
    1 thread each, 870-1,270 pairs/s per worker (86 s).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def describe(orch: Orchestration) -> str:
    """One line saying where shard work will run for this config."""
    if orch.dask_address:
        return f"dask cluster at {orch.dask_address}"
    if orch.local_workers > 1:
        return f"{orch.local_workers} local processes"
    return "in-process"


@contextlib.contextmanager
def executor(orch: Orchestration, *, timeout_s: float = 30.0) -> Iterator[Executor]:
    """Yield the executor selected by ``orch`` and shut it down afterwards.

    With a Dask address, connecting waits at most ``timeout_s`` and fails with a message
    naming ``orchestration.dask_address`` if no scheduler answers.
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
        log.info("shards run on %s (%d workers)", orch.dask_address, len(client.scheduler_info()["workers"]))
        try:
            with client.get_executor(pure=False) as ex:
                yield ex
        finally:
            client.close()
    elif orch.local_workers > 1:
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, cpu_count() // orch.local_workers)
        with ProcessPoolExecutor(
            max_workers=orch.local_workers, mp_context=ctx, initializer=_limit_threads, initargs=(threads,)
        ) as ex:
            yield ex
    else:
        yield InlineExecutor()


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.scaleout",
        description="Say where shard work (encode, score, BM25 mining) runs for this config: "
        "a Dask cluster (orchestration.dask_address), local processes (orchestration.local_workers) "
        "or in-process; with --ping, also connect and count the workers.",
        epilog="example: dask scheduler & dask worker tcp://127.0.0.1:8786 & python -m tasks.scaleout --ping",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--ping", action="store_true", help="connect and run one trivial shard")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        orch = load_config(args.params).orchestration
        log.info("shard work runs on: %s", describe(orch))
        if args.ping:
            with executor(orch) as ex:
                map_ordered(ex, abs, [(-1,)])
            log.info("ok: a shard ran")
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
