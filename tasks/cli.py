"""The command-line frame every stage module shares: ``--params``, logging and exit codes.

    parser = stage_parser("tasks.merge", "What the stage does.", "python -m tasks.merge")
    args = parser.parse_args(argv)
    return run_stage(args.params, lambda cfg: run(...paths from cfg...))

Every failure ends with ONE log line (no traceback) that names the file and says what to do,
and the exit code tells a scheduler what kind of failure it was:

- 0 done.
- 1 bad input data or a missing input file: an empty or truncated file, a line with the wrong
  number of fields, an empty text where one is required (the message names the file and line).
- 2 a missing or invalid ``params.yaml`` (the message names the key).
- 3 an OS or environment error reading or writing a file: disk full (ENOSPC), quota (EDQUOT),
  file too large (EFBIG, including the ``ulimit -f`` limit: SIGXFSZ is ignored so the write
  fails with EFBIG instead of killing the stage), read-only file system (EROFS), permission
  denied (EACCES/EPERM), I/O error... (the message names the file and what to free or fix); or
  a process whose torch CPU kernels were chosen before ``cpu_kernels`` could pin them (the
  message says how to start it).
- 4 busy: another process is already running this stage or holds this checkout.
- 130 interrupted (Ctrl-C, SIGINT): the work done so far is kept where the stage resumes from
  (its shards, packs or caches); rerun the same command to go on.

In every failing case the previous outputs are unchanged: every writer goes through
:mod:`tasks.io`'s atomic helpers, which remove their temporary file on the way out.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from tasks.config import Config, ConfigError, load_config
from tasks.io import DataError, EnvironmentMismatch, describe_os_error
from tasks.locks import EXIT_BUSY, Busy, stage_lock, stage_name

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended


def stage_parser(module: str, description: str, example: str, **kwargs: Any) -> argparse.ArgumentParser:
    """An argument parser for ``python -m <module>`` with ``--params`` and an example epilog."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=description, epilog=f"example: {example}", **kwargs
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def report_errors(work: Callable[[], object]) -> int:
    """Call ``work()``; turn a failure into one logged line and its exit code (module docstring).

    The mapping behind :func:`run_stage`, for a command that loads no params file itself.
    """
    try:
        work()
    except ConfigError as exc:  # a ValueError too: caught first
        log.error("%s", exc)
        return 2
    except (DataError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:  # after FileNotFoundError: a missing input is bad input (1)
        log.error("%s", describe_os_error(exc))
        return 3
    except EnvironmentMismatch as exc:  # e.g. torch's kernels chosen before the stage could pin them
        log.error("%s", exc)
        return 3
    except KeyboardInterrupt:
        log.error("interrupted (SIGINT): outputs unchanged, finished work kept; rerun to resume")
        return EXIT_INTERRUPTED
    return 0


def ignore_sigxfsz() -> None:
    """Make a write past ``ulimit -f`` fail with EFBIG (reported, exit 3) instead of killing us.

    The kernel's default for SIGXFSZ terminates the process before ``write`` can return EFBIG,
    leaving no message at all. CPython already ignores it at start-up, but not when embedded
    without signal handlers (``Py_InitializeEx(0)``); saying it here keeps the guarantee in
    one place. Only the main thread may set a handler; elsewhere this does nothing.
    """
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def skip_exit_collection() -> None:
    """At interpreter exit, let the OS reclaim the objects instead of the cyclic collector.

    A stage that imported torch and sentence-transformers spends ~1 s after its last line
    tearing that object graph down (2-core Xeon, measured: 0.98 s, 0.15 s with this). At exit,
    :func:`gc.freeze` moves every object out of the collector's reach; atexit handlers, and
    objects freed by reference counting, still run as before: only garbage *cycles* left at exit
    are not collected, and every writer here closes and renames its files explicitly first.
    Registered once per process; harmless in a process that calls stages in-process (tests).
    """
    if not getattr(skip_exit_collection, "registered", False):
        atexit.register(gc.freeze)
        skip_exit_collection.registered = True  # type: ignore[attr-defined]


def run_stage(params: str, work: Callable[[Config], object], lock: str | None = None) -> int:
    """Load and validate ``params``, call ``work(cfg)``; log a clear error and return the exit code.

    ``work`` runs holding the stage's lock (:mod:`tasks.locks`), named ``lock`` (e.g.
    ``encode@<system>``) or by default after the stage module (``tasks.score`` -> ``score``):
    while another live process runs the same stage on the same outputs, this exits 4 at once.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    ignore_sigxfsz()
    skip_exit_collection()

    def locked() -> None:
        cfg = load_config(params)
        with stage_lock(cfg, lock or stage_name(work.__module__)):
            work(cfg)

    try:
        return report_errors(locked)
    except Busy as exc:
        log.error("%s", exc)
        return EXIT_BUSY
