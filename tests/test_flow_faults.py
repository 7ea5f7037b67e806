"""Fault injection on the Prefect flow, with real processes: kill -9 of a stage that leaves an
orphan, SIGTERM / SIGINT (Ctrl-C) of the flow's process group, two runs on one checkout, live logs.

Each test runs the flow the way users do (``python -m flows.pipeline`` in a session of its own,
or the flow function in this process), injects the fault for real, then checks the Prefect API
(or its database), that no process of the stage is left, and that a rerun completes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import pipeline, run_dvc
from tests._flow_helpers import alive, dvc_project, flow_env, stage, start_flow, stop, wait_for

HELD = {"first": stage("a.txt"), "slow": stage("b.txt", "--hold", deps=["a.txt"])}


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_harness fixture sets the API URL"
    return str(url)


def _latest_run(project: Path) -> Any:
    """The latest flow run on ``project`` (its ``root`` parameter), from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=50)
    return next(r for r in runs if r.parameters.get("root") == str(project))


def _states(run_id: Any) -> tuple[str, dict[str, str]]:
    """The state type of a flow run and of each of its task runs, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return run.state_type.value, {t.name: t.state_type.value for t in tasks}


def _logs(run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        rows = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    return [r.message for r in rows]


def _processes_with_env(needle: str) -> list[int]:
    """Live processes whose environment holds ``needle`` (e.g. this test's PREFECT_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                if needle.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_kill9_of_a_stage_with_an_orphan_fails_promptly_and_the_rerun_resumes(prefect_harness, tmp_path):
    """The stage leaves a child holding the output pipe (an orphaned worker), then is killed -9:
    the flow notices dvc exited, ends the orphan, fails in seconds; the rerun skips `first`."""
    stages = {"first": stage("a.txt"), "slow": stage("b.txt", "--hold", "--orphan", deps=["a.txt"])}
    proj = dvc_project(tmp_path / "p", stages)
    (proj / "hold").touch()
    killed: dict[str, float] = {}

    def kill_stage() -> None:
        pid = int(wait_for(proj / "b.txt.pid"))
        wait_for(proj / "b.txt.orphan")
        os.kill(pid, signal.SIGKILL)
        killed["at"] = time.monotonic()

    killer = threading.Thread(target=kill_stage)
    killer.start()
    with pytest.raises(RuntimeError, match="repro --single-item slow` failed"):
        pipeline(root=str(proj))
    killer.join()
    assert time.monotonic() - killed["at"] < 15  # before: hung until the orphan was killed by hand
    orphan = int((proj / "b.txt.orphan").read_text())
    assert not alive(orphan)
    assert not (proj / "b.txt").exists()

    (proj / "hold").unlink()
    results = {r["stage"]: r["status"] for r in pipeline(root=str(proj))}
    assert results == {"first": "up to date", "slow": "ran"}  # finished work is kept
    # what an uninterrupted run writes (stage.py: its inputs, then its own name)
    assert (proj / "a.txt").read_text() == "a.txt\n"
    assert (proj / "b.txt").read_text() == "a.txt\nb.txt\n"
    assert "up to date" in run_dvc(["status"], proj).stdout


def test_live_logs_one_run_per_checkout_and_sigterm(prefect_harness, tmp_path):
    """While a flow's stage runs, its line is already in the Prefect log; a second flow on the
    checkout exits 4 at once naming the first, without touching params.yaml; a third, with
    --wait, queues. SIGTERM to the first flow's process group ends its stage and leaves its runs
    Crashed; the queued flow then takes the checkout and finishes the work (resumes)."""
    proj = dvc_project(tmp_path / "p", HELD)
    (proj / "hold").touch()
    params = proj / "params.yaml"
    params.write_text(params.read_text() + "# hand-edited: a compose would drop this line\n")
    before = params.read_bytes()
    env = flow_env(PREFECT_API_URL=_api_url())
    first = start_flow(proj, env=env)
    queued = None
    try:
        stage_pid = int(wait_for(proj / "b.txt.pid"))
        run = _latest_run(proj)
        deadline = time.monotonic() + 30
        while not any("stage b.txt started" in m for m in _logs(run.id)):
            assert time.monotonic() < deadline, "the stage's line is not in the Prefect log"
            time.sleep(0.5)
        assert alive(stage_pid) and first.poll() is None  # the stage is still running

        start = time.monotonic()
        second = start_flow(proj, "--profile", "sample", env=env)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 4, out
        assert time.monotonic() - start < 20
        assert f"is busy: a local run (python -m flows.pipeline) holds it (pid {first.pid} " in out
        assert "--wait" in out
        assert params.read_bytes() == before  # the lock comes before composing params.yaml

        queued = start_flow(proj, "--wait", env=env)
        time.sleep(2)
        assert queued.poll() is None

        os.killpg(first.pid, signal.SIGTERM)
        start = time.monotonic()
        first.communicate(timeout=60)
        assert time.monotonic() - start < 20
        assert first.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM, 130)
        assert not alive(stage_pid)
        flow_state, tasks = _states(run.id)
        assert flow_state in ("CRASHED", "CANCELLED")
        assert tasks["first"] == "COMPLETED" and tasks["slow"] in ("CRASHED", "CANCELLED"), tasks

        (proj / "hold").unlink()
        out, _ = queued.communicate(timeout=120)
        assert queued.returncode == 0, out
        assert "pipeline done: 1 of 2 stages ran" in out  # `first` was kept, `slow` finished
        assert (proj / "b.txt").read_text() == "a.txt\nb.txt\n"
    finally:
        stop(first)
        if queued is not None:
            stop(queued)


def test_kill9_of_the_flow_ends_its_stage(prefect_harness, tmp_path):
    """Nothing catches a kill -9 of the flow: the stage's guard sees its stdin pipe close and
    ends the stage's process group (before, the stage ran on, orphaned)."""
    proj = dvc_project(tmp_path / "p", HELD)
    (proj / "hold").touch()
    flow = start_flow(proj, env=flow_env(PREFECT_API_URL=_api_url()))
    try:
        stage_pid = int(wait_for(proj / "b.txt.pid"))
        flow.kill()
        flow.wait()
        deadline = time.monotonic() + 15
        while alive(stage_pid):
            assert time.monotonic() < deadline, "the stage outlived the flow"
            time.sleep(0.1)
    finally:
        stop(flow)


def test_ctrl_c_of_a_local_run_leaves_crashed_runs_and_no_process(prefect_harness, tmp_path):
    """Ctrl-C (SIGINT to the flow's process group) of `python -m flows.pipeline` with Prefect's
    temporary server: the server survives it, so the flow records its runs Crashed within
    seconds (before: ~200 s of retries against the killed server, runs left Running); then
    nothing of the run is left, the server included."""
    proj = dvc_project(tmp_path / "p", HELD)
    home = tmp_path / "prefect-home"
    home.mkdir()
    # a copy of the session's migrated database spares the temporary server ~10 s of migrations
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    assert url is not None
    with (
        sqlite3.connect(url.get_secret_value().split(":///", 1)[1]) as src,
        sqlite3.connect(home / "prefect.db") as dst,
    ):
        src.backup(dst)
    env = flow_env(PREFECT_HOME=str(home))
    env.pop("PREFECT_API_URL", None)
    (proj / "hold").touch()
    flow = start_flow(proj, env=env)
    try:
        stage_pid = int(wait_for(proj / "b.txt.pid", timeout=120))
        os.killpg(flow.pid, signal.SIGINT)
        start = time.monotonic()
        out, _ = flow.communicate(timeout=60)
    finally:
        stop(flow)
    assert flow.returncode == 130, out
    assert time.monotonic() - start < 20
    assert not alive(stage_pid)
    time.sleep(1)
    assert _processes_with_env(f"PREFECT_HOME={home}") == []  # the temporary server ended too
    db = sqlite3.connect(home / "prefect.db")  # what that server recorded
    try:
        (run_id, flow_state), *others = [
            (rid, state)
            for rid, state, params in db.execute("SELECT id, state_type, parameters FROM flow_run")
            if json.loads(params).get("root") == str(proj)
        ]
        tasks = dict(db.execute("SELECT name, state_type FROM task_run WHERE flow_run_id = ?", (run_id,)))
    finally:
        db.close()
    assert others == []
    assert flow_state == "CRASHED"
    assert tasks == {"first": "COMPLETED", "slow": "CRASHED"}
    assert not (proj / "b.txt").exists()  # as after SIGTERM, whose test shows the resumed run
