"""The scheduled refresh: check upstream cheaply, rerun only what changed, push, record the diff.

1. Every source of the active profile is checked against the record the download stage left
   (``tasks.sources_check``: HTTP HEAD for size/ETag/Last-Modified, ``file:`` by size and md5).
   Nothing changed -> the flow ends here, in seconds, saying so.
2. Otherwise the changed sources are downloaded again (``dvc repro --force`` of their
   ``download@<name>`` stage: the registry pins md5s, so an upstream change with the same
   registry entry fails there, loudly, naming the file), and the pipeline flow runs every stage
   in order, DVC re-running only what is now out of date.
3. ``dvc push`` to the remote of ``orchestration.remote``; a markdown artifact (key
   ``refresh``) lists the source diff, the stages that ran and the ``dvc metrics`` diff.

The flow also pushes when nothing changed (cheap when the remote already has everything), so
the remote catches up after a first run of the pipeline deployment.

    python -m flows.refresh                 # run once, locally (an ephemeral Prefect API)
    prefect deployment run hardnegs-refresh/refresh
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import ROOT, pipeline, reproduce


@task(name="check-sources", retries=1, retry_delay_seconds=30)
def check_sources(params: str, root: str) -> list[dict[str, Any]]:
    from tasks.config import load_config
    from tasks.sources_check import check_all

    statuses = check_all(load_config(params), root=Path(root))
    return [asdict(s) | {"needs_refresh": s.needs_refresh} for s in statuses]


@task(name="dvc-metrics")
def read_metrics(root: str) -> dict[str, dict[str, Any]]:
    from tasks.remote import metrics

    return metrics(Path(root))


@task(name="dvc-push", retries=2, retry_delay_seconds=30)
def push(params: str, root: str) -> str:
    from tasks.config import load_config
    from tasks.remote import push as dvc_push

    return dvc_push(load_config(params).orchestration.remote, Path(root))


def _report(statuses: list[dict[str, Any]], ran: list[str], metrics_md: str, pushed: str) -> str:
    from tasks.sources_check import SourceStatus, to_markdown

    table = to_markdown(
        [SourceStatus(**{k: v for k, v in s.items() if k != "needs_refresh"}) for s in statuses]
    )
    lines = ["# hardnegs refresh", "", "## Sources (vs. the last download)", "", table]
    lines += ["## Stages that ran", "", ", ".join(f"`{s}`" for s in ran) or "none", ""]
    lines += ["## Metrics (dvc metrics, before -> after)", "", metrics_md]
    lines += ["## DVC remote", "", f"```\n{pushed or 'not pushed'}\n```", ""]
    return "\n".join(lines)


@flow(name="hardnegs-refresh")
def refresh(params: str = "params.yaml", push_remote: bool = True, root: str | None = None) -> dict[str, Any]:
    """Check upstream sources; when one changed, rerun what depends on it and push.

    Args:
        params: the params file (relative to the project root); its profile's sources are checked.
        push_remote: ``dvc push`` to ``orchestration.remote`` at the end.
        root: the project checkout to run in (default: the one this flow lives in).
    """
    logger = get_run_logger()
    project = Path(root) if root else ROOT
    params_path = str(project / params)
    statuses = check_sources(params_path, str(project))
    changed = [s["name"] for s in statuses if s["needs_refresh"]]
    for s in statuses:
        if s["state"] == "unknown":
            logger.warning("source %s: cannot tell (%s); not treated as changed", s["name"], s["reasons"][0])
    ran: list[str] = []
    metrics_md = "Not compared: nothing was recomputed.\n"
    if not changed:
        logger.info(
            "no upstream source changed since the last download (%d checked): nothing to do", len(statuses)
        )
    else:
        from tasks.remote import metrics_diff, metrics_markdown

        logger.info(
            "upstream changed: %s; re-downloading, then DVC reruns what depends on it", ", ".join(changed)
        )
        before = read_metrics(str(project))
        results = [reproduce(f"download@{name}", force=True, root=str(project)) for name in changed]
        results += pipeline(params=params, root=str(project))
        ran = [r["stage"] for r in results if r["ran"]]
        metrics_md = metrics_markdown(metrics_diff(before, read_metrics(str(project))))
        logger.info("stages that ran: %s", ", ".join(ran) or "none")
    pushed = push(params_path, str(project)) if push_remote else ""
    create_markdown_artifact(
        key="refresh",
        markdown=_report(statuses, ran, metrics_md, pushed),
        description=f"refresh: {len(changed)} source(s) changed, {len(ran)} stage(s) ran",
    )
    return {"changed": changed, "ran": ran, "sources": statuses, "pushed": pushed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.refresh",
        description="Check the upstream sources of the active profile (HEAD / stat, no download); "
        "if any changed, re-download it, rerun the stages DVC finds out of date, dvc push, and "
        "record the diff as a Prefect artifact. Ends in seconds when nothing changed.",
        epilog="example: python -m flows.refresh --no-push",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-push", action="store_true", help="skip dvc push")
    args = parser.parse_args(argv)
    result = refresh(params=args.params, push_remote=not args.no_push)
    sys.stderr.write(
        f"refresh: changed sources: {', '.join(result['changed']) or 'none'}; "
        f"stages run: {', '.join(result['ran']) or 'none'}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
