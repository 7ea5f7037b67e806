"""A real Prefect server + process worker on 127.0.0.1, and throwaway copies of the project.

Everything runs as subprocesses with the project's interpreter, each Prefect process with its
own PREFECT_HOME and SQLite database under a temp directory, so nothing touches the user's
Prefect profile. Processes are started in their own session and stopped by process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
POOL = "hardnegs-process"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        # no scheduled runs of the weekly refresh during a test: runs are triggered by hand
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_LOGGING_LEVEL="INFO",
        DO_NOT_TRACK="1",
        DVC_NO_ANALYTICS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("PREFECT_PROFILE", None)
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Prefect:
    """A running server (and optionally a worker); ``cli`` runs ``prefect ...`` against it."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = prefect_env(home, self.api)
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", *args],
            cwd=cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def cli(self, args: list[str], cwd: Path, timeout: float = 180) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def get(self, path: str) -> Any:
        resp = httpx.get(f"{self.api}{path}", timeout=30)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        resp = httpx.post(f"{self.api}{path}", json=body, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def start_worker(self, cwd: Path) -> None:
        self.spawn("worker", ["worker", "start", "--pool", POOL, "--type", "process"], cwd)

    def run_deployment(self, name: str, cwd: Path, params: dict[str, str] | None = None) -> str:
        """``prefect deployment run NAME`` -> the flow run id."""
        args = ["deployment", "run", name]
        for k, v in (params or {}).items():
            args += ["--param", f"{k}={v}"]
        out = self.cli(args, cwd)
        m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
        assert m, f"no flow run id in:\n{out}"
        return m.group(1)

    def wait(self, run_id: str, timeout: float = 600) -> dict[str, Any]:
        """Poll the flow run until it is terminal; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{run_id}")
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(
            f"flow run {run_id} not finished after {timeout}s; worker log:\n{self.log('worker')}"
        )

    def artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Artifacts of a flow run and of its subflow runs, by key."""
        runs = [run_id]
        for r in self.post("/flow_runs/filter", {}):
            parent = r.get("parent_task_run_id")
            if parent and self.get(f"/task_runs/{parent}")["flow_run_id"] == run_id:
                runs.append(r["id"])
        rows = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": runs}}})
        return {a["key"]: a for a in rows if a.get("key")}

    def logs_of(self, run_id: str, expect: str | None = None, timeout: float = 60) -> str:
        """The run's log lines; with ``expect``, wait (up to ``timeout`` s) until one contains it.

        A flow run's process ships its logs in batches from a background thread, so the run can
        read COMPLETED before its last lines reach the API.
        """
        deadline = time.monotonic() + timeout
        while True:
            rows: list[dict[str, Any]] = []
            while True:  # the API returns at most 200 rows a call: page through them
                page = self.post(
                    "/logs/filter",
                    {
                        "logs": {"flow_run_id": {"any_": [run_id]}},
                        "sort": "TIMESTAMP_ASC",
                        "limit": 200,
                        "offset": len(rows),
                    },
                )
                rows += page
                if len(page) < 200:
                    break
            text = "\n".join(r["message"] for r in rows)
            if expect is None or expect in text or time.monotonic() > deadline:
                return text
            time.sleep(1)


@contextlib.contextmanager
def prefect_server(home: Path, timeout: float = 120) -> Iterator[Prefect]:
    """``prefect server start`` on a free port of 127.0.0.1 with SQLite in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    p = Prefect(home, port)
    p.spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)], home)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{p.api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if p.procs[0].poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prefect server did not start:\n{p.log('server')}")
            time.sleep(0.5)
        p.cli(["work-pool", "create", POOL, "--type", "process"], home)
        yield p
    finally:
        for proc in reversed(p.procs):
            _stop(proc)


def git(args: list[str], cwd: Path) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def project_copy(dest: Path) -> Path:
    """The project's files (tracked + untracked, not ignored: no data/, no .venv) in a fresh git repo.

    Works before the first commit too; the copy gets one commit so DVC has its SCM.
    """
    files = git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT).split("\0")
    dest.mkdir(parents=True)
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git(["init", "-q", "-b", "main"], dest)
    git(["add", "-A"], dest)
    git(["commit", "-q", "-m", "copy"], dest)
    return dest


def dvc(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
