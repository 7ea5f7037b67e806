"""prefect.yaml is valid, and its build/pull/work-pool wiring runs a flow on a real server + worker."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._deploy_helpers import POOL, ROOT, dvc, git, prefect_server, project_copy

PREFECT_YAML = ROOT / "prefect.yaml"

HELLO = """
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact


@flow(name="hello")
def hello(who: str = "world") -> str:
    Path("ran-here.txt").write_text(who)  # relative: lands in the pull step's directory
    create_markdown_artifact(key="hello", markdown=f"hello {who}")
    return who
"""


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}


def test_prefect_yaml_deployments_match_the_flows():
    from prefect.flows import load_flow_from_entrypoint

    deps = _deployments()
    assert set(deps) == {"sample", "msmarco", "refresh"}
    for name, dep in deps.items():
        assert dep["work_pool"]["name"] == POOL
        path, _ = dep["entrypoint"].split(":")
        assert (ROOT / path).exists(), f"{name}: {path} missing"
        flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep["parameters"]) <= accepted, f"{name}: unknown parameters"
    assert deps["sample"]["parameters"]["profile"] == "sample"
    assert deps["msmarco"]["parameters"]["profile"] == "msmarco"
    for name, dep in deps.items():  # a second run of a deployment queues behind the first
        assert dep["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}, name


def test_refresh_schedule_is_weekly_cron_with_timezone():
    from prefect.client.schemas.schedules import CronSchedule

    (sched,) = _deployments()["refresh"]["schedules"]
    cron = CronSchedule(cron=sched["cron"], timezone=sched["timezone"])
    assert cron.timezone == "UTC" and sched["cron"].split()[2:] == ["*", "*", "1"]  # Mondays


def test_profiles_in_prefect_yaml_exist():
    for name in ("sample", "msmarco"):
        assert (ROOT / "conf" / "profile" / f"{name}.yaml").exists()


@pytest.fixture(scope="module")
def pf(tmp_path_factory: pytest.TempPathFactory):
    """A real `prefect server start` (SQLite) and a process worker, both on 127.0.0.1.

    The worker starts in an unrelated directory: the deployments' pull step, not the worker's
    cwd, decides where a flow run executes.
    """
    home = tmp_path_factory.mktemp("prefect")
    with prefect_server(home) as server:
        server.start_worker(tmp_path_factory.mktemp("worker-cwd"))
        yield server


@pytest.mark.slow
def test_server_worker_deploy_and_run(pf, tmp_path: Path):
    """The real prefect.yaml mechanics (build step -> pull step -> process worker) on a tiny flow."""
    proj = tmp_path / "proj"
    (proj / "flows").mkdir(parents=True)
    (proj / "flows" / "hello.py").write_text(HELLO)
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    spec["deployments"] = [
        {
            "name": "hello",
            "entrypoint": "flows/hello.py:hello",
            "parameters": {"who": "tests"},
            "work_pool": _deployments()["sample"]["work_pool"],
            "concurrency_limit": _deployments()["sample"]["concurrency_limit"],
        }
    ]
    (proj / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = pf.cli(["deploy", "--prefect-file", "prefect.yaml", "--name", "hello"], proj)
    assert "hello/hello" in out
    dep = pf.get("/deployments/name/hello/hello")
    # prefect.yaml's concurrency_limit, as Prefect 3 stores it: a limit of 1, queued collisions
    assert dep["global_concurrency_limit"]["limit"] == 1
    assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert dep["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(proj.resolve())}}
    ]
    run_id = pf.run_deployment("hello/hello", proj)
    run = pf.wait(run_id, timeout=180)
    assert run["state_type"] == "COMPLETED", pf.log("worker")
    assert (proj / "ran-here.txt").read_text() == "tests"
    assert pf.artifacts(run_id)["hello"]["data"] == "hello tests"


def _store_files(store: Path) -> int:
    return sum(1 for p in store.rglob("*") if p.is_file()) if store.exists() else 0


def _lock(proj: Path) -> dict:
    return yaml.safe_load((proj / "dvc.lock").read_text())["stages"]


def readme_recipe() -> tuple[list[str], list[str]]:
    """The README's second-machine recipe: (machine 1 lines, machine 2 lines), as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    marker = "<!-- second-machine recipe: tests/test_deploy.py runs these lines as written -->"
    assert marker in text, "README.md lost the second-machine recipe"
    block = text.split(marker, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    first, second = block.split("# machine 2:", 1)
    lines = [
        [ln for ln in part.splitlines() if ln.strip() and not ln.startswith("#")] for part in (first, second)
    ]
    return lines[0], lines[1]


def _bash(lines: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        cwd=cwd, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"README recipe failed in {cwd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def second_machine(proj: Path, tmp_path: Path) -> Path:
    """Run the README recipe: machine 1 in ``proj`` (its origin a bare repository), machine 2 in
    a new directory. ``make setup && source .venv/bin/activate`` is the one line not run: this
    interpreter's environment (on PATH) is the project's."""
    origin = tmp_path / "origin.git"
    git(["init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    git(["remote", "add", "origin", str(origin)], proj)
    git(["push", "-q", "-u", "origin", "main"], proj)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env |= {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    first, second = readme_recipe()
    _bash(first, proj, env)
    machine2 = tmp_path / "machine2"
    machine2.mkdir()
    second = [ln for ln in second if not ln.startswith("make setup")]
    out = _bash(second, machine2, env | {"REPO": str(origin)})
    assert "Data and pipelines are up to date." in out, out
    return machine2 / "hardnegs"


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_readme_recipe_is_what_the_test_runs():
    first, second = readme_recipe()
    assert first[0] == "python -m tasks.remote push" and any("dvc.lock" in ln for ln in first)
    assert any(ln.startswith("git clone") for ln in second) and second[-1].startswith("dvc status")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_e2e_deploy_sample_refresh_and_change(pf, tmp_path: Path):
    """prefect.yaml deployed as is from a copy of the project; the sample run, then two refreshes."""
    store = tmp_path / "store"
    proj = project_copy(tmp_path / "proj")
    base = proj / "conf" / "base.yaml"
    base.write_text(base.read_text().replace("url: ../hardnegs-dvc-remote", f"url: {store}"))
    git(["commit", "-qam", "test remote"], proj)

    out = pf.cli(["deploy", "--all"], proj)
    assert all(
        f in out
        for f in ("hardnegs-pipeline/sample", "hardnegs-pipeline/msmarco", "hardnegs-refresh/refresh")
    )
    refresh_dep = pf.get("/deployments/name/hardnegs-refresh/refresh")
    (sched,) = refresh_dep["schedules"]
    assert sched["schedule"]["cron"] == "0 3 * * 1" and sched["schedule"]["timezone"] == "UTC"

    # 1. the sample deployment: every stage runs; a summary artifact
    run_id = pf.run_deployment("hardnegs-pipeline/sample", proj)
    run = pf.wait(run_id, timeout=900)
    assert run["state_type"] == "COMPLETED", pf.logs_of(run_id)[-5000:]
    summary = pf.artifacts(run_id)["pipeline-summary"]["data"]
    assert "| evaluate | ran |" in summary
    lock = _lock(proj)

    # 2. refresh, nothing changed upstream: ends without recomputation, fills the remote
    run_id = pf.run_deployment("hardnegs-refresh/refresh", proj)
    run = pf.wait(run_id, timeout=300)
    assert run["state_type"] == "COMPLETED", pf.logs_of(run_id)[-5000:]
    assert "nothing to do" in pf.logs_of(run_id, expect="nothing to do")
    report = pf.artifacts(run_id)
    assert set(report) == {"refresh"}  # no pipeline subflow ran
    assert "## Stages that ran\n\nnone" in report["refresh"]["data"]
    assert _lock(proj) == lock
    assert _store_files(store) > 10

    # 3. a second machine, following the README's recipe line by line: push, commit the lock,
    # git push; a fresh clone pulls, has nothing to recompute and holds the same bytes
    clone = second_machine(proj, tmp_path)
    assert dvc(["status", "--json"], clone).strip() in ("{}", "")
    assert _tree(clone / "data" / "sample") == _tree(proj / "data" / "sample")

    # 4. one sample source changes: only the stages that depend on it rerun
    qrels = proj / "sample" / "2019qrels-pass.txt"
    old = qrels.read_bytes()
    new = b"".join(old.splitlines(keepends=True)[:-20])
    qrels.write_bytes(new)
    prof = proj / "conf" / "profile" / "sample.yaml"
    text = prof.read_text()
    old_md5 = hashlib.md5(old).hexdigest()
    assert old_md5 in text and f"size: {len(old)}" in text
    text = text.replace(old_md5, hashlib.md5(new).hexdigest()).replace(
        f"size: {len(old)}\n", f"size: {len(new)}\n"
    )
    prof.write_text(text)
    compose = subprocess.run([sys.executable, "-m", "tasks.config", "use", "sample"], cwd=proj, check=False)
    assert compose.returncode == 0
    before = _store_files(store)
    run_id = pf.run_deployment("hardnegs-refresh/refresh", proj)
    run = pf.wait(run_id, timeout=600)
    assert run["state_type"] == "COMPLETED", pf.logs_of(run_id)[-5000:]
    report = pf.artifacts(run_id)["refresh"]["data"]
    assert "| `dl19_qrels` | changed |" in report
    assert "## Stages that ran\n\n`download@dl19_qrels`, `evaluate`\n" in report
    after = _lock(proj)
    rerun = {name for name in after if after[name] != lock.get(name)}
    assert rerun == {"download@dl19_qrels", "evaluate"}
    assert _store_files(store) > before
