"""The stage / checkout lock (tasks.locks) with real processes: refused while held, freed by kill -9.

The end-to-end case -- ``dvc repro`` killed while its stage runs, the next ``dvc repro`` refused
with exit 4 -- is ``tests/test_score_resume.py::test_killed_dvc_repro_leaves_one_writer``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks.config import compose
from tasks.locks import Busy, hold, lock_path, read_holder, stage_name

ROOT = Path(__file__).resolve().parent.parent

HOLDER = """
import sys, time
from pathlib import Path
from tasks.locks import hold
with hold(Path(sys.argv[1]), "the test holder"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""

STAGE_HOLDER = """
import sys, time
from tasks.config import load_config
from tasks.locks import stage_lock
with stage_lock(load_config(sys.argv[1]), "denoise"):
    print("held", flush=True)
    time.sleep(60)
"""


def _start(code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def test_held_lock_is_refused_naming_the_holder_and_kill_9_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    child = _start(HOLDER, str(path), "60")
    try:
        with pytest.raises(Busy) as exc:
            with hold(path, "stage x"):
                pass
        message = str(exc.value)
        assert "\n" not in message and message.startswith("stage x is already running (pid ")
        assert f"pid {child.pid} " in message and f"kill {child.pid}" in message and str(path) in message
        assert exc.value.holder["pid"] == child.pid and exc.value.holder["what"] == "the test holder"
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert read_holder(path)["pid"] == child.pid  # the dead holder's file stays behind...
        t0 = time.monotonic()
        with hold(path, "stage x"):  # ...but its lock died with it: no stale lock to clear
            assert time.monotonic() - t0 < 1 and read_holder(path)["pid"] == os.getpid()
        assert not path.exists()  # a clean release removes the file
    finally:
        _stop(child)


def test_wait_s_waits_for_the_holder_and_the_lock_is_reentrant(tmp_path: Path) -> None:
    path = tmp_path / "w.lock"
    held_since = time.monotonic()  # the holder releases 3 s after it got the lock, so later than 3 s from now
    child = _start(HOLDER, str(path), "3")
    try:
        t0 = time.monotonic()
        with pytest.raises(Busy):
            with hold(path, "w", wait_s=0.3):
                pass
        assert 0.3 <= time.monotonic() - t0 < 2.5
        with hold(path, "w", wait_s=60):
            assert time.monotonic() - held_since >= 3  # got it once the holder had let go
            assert child.wait(timeout=30) == 0
            with hold(path, "w"):  # the same process may take it again (flow -> pipeline)
                pass
            assert read_holder(path)["pid"] == os.getpid()  # still held after the inner release
    finally:
        _stop(child)


def test_stage_cli_exits_4_while_the_same_stage_runs_on_the_same_outputs(tmp_path: Path) -> None:
    def params(name: str) -> Path:
        data = yaml.safe_load(compose("sample"))
        data["paths"] = {key: str(tmp_path / name / key) for key in data["paths"]}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    mine, other = params("mine"), params("other")
    child = _start(STAGE_HOLDER, str(mine))
    try:
        cli = [sys.executable, "-m", "tasks.denoise", "--params"]
        busy = subprocess.run([*cli, str(mine)], cwd=ROOT, capture_output=True, text=True, check=False)
        assert busy.returncode == 4, busy.stderr
        errors = [line for line in busy.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and f"stage denoise is already running (pid {child.pid} " in errors[0]
        # other outputs (another profile, another checkout's paths): not blocked -- it fails on
        # its missing input instead (exit 1), as it would without any lock
        free = subprocess.run([*cli, str(other)], cwd=ROOT, capture_output=True, text=True, check=False)
        assert free.returncode == 1, free.stderr
    finally:
        _stop(child)
    after = subprocess.run([*cli, str(mine)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert after.returncode == 1, after.stderr  # lock free again: on to the (missing) input


def test_names() -> None:
    assert stage_name("tasks.score") == "score"
    assert lock_path("encode@smoke bi/x").name == "encode@smoke_bi_x.lock"
    assert lock_path("flow").parent == ROOT / ".dvc" / "tmp" / "locks"
