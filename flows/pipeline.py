"""The Prefect flow that drives the DVC pipeline, stage by stage.

How the flow and DVC cooperate: ``dvc.yaml`` is the single declaration of the stages. The
flow reads the stage graph from DVC, orders it topologically, and runs each stage as a
Prefect task that asks DVC to reproduce exactly that stage (``dvc repro --single-item``).
DVC decides what is cached or out of date and writes ``dvc.lock``; Prefect adds retries,
logs, a UI and a run summary. One ``dvc status`` at the start spares the ``dvc repro`` call of
every stage that is up to date and downstream of nothing that runs. So ``dvc repro`` and this
flow run the same stage code and leave the same artifacts and lock file, and a second run of
either is a no-op.

DVC holds a repository lock while it reproduces, so stages run one at a time; the
parallelism lives inside the stages (threads, processes, shards, a Dask cluster).

    python -m flows.pipeline                     # the active profile of params.yaml
    python -m flows.pipeline --profile msmarco   # compose params.yaml for a profile first
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

ROOT = Path(__file__).resolve().parent.parent
NETWORK_STAGES = ("download@",)  # stages that talk to the network get retries


def dvc_bin() -> str:
    """The ``dvc`` next to this interpreter (the project's environment), else PATH's."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def _stage_graph(root: Path) -> nx.DiGraph:
    """The stage graph of ``dvc.yaml``, edges from a stage to the stages that depend on it."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        names = {stage: stage.name for stage in graph.nodes}  # one dvc.yaml, at the root
        return nx.relabel_nodes(graph, names).reverse(copy=True)


def stage_order(
    root: Path = ROOT, targets: list[str] | None = None, graph: nx.DiGraph | None = None
) -> list[str]:
    """Stage names of ``dvc.yaml`` in a deterministic topological order (deps first).

    With ``targets``, only those stages and their upstream stages. ``graph``: the stage graph
    when the caller already has it (reading it opens the DVC repository).
    """
    order_graph = _stage_graph(root) if graph is None else graph
    if targets:
        unknown = sorted(set(targets) - set(order_graph.nodes))
        if unknown:
            raise ValueError(f"dvc.yaml has no stage(s) {unknown}; see `dvc stage list`")
        keep = set(targets)
        for target in targets:
            keep |= nx.ancestors(order_graph, target)
        order_graph = order_graph.subgraph(keep)
    return list(nx.lexicographical_topological_sort(order_graph, key=str))


def stale_stages(root: Path = ROOT) -> set[str]:
    """Stages ``dvc status`` finds out of date (changed deps, outs, params or command)."""
    proc = run_dvc(["status", "--json"], root)
    return set(json.loads(proc.stdout or "{}"))


def run_dvc(args: list[str], root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a DVC command in ``root``; raise with DVC's own output when it fails."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([dvc_bin(), *args], cwd=root, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`dvc {' '.join(args)}` failed with exit code {proc.returncode}:\n"
            f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        )
    return proc


@task(name="dvc-stage", task_run_name="{stage}")
def reproduce(stage: str, force: bool = False, root: str = str(ROOT)) -> dict[str, Any]:
    """Reproduce one DVC stage; report whether it ran or was already up to date."""
    logger = get_run_logger()
    start = time.monotonic()
    args = ["repro", "--single-item", stage] + (["--force"] if force else [])
    proc = run_dvc(args, Path(root))
    output = proc.stdout + proc.stderr
    ran = f"Running stage '{stage}'" in output
    for line in output.splitlines():
        if line.strip():
            logger.info(line)
    seconds = round(time.monotonic() - start, 1)
    logger.info("%s: %s in %.1f s", stage, "ran" if ran else "up to date", seconds)
    return {"stage": stage, "ran": ran, "seconds": seconds}


def summary_markdown(results: list[dict[str, Any]], profile: str, extra: str = "") -> str:
    lines = [
        f"# hardnegs pipeline: profile `{profile}`",
        "",
        "| stage | status | seconds |",
        "|---|---|---:|",
    ]
    for r in results:
        lines.append(f"| {r['stage']} | {'ran' if r['ran'] else 'up to date'} | {r['seconds']} |")
    ran = sum(r["ran"] for r in results)
    lines += ["", f"{ran} of {len(results)} stages ran; the rest were up to date in DVC."]
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def evaluation_markdown(root: Path, params: Path) -> str:
    """The evaluation table of the last run, when the evaluate stage has produced one."""
    from tasks.config import load_config

    cfg = load_config(params)
    metrics_file = root / cfg.paths.metrics / "retrieval.json"
    if not metrics_file.exists():
        return ""
    from tasks.evaluate import report_markdown
    from tasks.io import read_json

    return report_markdown(read_json(metrics_file))


@flow(name="hardnegs-pipeline")
def pipeline(
    params: str = "params.yaml",
    profile: str | None = None,
    stages: list[str] | None = None,
    force: bool = False,
    root: str | None = None,
) -> list[dict[str, Any]]:
    """Run the DVC stages of the hard-negatives pipeline in order.

    Args:
        params: the params file DVC and the stages read (relative to the project root).
        profile: when set, compose ``params.yaml`` for this profile first (sample | msmarco).
        stages: run only these stages (and what they depend on); default all.
        force: re-run stages even if DVC finds them up to date.
        root: the project checkout to run in (default: the one this flow lives in).
    """
    logger = get_run_logger()
    project = Path(root) if root else ROOT
    if params != "params.yaml":
        raise ValueError("params: DVC reads params.yaml; compose another profile with `profile=`")
    if profile is not None:
        from tasks.config import main as config_main

        if config_main(["use", profile, "--output", str(project / "params.yaml")]) != 0:
            raise ValueError(f"profile {profile!r} could not be composed (see the log)")
    from tasks.config import load_config

    cfg = load_config(project / params)
    graph = _stage_graph(project)
    order = stage_order(project, stages, graph)
    logger.info("profile %s: %d stages: %s", cfg.profile, len(order), ", ".join(order))
    # One `dvc status` up front: a stage it finds up to date, none of whose upstream stages
    # runs in this flow, is up to date without asking DVC again (20 `dvc repro` calls of ~2 s).
    stale = set(order) if force else stale_stages(project)
    ran: set[str] = set()
    results = []
    for stage in order:
        if stage not in stale and not (nx.ancestors(graph, stage) & ran):
            logger.info("%s: up to date (dvc status)", stage)
            results.append({"stage": stage, "ran": False, "seconds": 0.0})
            continue
        retries = 2 if stage.startswith(NETWORK_STAGES) else 0
        runner = reproduce.with_options(retries=retries, retry_delay_seconds=10)
        result = runner(stage, force=force, root=str(project))
        if result["ran"]:
            ran.add(stage)
        results.append(result)
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=summary_markdown(results, cfg.profile, evaluation_markdown(project, project / params)),
        description=f"hardnegs pipeline run ({cfg.profile})",
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description="Run the hard-negatives pipeline as a Prefect flow over the DVC stages "
        "(DVC decides what is up to date; a second run is a no-op).",
        epilog="examples:\n  python -m flows.pipeline\n  python -m flows.pipeline --stage merge\n"
        "  python -m flows.pipeline --profile msmarco",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", help="compose params.yaml for this profile first")
    parser.add_argument("--stage", action="append", dest="stages", help="only this stage (+ upstream)")
    parser.add_argument("--force", action="store_true", help="re-run even up-to-date stages")
    args = parser.parse_args(argv)
    results = pipeline(profile=args.profile, stages=args.stages, force=args.force)
    ran = sum(r["ran"] for r in results)
    sys.stderr.write(f"pipeline done: {ran} of {len(results)} stages ran\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
