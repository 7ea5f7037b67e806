"""One writer per output: exclusive ``fcntl.flock`` locks that die with their holder.

Why: when ``dvc repro`` (or the flow) is killed, the stage process it started keeps running,
and DVC's own lock dies with DVC; the next ``dvc repro`` would start a second writer on the
same outputs. Every stage CLI therefore takes a lock (``tasks.cli.run_stage``) before it
touches anything, and a second process of the same stage on the same outputs exits at once
with code 4 and one line naming the holder.

``flock`` locks belong to the open file: the kernel releases them when the holder exits,
however it exits (kill -9 included), so a lock is never stale and never needs clearing by
hand. The file itself only carries the holder's pid, host, command and start time for the
message; a cleanly released lock removes its file, a killed holder leaves an unlocked file
that the next holder reuses.

Lock files live per checkout outside every DVC output: ``<root>/.dvc/tmp/locks/`` (beside
DVC's own lock), or ``<root>/data/.locks/`` where the root is not a DVC repository.
A stage's lock is named by the stage and a hash of the resolved ``paths`` it writes under,
so runs on other outputs (another profile, a test's temp dir) never block each other.

    with hold(lock_path("flow"), "the pipeline flow"):   # Busy if another process holds it
        ...

The primitive is reentrant within one process (a flow holding ``flow`` may call code that
takes it again) and not shared with child processes (the descriptor is not inheritable).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.config import ROOT, Config

EXIT_BUSY = 4


class Busy(RuntimeError):
    """Another live process holds the lock; ``holder`` is what it wrote (may be empty)."""

    def __init__(self, path: Path, what: str, holder: dict[str, Any]) -> None:
        self.path, self.what, self.holder = path, what, holder
        pid = holder.get("pid", "unknown")
        since = holder.get("started", "an unknown time")
        host = holder.get("host", "?")
        command = holder.get("command", "?")
        stop = f"or stop it (`kill {pid}`)" if host == socket.gethostname() else f"or stop it on {host}"
        super().__init__(
            f"{what} is already running (pid {pid} on {host} since {since}: {command}); "
            f"wait for it to finish {stop}, then run again [lock {path}]"
        )


def lock_dir(root: Path = ROOT) -> Path:
    """Where this checkout keeps its lock files (outside every DVC output)."""
    return root / ".dvc" / "tmp" / "locks" if (root / ".dvc").is_dir() else root / "data" / ".locks"


def lock_path(name: str, root: Path = ROOT) -> Path:
    """The lock file of ``name`` (``flow``, ``score-1a2b...``) in this checkout."""
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)
    return lock_dir(root) / f"{safe}.lock"


def stage_lock_path(cfg: Config, stage: str, root: Path = ROOT) -> Path:
    """The lock of one stage instance (``score``, ``encode@smoke-bi-cls-dot``) on ``cfg``'s outputs."""
    paths = {key: str(cfg.path(key).resolve()) for key in type(cfg.paths).model_fields}
    digest = hashlib.sha256(json.dumps(paths, sort_keys=True).encode()).hexdigest()[:12]
    return lock_path(f"{stage}-{digest}", root)


def read_holder(path: Path) -> dict[str, Any]:
    """What the holder of ``path`` wrote about itself ({} if nothing readable yet)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class _Held:
    fd: int
    count: int


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


def _try_lock(path: Path) -> int | None:
    """Open and lock ``path`` without blocking: the descriptor, or None if it is held.

    The holder unlinks the file on release; a contender that locked a file which was just
    unlinked (or replaced) sees another inode under the name and tries again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _command_line() -> str:
    """This process's command as a user would type it (``python -m tasks.score --params ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None else Path(sys.argv[0]).name
    return " ".join([head, *sys.argv[1:]])[:300]


@contextlib.contextmanager
def hold(path: Path, what: str, wait_s: float | None = 0.0) -> Iterator[Path]:
    """Hold the exclusive lock ``path`` for the ``with`` block.

    ``wait_s``: 0 fails at once (:class:`Busy`), a number waits that many seconds for the
    holder to finish, ``None`` waits as long as it takes. Reentrant within this process.
    """
    key = os.path.abspath(path)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held.count += 1
    if held is not None:
        try:
            yield path
        finally:
            with _HELD_GUARD:
                held.count -= 1
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while (fd := _try_lock(path)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise Busy(path, what, read_holder(path))
        time.sleep(0.2)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": _command_line(),
        "what": what,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder, sort_keys=True) + "\n").encode(), 0)
    with _HELD_GUARD:
        _HELD[key] = _Held(fd, 1)
    try:
        yield path
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still locked: the next holder creates a fresh file
        os.close(fd)


def stage_name(module: str) -> str:
    """The lock name of a stage module: ``tasks.score`` -> ``score``; ``__main__`` -> its real name."""
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return module.rsplit(".", 1)[-1]


@contextlib.contextmanager
def stage_lock(cfg: Config, stage: str, root: Path = ROOT) -> Iterator[Path]:
    """One process per stage instance and outputs: raises :class:`Busy` if another holds it."""
    with hold(stage_lock_path(cfg, stage, root), f"stage {stage}") as path:
        yield path
