"""The Prefect flow that drives the DVC pipeline, stage by stage.

How the flow and DVC cooperate: ``dvc.yaml`` is the single declaration of the stages. The
flow reads the stage graph from DVC, orders it topologically, and runs each stage as a
Prefect task that asks DVC to reproduce exactly that stage (``dvc repro --single-item``).
DVC decides what is cached or out of date and writes ``dvc.lock``; Prefect adds retries,
logs, a UI and a run summary. One ``dvc status`` at the start spares the ``dvc repro`` call of
every stage that is up to date and downstream of nothing that changed. "Changed" is read from
``dvc.lock``: a stage whose recorded outputs differ after its ``dvc repro`` call (it ran, or
DVC restored its outputs from the run cache) makes every stage downstream of it run too. So
``dvc repro`` and this flow run the same stage code and leave the same artifacts and lock
file, and a second run of either is a no-op.

DVC holds a repository lock while it reproduces, so stages run one at a time; the
parallelism lives inside the stages (threads, processes, shards, a Dask cluster).

Reliability (tests/test_flow.py and tests/test_flow_faults.py do each of these for real; the
cancel through Prefect was measured by hand, with a server and a process worker):

- One run per checkout: the flow holds ``.dvc/tmp/locks/flow.lock`` (a ``flock``, released by
  the kernel however the holder ends) from before it composes ``params.yaml`` to its end; a
  second run fails at once naming the holder (exit code 4), or queues behind it with
  ``--wait``.
- Each stage runs in a process group of its own (``flows/supervise.py``); its output streams
  into the Prefect log line by line while it runs; when ``dvc`` exits, the flow stops waiting
  for the pipe within seconds and ends whatever the stage left behind; a stage running past
  ``orchestration.stage_timeout_s`` (or its ``orchestration.stage_timeouts`` entry) is ended
  (SIGTERM, SIGKILL after ``orchestration.stage_kill_grace_s``) and fails its task.
- Ctrl-C / SIGTERM of the flow ends the running stage's processes and leaves the task and flow
  runs Crashed, never Running (a cancel through Prefect: the flow run Cancelled, the running
  task run Crashed); a kill -9 of the flow ends the stage too (its guard sees its stdin pipe
  close). A rerun picks up where DVC left off: finished stages are up to date.

    python -m flows.pipeline                     # the active profile of params.yaml
    python -m flows.pipeline --profile msmarco   # compose params.yaml for a profile first
    python -m flows.pipeline --wait              # queue behind a run that holds the checkout
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import TerminationSignal

from flows.supervise import GUARD, GroupTimeout, run_group
from tasks.locks import EXIT_BUSY, Busy, hold, lock_path

ROOT = Path(__file__).resolve().parent.parent
NETWORK_STAGES = ("download@",)  # stages that talk to the network get retries
EXIT_GRACE_S = 2.0  # after dvc exits, how long its leftovers may hold the output pipe
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM, as a shell reports it


class CheckoutBusy(Busy):
    """Another flow run holds this checkout; the message names the holder and what to do."""

    def __init__(self, path: Path, root: Path, holder: dict[str, Any]) -> None:
        super().__init__(path, "a flow run", holder)
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        stop = f"`kill {pid}`" if host == socket.gethostname() else f"stop it on {host}"
        self.args = (
            f"checkout {root} is busy: {holder.get('what', 'another flow run')} holds it (pid {pid} "
            f"on {host} since {holder.get('started', '?')}: {holder.get('command', '?')}). One flow "
            f"run per checkout: wait for it to end, queue behind it with --wait (flow parameter "
            f"wait=true), or stop it ({stop}) [lock {path}]",
        )


def dvc_bin() -> str:
    """The ``dvc`` next to this interpreter (the project's environment), else PATH's."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def _dvc_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextlib.contextmanager
def checkout_lock(root: Path = ROOT, wait: bool = False, who: str = "a pipeline flow run") -> Iterator[Path]:
    """Hold this checkout for one flow run: its ``params.yaml``, ``dvc.lock`` and ``data/``.

    Without ``wait`` a second holder fails at once with :class:`CheckoutBusy` naming the
    first; with ``wait`` it blocks until the first is done. Reentrant within one process (the
    refresh flow holds it and calls the pipeline flow). A ``flock`` (:mod:`tasks.locks`): the
    kernel drops it when the holder exits, however it exits, so it is never stale.
    """
    path = lock_path("flow", root)
    held = contextlib.ExitStack()
    try:
        held.enter_context(hold(path, who, wait_s=None if wait else 0.0))
    except Busy as exc:
        raise CheckoutBusy(path, root, exc.holder) from None
    with held:
        yield path


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
    """Run a short DVC command (status, init) in ``root``; raise with DVC's output when it fails.

    Stages go through :func:`reproduce`, which streams and supervises instead.
    """
    proc = subprocess.run(
        [dvc_bin(), *args], cwd=root, env=_dvc_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`dvc {' '.join(args)}` failed with exit code {proc.returncode}:\n"
            f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
        )
    return proc


def locked_outs(root: Path, stage: str) -> list[Any] | None:
    """The outputs ``dvc.lock`` records for ``stage`` (paths and hashes); None before its first run.

    This is what "the stage changed" means to the stages downstream of it: a run, a run-cache
    restore or a checkout that leaves other hashes here changes their inputs.
    """
    lock_file = root / "dvc.lock"
    if not lock_file.exists():
        return None
    entry = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).get(stage)
    return None if entry is None else entry.get("outs", [])


def stage_timeout(stage: str, default: float | None, per_stage: dict[str, float]) -> float | None:
    """The timeout of ``stage``: its own entry, else its ``foreach`` base name's, else the default."""
    for key in (stage, stage.split("@", 1)[0]):
        if key in per_stage:
            return per_stage[key]
    return default


@task(name="dvc-stage", task_run_name="{stage}")
def reproduce(
    stage: str,
    force: bool = False,
    root: str = str(ROOT),
    timeout_s: float | None = None,
    kill_grace_s: float = 10.0,
) -> dict[str, Any]:
    """Reproduce one DVC stage, its output streamed into this task's log as it comes.

    Returns ``status``: ``ran`` (DVC ran the command), ``restored`` (DVC restored its outputs
    from the run cache) or ``up to date``; ``changed``: whether the outputs ``dvc.lock``
    records for it differ from before the call (what makes the stages downstream run).
    ``timeout_s``: end the stage (SIGTERM, SIGKILL after ``kill_grace_s``) and fail after
    that many seconds; None: no limit.
    """
    logger = get_run_logger()
    project = Path(root)
    before = locked_outs(project, stage)
    args = ["repro", "--single-item", stage] + (["--force"] if force else [])
    seen = {"ran": False, "restored": False}

    def on_line(line: str) -> None:
        if line.strip():
            logger.info(line)
        seen["ran"] |= f"Running stage '{stage}'" in line
        seen["restored"] |= f"Stage '{stage}' is cached - skipping run" in line

    env = _dvc_env() | {"PYTHONUNBUFFERED": "1"}  # print() of a stage reaches the log at once
    try:
        result = run_group(
            [dvc_bin(), *args],
            cwd=project,
            env=env,
            on_line=on_line,
            timeout_s=timeout_s,
            kill_grace_s=kill_grace_s,
            exit_grace_s=EXIT_GRACE_S,
        )
    except GroupTimeout:
        raise TimeoutError(
            f"stage {stage!r} ran longer than its timeout of {timeout_s:g} s "
            "(orchestration.stage_timeout_s / orchestration.stage_timeouts in params.yaml) and was "
            "ended with its processes; raise the timeout or find what hangs, then run again"
        ) from None
    if result.leftovers:
        logger.warning(
            "%s: %d process(es) of the stage were still running after dvc exited (orphaned "
            "workers?); they were ended",
            stage,
            result.leftovers,
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"`dvc {' '.join(args)}` failed with exit code {result.returncode}:\n" + "\n".join(result.tail)
        )
    changed = locked_outs(project, stage) != before
    status = "ran" if seen["ran"] else "restored" if seen["restored"] else "up to date"
    logger.info(
        "%s: %s in %.1f s (%.1f CPU s, peak RSS %s)%s",
        stage,
        {"ran": "ran", "restored": "restored from the run cache", "up to date": "up to date"}[status],
        result.seconds,
        result.cpu_s,
        human_bytes(result.peak_rss),
        "; its outputs changed" if changed else "",
    )
    return {
        "stage": stage,
        "ran": seen["ran"],
        "status": status,
        "changed": changed,
        "seconds": result.seconds,
        "cpu_s": result.cpu_s,
        "peak_rss": result.peak_rss,
    }


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``: three significant figures at most."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    """``12.345`` -> ``12.3 s``: 0.1 s below 100 s, then minutes and hours to 0.1 (3 digits)."""
    if s < 100:
        return f"{s:.1f} s"
    if s < 6000:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


STATUS_TEXT = {"ran": "ran", "restored": "restored (run cache)", "up to date": "up to date"}


def summary_markdown(results: list[dict[str, Any]], profile: str, extra: str = "", notice: str = "") -> str:
    """The ``pipeline-summary`` artifact: ``notice`` (the smoke-model notice) at the top, a row
    per stage (status, whether its outputs changed, wall time, peak RSS), then ``extra`` (the
    evaluation and denoising tables). Rows stay near 100 characters of Markdown."""
    lines = [f"# hardnegs pipeline: profile `{profile}`", ""]
    if notice:
        lines += [notice.rstrip("\n"), ""]
    lines += ["| stage | status | changed | time | peak RSS |", "|---|---|---|---:|---:|"]
    for r in results:
        status = STATUS_TEXT[r.get("status", "ran" if r["ran"] else "up to date")]
        called = r["ran"] or r.get("status") == "restored" or r.get("seconds")
        seconds = human_seconds(float(r["seconds"])) if called else "–"
        rss = human_bytes(r["peak_rss"]) if r.get("peak_rss") else "–"
        changed = "yes" if r.get("changed") else "no"
        lines.append(f"| {r['stage']} | {status} | {changed} | {seconds} | {rss} |")
    ran = sum(r["ran"] for r in results)
    restored = sum(r.get("status") == "restored" for r in results)
    lines += ["", f"{ran} of {len(results)} stages ran; the rest were up to date in DVC."]
    if restored:
        lines[-1] = (
            f"{ran} of {len(results)} stages ran, {restored} restored from DVC's run cache; "
            "the rest were up to date in DVC."
        )
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def smoke_markdown(params: Path) -> str:
    """The smoke-model notice of the profile in ``params`` (``""`` when it has no smoke model)."""
    from tasks.config import load_config
    from tasks.report import report_labels, smoke_notice

    return smoke_notice(report_labels(load_config(params)))


def evaluation_markdown(root: Path, params: Path) -> str:
    """The evaluation tables of the last run and the denoising comparison, when the evaluate and
    denoise stages have produced them (the smoke-model notice goes on top: :func:`smoke_markdown`)."""
    from tasks.config import load_config
    from tasks.io import read_json
    from tasks.report import denoise_markdown, report_labels, report_markdown

    cfg = load_config(params)
    parts = []
    metrics_file = root / cfg.paths.metrics / "retrieval.json"
    if metrics_file.exists():
        parts += [
            "## Evaluation",
            "",
            report_markdown(read_json(metrics_file), report_labels(cfg), notice=False),
        ]
    denoise_file = root / cfg.paths.metrics / "denoise.json"
    if denoise_file.exists():
        parts += ["## Denoising", "", denoise_markdown(read_json(denoise_file))]
    return "\n".join(parts)


def _flow_run_name() -> str:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    return f"flow run '{run.name}' ({run.id})" if run is not None else "a flow run"


@flow(name="hardnegs-pipeline")
def pipeline(
    params: str = "params.yaml",
    profile: str | None = None,
    stages: list[str] | None = None,
    force: bool = False,
    root: str | None = None,
    wait: bool = False,
) -> list[dict[str, Any]]:
    """Run the DVC stages of the hard-negatives pipeline in order.

    Args:
        params: the params file DVC and the stages read (relative to the project root).
        profile: when set, compose ``params.yaml`` for this profile first (sample | msmarco | scale).
        stages: run only these stages (and what they depend on); default all.
        force: re-run stages even if DVC finds them up to date.
        root: the project checkout to run in (default: the one this flow lives in).
        wait: when another flow run holds the checkout, wait for it instead of failing.
    """
    project = Path(root) if root else ROOT
    if params != "params.yaml":
        raise ValueError("params: DVC reads params.yaml; compose another profile with `profile=`")
    # the checkout is ours before params.yaml is touched: no run rewrites it under another
    with checkout_lock(project, wait=wait, who=f"{_flow_run_name()} of hardnegs-pipeline"):
        return _run_stages(project, params, profile, stages, force)


def _run_stages(
    project: Path, params: str, profile: str | None, stages: list[str] | None, force: bool
) -> list[dict[str, Any]]:
    logger = get_run_logger()
    if profile is not None:
        from tasks.config import main as config_main

        if config_main(["use", profile, "--output", str(project / "params.yaml")]) != 0:
            raise ValueError(f"profile {profile!r} could not be composed (see the log)")
    from tasks.config import load_config

    cfg = load_config(project / params)
    orch = cfg.orchestration
    graph = _stage_graph(project)
    unknown = sorted(
        key
        for key in orch.stage_timeouts
        if key not in graph and not any(name.split("@", 1)[0] == key for name in graph)
    )
    if unknown:
        raise ValueError(f"params.yaml: orchestration.stage_timeouts: dvc.yaml has no stage {unknown}")
    order = stage_order(project, stages, graph)
    logger.info("profile %s: %d stages: %s", cfg.profile, len(order), ", ".join(order))
    # One `dvc status` up front: a stage it finds up to date, none of whose upstream stages
    # changed in this flow, is up to date without asking DVC again (20 `dvc repro` calls of ~2 s).
    stale = set(order) if force else stale_stages(project)
    changed: set[str] = set()
    results = []
    for stage in order:
        if stage not in stale and not (nx.ancestors(graph, stage) & changed):
            logger.info("%s: up to date (dvc status)", stage)
            results.append(
                {"stage": stage, "ran": False, "status": "up to date", "changed": False, "seconds": 0.0}
            )
            continue
        retries = 2 if stage.startswith(NETWORK_STAGES) else 0
        runner = reproduce.with_options(retries=retries, retry_delay_seconds=10)
        result = runner(
            stage,
            force=force,
            root=str(project),
            timeout_s=stage_timeout(stage, orch.stage_timeout_s, orch.stage_timeouts),
            kill_grace_s=orch.stage_kill_grace_s,
        )
        if result["changed"] or result["ran"]:
            changed.add(stage)
        results.append(result)
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=summary_markdown(
            results,
            cfg.profile,
            evaluation_markdown(project, project / params),
            smoke_markdown(project / params),
        ),
        description=f"hardnegs pipeline run ({cfg.profile})",
    )
    return results


# --------------------------------------------------------------------------- local runs
@contextlib.contextmanager
def local_api() -> Iterator[None]:
    """A temporary Prefect API for a local run that a Ctrl-C of the terminal does not kill.

    Without ``PREFECT_API_URL`` Prefect starts a temporary server as a child in the flow's
    process group, so Ctrl-C killed it together with the flow: the flow could not record its
    end and its runs stayed Running in the database. This one runs under the guard of
    :mod:`flows.supervise` in a session of its own (the guard ends it when this process exits,
    even by kill -9), so the flow can mark its runs Crashed. A configured API is used as is.
    """
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield
        return
    server = _guarded_server(_free_port())
    # a first start migrates a new database: Prefect's 20 s default is short on a busy machine
    server.start(timeout=max(90, int(settings.server.ephemeral.startup_timeout_seconds)))
    # stopped at exit (Prefect's atexit hook), after Prefect has sent its last logs and events
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class GuardedServer(SubprocessASGIServer):
        """Prefect's temporary server, started under the guard in a new session."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent)]
            cmd += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
            cmd += ["--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }
            return subprocess.Popen(
                [sys.executable, str(GUARD), "--", *cmd],
                env=env,
                stdin=subprocess.PIPE,  # closes when this process ends: the guard ends the server
                start_new_session=True,
            )

    return GuardedServer


def _guarded_server(port: int) -> Any:
    """The guarded temporary server on ``port`` (Prefect's server module is imported only here)."""
    return _server_class()(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description=(
            "Run the hard-negatives pipeline as a Prefect flow over the DVC stages: DVC decides\n"
            "what is up to date (a second run is a no-op); a stage whose outputs change (a run or a\n"
            "run-cache restore) makes the stages downstream of it run. Stage output streams into\n"
            "the Prefect log as it comes.\n\n"
            "One flow run per checkout: a second one fails at once naming the holder (exit 4),\n"
            "unless --wait. Ctrl-C / SIGTERM end the running stage's processes and mark the runs\n"
            "Crashed; run again to resume. Stage timeouts: orchestration.stage_timeout_s,\n"
            "stage_timeouts and stage_kill_grace_s in params.yaml.\n\n"
            "Without PREFECT_API_URL a temporary Prefect server is started (database under\n"
            "PREFECT_HOME) that a Ctrl-C does not take down with the flow."
        ),
        epilog="exit codes: 0 done; 1 a stage failed or timed out; 4 the checkout is busy;\n"
        "  130 interrupted (Ctrl-C / SIGTERM)\n\n"
        "examples:\n  python -m flows.pipeline\n  python -m flows.pipeline --stage merge\n"
        "  python -m flows.pipeline --profile msmarco\n  python -m flows.pipeline --wait",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", help="compose params.yaml for this profile first")
    parser.add_argument("--stage", action="append", dest="stages", help="only this stage (+ upstream)")
    parser.add_argument("--force", action="store_true", help="re-run even up-to-date stages")
    parser.add_argument(
        "--wait", action="store_true", help="wait for a flow run that holds this checkout instead of failing"
    )
    parser.add_argument("--root", help="the project checkout to run in (default: this one)")
    parser.add_argument(
        "--stats",
        type=Path,
        metavar="FILE",
        help="write each stage's status, seconds, CPU seconds and peak RSS (bytes) there as JSON",
    )
    args = parser.parse_args(argv)
    project = Path(args.root) if args.root else ROOT
    try:
        # the lock first (the flow takes it again, reentrant): a busy checkout fails in a second,
        # before a temporary API server starts or a flow run is recorded
        with (
            checkout_lock(project, wait=args.wait, who="a local run (python -m flows.pipeline)"),
            local_api(),
        ):
            results = pipeline(
                profile=args.profile, stages=args.stages, force=args.force, root=args.root, wait=args.wait
            )
    except CheckoutBusy as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_BUSY
    except (KeyboardInterrupt, TerminationSignal) as exc:
        sys.stderr.write(
            f"interrupted ({type(exc).__name__}): the running stage was ended; run again to resume\n"
        )
        return EXIT_INTERRUPTED
    if args.stats:
        from tasks.io import write_json

        write_json(args.stats, {"stages": results})
    ran = sum(r["ran"] for r in results)
    restored = sum(r.get("status") == "restored" for r in results)
    sys.stderr.write(
        f"pipeline done: {ran} of {len(results)} stages ran"
        + (f", {restored} restored from the run cache" if restored else "")
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
