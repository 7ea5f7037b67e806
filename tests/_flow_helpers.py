"""Miniature DVC projects for the flow tests: real ``dvc``, trivial stages, real processes.

Every stage runs ``stage.py`` (written into the project), a few lines of Python whose content
does not matter but whose process behaviour does: it records its pid, prints a line, can wait
while a ``hold`` file exists, ignore SIGTERM, or leave an orphan child holding its stdout, the
way a killed stage with worker processes does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flows.pipeline import run_dvc

ROOT = Path(__file__).resolve().parent.parent

STAGE_PY = """
import argparse, os, signal, subprocess, sys, time
ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--in", dest="inputs", action="append", default=[])
ap.add_argument("--param")
ap.add_argument("--hold", action="store_true", help="wait while the file `hold` exists")
ap.add_argument("--ignore-term", action="store_true")
ap.add_argument("--orphan", action="store_true", help="with `hold`: leave a child holding stdout")
a = ap.parse_args()
if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if a.orphan and os.path.exists("hold"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open(a.out + ".orphan", "w").write(str(child.pid))
open(a.out + ".pid", "w").write(str(os.getpid()))
print(f"stage {a.out} started", flush=True)
while a.hold and os.path.exists("hold"):
    time.sleep(0.05)
text = "".join(open(p).read() for p in a.inputs) + a.out
if a.param:
    text += "".join(l for l in open("p.yaml") if l.startswith(a.param + ":")).strip()
open(a.out + ".tmp", "w").write(text + "\\n")
os.replace(a.out + ".tmp", a.out)
"""


def stage(out: str, *flags: str, deps: list[str] | None = None, param: str | None = None) -> dict[str, Any]:
    """A dvc.yaml stage running stage.py for ``out`` (``deps`` are also its inputs)."""
    cmd = [sys.executable, "stage.py", out, *flags]
    for dep in deps or []:
        cmd += ["--in", dep]
    spec: dict[str, Any] = {"cmd": " ".join(cmd), "outs": [out]}
    if deps:
        spec["deps"] = list(deps)
    if param:
        cmd += ["--param", param]
        spec["cmd"] = " ".join(cmd)
        spec["params"] = [{"p.yaml": [param]}]
    return spec


def dvc_project(path: Path, stages: dict[str, Any], orchestration: dict[str, Any] | None = None) -> Path:
    """A git + DVC repository at ``path`` with these stages and the project's params.yaml.

    ``orchestration``: keys to override in params.yaml's ``orchestration`` section.
    """
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    run_dvc(["init", "-q"], path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["orchestration"].update(orchestration or {})
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / "p.yaml").write_text("p: 1\n")
    (path / "stage.py").write_text(STAGE_PY)
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


def copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
    return path.read_text().strip()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def flow_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


def start_flow(project: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m flows.pipeline --root PROJECT ARGS`` as a user starts it, in a session of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", "--root", str(project), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
