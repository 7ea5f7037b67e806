"""Leftovers of killed writers are removed by the next run; a live writer's never (issue 13, item 4).

Writers are real processes using the real atomic helpers (:mod:`tasks.io`), killed with
SIGKILL while their temporary file or staging directory is open, or in the middle of a
directory swap; the rerun is the stage that owns the output.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.io import atomic_dir, atomic_path, remove_leftovers, scratch_dir
from tasks.records import read_hard_negatives
from tests._faults_helpers import HARD_NEGATIVES, ROOT, leftovers, make_project, raw, run_cli, snapshot

WRITE_FILE = """
import sys, time
from tasks.io import write_text_atomic
with write_text_atomic(sys.argv[1]) as fh:
    fh.write("x" * (1 << 20))
    fh.flush()
    print("writing", flush=True)
    time.sleep(600)
"""

WRITE_DIR = """
import os, sys, time
from tasks.io import atomic_dir
replace = os.replace
def pausing_replace(src, dst):  # pause between the two renames of the swap when asked
    replace(src, dst)
    if sys.argv[2] == "swap" and str(dst).endswith(".old"):
        print("writing", flush=True)
        time.sleep(600)
os.replace = pausing_replace
with atomic_dir(sys.argv[1]) as stage:
    (stage / "big").write_bytes(b"x" * (1 << 20))
    if sys.argv[2] == "stage":
        print("writing", flush=True)
        time.sleep(600)
"""


@pytest.fixture
def writer() -> Iterator:
    """Start a writer process; wait until it is mid-write. Killed (if alive) at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _kill9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def test_kill_9_mid_write_then_the_stage_rerun_removes_the_temp_file(tmp_path: Path, writer) -> None:
    params = make_project(tmp_path)
    out = tmp_path / "out" / HARD_NEGATIVES
    proc = writer(WRITE_FILE, str(out))
    temp = out.with_name(f".{out.name}.{proc.pid}.tmp")
    assert temp.exists()
    assert remove_leftovers(out) == [] and temp.exists()  # alive and locked: never touched
    _kill9(proc)
    assert temp.exists() and not out.exists()  # what a kill -9 leaves behind
    done = run_cli("merge", params)
    assert done.returncode == 0, done.stderr
    assert f"removed 1 leftover(s) of killed writers of {out}: {temp.name}" in done.stderr
    assert leftovers(out.parent) == [] and len(list(read_hard_negatives(out))) == 3


def _bm25_project(tmp_path: Path) -> Path:
    params = make_project(tmp_path)
    passages = "".join(f"{p}\tpassage number {p}\n" for p in range(1, 20))
    raw(tmp_path, None, "collection").write_text(passages)
    return params


def test_kill_9_mid_staging_and_mid_swap(tmp_path: Path, writer, caplog) -> None:
    """A staging directory of a killed writer is removed; a swap killed between its two renames
    (the final name missing, ``.<name>.old`` holding the previous version) is undone first, so
    even a failing rerun leaves the previous index in place."""
    from tasks.bm25_index import main

    params = _bm25_project(tmp_path)
    index = tmp_path / "bm25_index"
    assert main(["--params", str(params)]) == 0
    before = snapshot(index)

    proc = writer(WRITE_DIR, str(index), "stage")
    staging = tmp_path / f".bm25_index.{proc.pid}.staging"
    _kill9(proc)
    assert staging.is_dir()
    with caplog.at_level(logging.INFO, logger="tasks.io"):
        assert main(["--params", str(params)]) == 0
    assert f"removed 1 leftover(s) of killed writers of {index}: {staging.name}" in caplog.text
    assert leftovers(tmp_path) == [] and snapshot(index) == before

    proc = writer(WRITE_DIR, str(index), "swap")
    _kill9(proc)
    assert not index.exists() and (tmp_path / ".bm25_index.old").is_dir()
    collection = raw(tmp_path, None, "collection")
    good = collection.read_text()
    collection.write_text(good + "20\ta\tstray tab\n")  # this rerun fails
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["--params", str(params)]) == 1
    assert "restored the previous version from .bm25_index.old (a swap was interrupted)" in caplog.text
    assert snapshot(index) == before and leftovers(tmp_path) == []
    collection.write_text(good)
    assert main(["--params", str(params)]) == 0
    assert snapshot(index) == before and leftovers(tmp_path) == []


def test_pid_reuse_and_live_processes(tmp_path: Path) -> None:
    """Unlocked temporaries: removed when their pid is dead or was reused (the process started
    after the file was last written); kept when a live process may have written them."""
    final = tmp_path / "f.txt"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        gone = tmp_path / f".f.txt.{int(dead.stdout)}.tmp"
        reused = tmp_path / f".f.txt.{sleeper.pid}.tmp"
        maybe_live = tmp_path / f".f.txt.{os.getpid()}.staging"
        other = tmp_path / ".g.txt.1.tmp"  # another final name: not ours to judge
        for path in (gone, reused, other):
            path.write_text("old")
        maybe_live.mkdir()
        hour_ago = time.time() - 3600
        os.utime(reused, (hour_ago, hour_ago))
        time.sleep(0.01)
        assert sorted(p.name for p in remove_leftovers(final)) == sorted([gone.name, reused.name])
        assert maybe_live.exists() and other.exists()  # this process started before it was made
    finally:
        sleeper.kill()
        sleeper.wait()
    with atomic_path(final) as tmp:  # the writer's own temporary is locked while it writes
        tmp.write_text("new")
        assert remove_leftovers(final) == [] and tmp.exists()
    assert final.read_text() == "new"


def test_scratch_dirs_of_killed_processes_are_removed(tmp_path: Path) -> None:
    """convert's spill space (gigabytes for the full QA set) no longer has a random name."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    spill = tmp_path / f".qa-convert-train.jsonl.gz.{int(dead.stdout)}.scratch"
    (spill / "sub").mkdir(parents=True)
    (spill / "sub" / "col.spill").write_text("x")
    with scratch_dir(tmp_path, "qa-convert-train.jsonl.gz") as work:
        assert not spill.exists() and work.name == f".qa-convert-train.jsonl.gz.{os.getpid()}.scratch"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as stage:
        (stage / "a").write_text("1")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
