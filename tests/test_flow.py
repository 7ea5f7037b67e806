"""The Prefect flow drives real DVC on a miniature project: order, caching, artifacts, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.pipeline import ROOT, pipeline, run_dvc, stage_order, stale_stages
from tests._flow_helpers import alive, dvc_project, stage

MINI_DVC = {
    "stages": {
        "first": {
            "cmd": f"{sys.executable} -c \"open('a.txt','w').write('a')\"",
            "outs": ["a.txt"],
        },
        "second": {
            "foreach": ["x", "y"],
            "do": {
                "cmd": f"{sys.executable} -c \"open('${{item}}.txt','w')"
                ".write(open('a.txt').read()+'${item}')\"",
                "deps": ["a.txt"],
                "outs": ["${item}.txt"],
            },
        },
        "broken": {"cmd": f"{sys.executable} -c \"raise SystemExit('boom: bad input')\"", "deps": ["x.txt"]},
    }
}


@pytest.fixture()
def mini_project(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    run_dvc(["init", "-q"], tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(MINI_DVC))
    return tmp_path


def test_stage_order_is_topological_and_deterministic(mini_project):
    assert stage_order(mini_project) == ["first", "second@x", "broken", "second@y"]
    assert stage_order(mini_project, ["second@y"]) == ["first", "second@y"]
    with pytest.raises(ValueError, match="no stage"):
        stage_order(mini_project, ["nope"])


def test_flow_runs_then_is_a_noop_and_publishes_a_summary(prefect_harness, mini_project):
    first = pipeline(stages=["second@x", "second@y"], root=str(mini_project))
    ran = [(r["stage"], r["ran"]) for r in first]
    assert ran == [("first", True), ("second@x", True), ("second@y", True)]
    assert (mini_project / "y.txt").read_text() == "ay"
    again = pipeline(stages=["second@x", "second@y"], root=str(mini_project))
    assert not any(r["ran"] for r in again)
    status = run_dvc(["status", "second@x", "second@y"], mini_project)
    assert "up to date" in status.stdout
    assert "second@y" in (mini_project / "dvc.lock").read_text()

    from prefect.client.orchestration import get_client

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    import asyncio

    summaries = [a.data for a in asyncio.run(artifacts()) if a.key == "pipeline-summary"]
    assert any("3 of 3 stages ran" in s for s in summaries)
    assert any("0 of 3 stages ran" in s and "| second@y | up to date |" in s for s in summaries)


def test_failing_stage_fails_the_flow_with_dvc_output(prefect_harness, mini_project):
    with pytest.raises(RuntimeError, match="boom: bad input"):
        pipeline(stages=["broken"], root=str(mini_project))


def test_upstream_change_reruns_what_depends_on_it(prefect_harness, mini_project):
    """The up-front `dvc status` never hides a stage whose upstream stage runs in the same flow."""
    targets = ["second@x", "second@y"]
    pipeline(stages=targets, root=str(mini_project))
    dvc_yaml = yaml.safe_load((mini_project / "dvc.yaml").read_text())
    dvc_yaml["stages"]["first"]["cmd"] = dvc_yaml["stages"]["first"]["cmd"].replace(
        "write('a')", "write('b')"
    )
    (mini_project / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    again = pipeline(stages=targets, root=str(mini_project))
    # only `first` is stale before the flow starts; the second@ stages rerun because it ran
    assert [(r["stage"], r["ran"]) for r in again] == [
        ("first", True),
        ("second@x", True),
        ("second@y", True),
    ]
    assert (mini_project / "y.txt").read_text() == "by"


def test_run_cache_restore_makes_the_stages_downstream_run(prefect_harness, tmp_path):
    """b's param goes 1 -> 2 -> 1: DVC restores b's outputs from its run cache ("Stage 'b' is
    cached - skipping run") and c, which `dvc status` did not flag, must be reproduced on them
    (before, the flow counted b as "not ran" and left c stale)."""
    proj = dvc_project(
        tmp_path / "p",
        {
            "a": stage("a.txt"),
            "b": stage("b.txt", deps=["a.txt"], param="p"),
            "c": stage("c.txt", deps=["b.txt"]),
        },
    )
    run_dvc(["repro"], proj)
    want, lock = (proj / "c.txt").read_bytes(), (proj / "dvc.lock").read_bytes()
    (proj / "p.yaml").write_text("p: 2\n")
    run_dvc(["repro"], proj)
    assert (proj / "c.txt").read_bytes() != want
    (proj / "p.yaml").write_text("p: 1\n")
    assert stale_stages(proj) == {"b"}  # c's input still matches dvc.lock: only b is flagged

    results = {r["stage"]: (r["status"], r["changed"]) for r in pipeline(root=str(proj))}
    # c is reproduced too (DVC finds its output for b's old output in the run cache as well)
    assert results == {"a": ("up to date", False), "b": ("restored", True), "c": ("restored", True)}
    assert (proj / "c.txt").read_bytes() == want
    assert (proj / "dvc.lock").read_bytes() == lock  # DVC's record is that of the first run again


def test_stage_timeout_ends_the_stage_and_names_it(prefect_harness, tmp_path):
    """A stuck stage that even ignores SIGTERM is ended at its timeout (SIGKILL after the grace)."""
    proj = dvc_project(
        tmp_path / "p",
        {"stuck": stage("s.txt", "--hold", "--ignore-term")},
        orchestration={"stage_timeouts": {"stuck": 2}, "stage_kill_grace_s": 1},
    )
    (proj / "hold").touch()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"stage 'stuck' ran longer than its timeout of 2 s"):
        pipeline(root=str(proj))
    assert time.monotonic() - start < 30
    assert not alive(int((proj / "s.txt.pid").read_text()))
    assert not (proj / "s.txt").exists()


def test_stage_timeouts_naming_no_stage_fail_before_any_stage_runs(prefect_harness, tmp_path):
    proj = dvc_project(tmp_path / "p", {"a": stage("a.txt")}, orchestration={"stage_timeouts": {"scroe": 5}})
    with pytest.raises(ValueError, match=r"orchestration.stage_timeouts: dvc.yaml has no stage \['scroe'\]"):
        pipeline(root=str(proj))
    assert not (proj / "a.txt").exists()
