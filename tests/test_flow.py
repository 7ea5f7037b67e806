"""The Prefect flow drives real DVC on a miniature project: order, caching, artifacts, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.pipeline import ROOT, pipeline, run_dvc, stage_order

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
