"""Run a command as a process group that can always be ended whole, streaming its output live.

Why: a DVC stage is a tree of processes (``dvc`` -> the stage command -> its shard workers).
Run with ``subprocess.run(capture_output=True)``, the flow showed nothing until the stage
ended, hung when orphaned workers kept the captured pipe open after ``dvc`` had died, and a
Ctrl-C of the flow's terminal reached every process of the tree at once. Here:

- the command runs under a small *guard* (this file run as a script) that leads a new
  session, so the terminal's SIGINT reaches only the flow, which then decides what to end;
- the guard ends the whole group (SIGTERM, then SIGKILL after a grace period) when it is
  told to (SIGTERM/SIGINT/SIGHUP) and when its stdin, a pipe from the caller, closes: the
  caller died, even by kill -9, so nothing of the stage outlives the flow;
- :func:`run_group` streams the output line by line to a callback while the command runs,
  notices when the command has exited and stops waiting for the pipe after ``exit_grace_s``
  (whatever still holds it is a leftover of the command), ends what is left of the group,
  and enforces an optional timeout.

The guard uses the standard library only and is started by path, so it starts in
milliseconds and imports nothing from the checkout the command runs in.

    python flows/supervise.py [--grace S] -- CMD [ARG...]     # the guard (run_group starts it)
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GUARD = Path(__file__).resolve()
TAIL_LINES = 60  # lines kept for the error message of a failed command


class GroupTimeout(RuntimeError):
    """The command ran past its timeout; its process group was ended."""


@dataclass
class GroupResult:
    returncode: int
    seconds: float
    tail: list[str] = field(default_factory=list)  # the last TAIL_LINES lines of output
    leftovers: int = 0  # processes of the group still alive after the command exited
    peak_rss: int = 0  # bytes: the largest sum of resident memory over the group's processes
    cpu_s: float = 0.0  # user + system CPU seconds of the command and every process it waited for


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
RSS_EVERY_S = 0.5  # how often run_group samples the group's memory


def group_rss(pgid: int) -> int:
    """Resident bytes summed over the live processes of group ``pgid`` (0 without /proc).

    Pages shared between processes (forked workers, mapped files) count once per process, so
    this is an upper bound of what the group holds, the figure a memory limit would see.
    """
    total = 0
    for pid in group_members(pgid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


# --------------------------------------------------------------------------- the guard
def _watch_stdin(stop: threading.Event) -> None:
    """Set ``stop`` when stdin (a pipe from the caller) reaches EOF: the caller is gone."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()


def _end_group(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the whole group (this guard ignores it), SIGKILL to the group after ``grace_s``."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)  # the guard too: whatever is left of the group ends here


def guard(cmd: list[str], grace_s: float) -> int:
    """Run ``cmd`` in this process's group; return its exit code (128 + N for signal N)."""
    if os.getpgrp() != os.getpid():
        os.setsid()  # started by hand: lead a group of our own all the same
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    if stat.S_ISFIFO(os.fstat(0).st_mode):
        threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    while child.poll() is None:
        if stop.wait(0.1):
            _end_group(child, grace_s)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


def _guard_main(argv: list[str]) -> int:
    grace_s = 5.0
    if argv[:1] == ["--grace"]:
        grace_s, argv = float(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python flows/supervise.py [--grace S] -- CMD [ARG...]\n")
        return 2
    return guard(argv, grace_s)


# --------------------------------------------------------------------------- the caller
def _exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, without reaping it.

    The unreaped guard keeps its pid, and so its process group id, from being reused while
    the rest of the group is still ended.
    """
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped elsewhere
        return True


def group_members(pgid: int, exclude: int | None = None) -> list[int]:
    """Live processes of group ``pgid`` (Linux /proc; an empty list where there is none)."""
    members: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return members
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _read_lines(fd: int, out: queue.Queue[tuple[str, str] | None]) -> None:
    """Split the output into lines; a tqdm-style ``\\r`` update is sent as ("progress", text)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    try:
        while chunk := os.read(fd, 65536):
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                out.put(("line", line.rsplit("\r", 1)[-1].rstrip()))
            if "\r" in pending:
                *updates, pending = pending.split("\r")
                if updates[-1].strip():
                    out.put(("progress", updates[-1].rstrip()))
    except OSError:
        pass
    finally:
        if pending.strip():
            out.put(("line", pending.rsplit("\r", 1)[-1].rstrip()))
        out.put(None)


def run_group(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    on_line: Callable[[str], None],
    timeout_s: float | None = None,
    kill_grace_s: float = 5.0,
    exit_grace_s: float = 5.0,
    progress_every_s: float = 30.0,
) -> GroupResult:
    """Run ``cmd`` under the guard; call ``on_line`` (in this thread) for each output line.

    stdout and stderr arrive merged, in order, as the command writes them. Progress-bar
    updates (``\\r`` without a newline) are passed on at most every ``progress_every_s``.
    Returns when the command has exited and its output is drained, or ``exit_grace_s`` after
    it exited if something it left behind still holds the pipe; anything left of its group is
    then ended. Raises :class:`GroupTimeout` after ``timeout_s``; on any exception in this
    thread (KeyboardInterrupt, Prefect's TerminationSignal) the group is ended before it
    propagates.
    """
    proc = subprocess.Popen(
        [sys.executable, str(GUARD), "--grace", str(kill_grace_s), "--", *cmd],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout.fileno(), lines), daemon=True)
    reader.start()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    exited_at: float | None = None
    eof = False
    last_progress = start
    leftovers = 0
    peak_rss = 0
    last_rss = start - RSS_EVERY_S
    try:
        while not (eof and exited_at is not None):
            try:
                item = lines.get(timeout=0.1)
            except queue.Empty:
                item = ("idle", "")
            if item is None:
                eof = True
            elif item[0] == "line":
                tail.append(item[1])
                on_line(item[1])
            elif item[0] == "progress" and time.monotonic() - last_progress >= progress_every_s:
                last_progress = time.monotonic()
                on_line(item[1])
            now = time.monotonic()
            if exited_at is None and now - last_rss >= RSS_EVERY_S:
                last_rss = now
                peak_rss = max(peak_rss, group_rss(proc.pid))
            if exited_at is None and _exited(proc.pid):
                exited_at = now
            if exited_at is not None and not eof and now - exited_at > exit_grace_s:
                break  # leftovers of the command hold the pipe: stop waiting for them
            if timeout_s is not None and exited_at is None and now - start > timeout_s:
                _stop_group(proc, kill_grace_s)
                raise GroupTimeout(f"ran longer than {timeout_s:g} s; its processes were ended")
        leftovers = len(group_members(proc.pid, exclude=proc.pid))
    finally:
        if exited_at is None:
            _stop_group(proc, kill_grace_s)
        _signal_group(proc.pid, signal.SIGKILL)  # nothing of the group outlives the call
        cpu_s = _reap(proc)
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        reader.join(timeout=1)
        if not reader.is_alive():  # else a process outside the group holds the pipe: never close
            proc.stdout.close()  # a descriptor a blocked read() may still use (it could be reused)
    return GroupResult(
        proc.returncode, round(time.monotonic() - start, 1), list(tail), leftovers, peak_rss, cpu_s
    )


def _reap(proc: subprocess.Popen[bytes]) -> float:
    """Wait for ``proc`` (the guard) and return its CPU seconds, its waited-for children's included.

    ``os.wait4`` reports the whole tree that exited through waits: the guard, dvc, the stage and
    any worker the stage reaped. ``Popen`` is told the exit status so it does not wait again.
    """
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:  # reaped already
        proc.wait()
        return 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return round(usage.ru_utime + usage.ru_stime, 1)


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the group; SIGKILL to it once the guard is gone or ``grace_s`` (+1) has passed."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 1
    while not _exited(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(_guard_main(sys.argv[1:]))
