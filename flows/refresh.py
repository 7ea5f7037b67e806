"""The scheduled refresh: check upstream cheaply, refuse or re-pin a changed file, rerun, push.

1. Every source of the active profile is checked against the record the download stage left
   (``tasks.sources_check``: HTTP HEAD for size/ETag/Last-Modified, ``file:`` by size and md5).
   Nothing changed -> the flow ends here, in seconds, saying so.
2. A source that changed *upstream* while its registry entry still pins the old md5 cannot be
   refreshed by downloading it: the archive cache is keyed by that md5, so the download stage
   would verify and keep the old bytes. What happens is ``orchestration.refresh_on_change``:

   - ``fail`` (default): nothing is downloaded or recomputed; the ``refresh`` artifact names the
     source, its old and new size / ETag / Last-Modified / md5 (the new md5 where it is known
     without a download: ``file:`` sources) and the one command that accepts the change,
     ``python -m tasks.sources_check accept <source>``; the flow run ends **Failed**. Every later
     run fails the same way until the change is accepted (or upstream goes back).
   - ``repin``: the flow runs that accept itself (``accept-<source>`` task: fetch the file from
     upstream, hash it, file it under its md5, re-pin md5/size in ``conf/profile/<profile>.yaml``
     and ``params.yaml``), then goes on as in 3; the artifact lists the old and new md5. Commit
     the re-pinned files with ``dvc.lock``.

   A change already accepted (the registry pins the new md5 and the cached archive of that md5
   was fetched with the ETag / Last-Modified / size the server reports now, or a ``file:`` hashes
   to the pin) is refreshed as in 3: its download then uses exactly the bytes ``accept``
   fetched from upstream, verified against the pin.
3. The changed sources are downloaded again (``dvc repro --force`` of their ``download@<name>``
   stage; the download verifies against the registry's md5, so a registry edit that upstream
   does not match fails there, loudly), and the pipeline flow runs every stage in order, DVC
   re-running only what is now out of date.
4. ``dvc push`` to the remote of ``orchestration.remote``; a markdown artifact (key ``refresh``)
   lists the source diff, the md5 of each re-downloaded source before and after, the stages
   that ran and the ``dvc metrics`` diff.

The flow also pushes when nothing changed (cheap when the remote already has everything), so
the remote catches up after a first run of the pipeline deployment. A refused run pushes
nothing.

    python -m flows.refresh                 # run once, locally (an ephemeral Prefect API)
    prefect deployment run hardnegs-refresh/refresh
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import (
    NETWORK_STAGES,
    ROOT,
    CheckoutBusy,
    checkout_lock,
    pipeline,
    reproduce,
    stage_timeout,
)
from tasks.locks import EXIT_BUSY


class UpstreamChanged(RuntimeError):
    """A source changed upstream while the registry still pins the old file (and policy is ``fail``)."""


@task(name="check-sources", retries=1, retry_delay_seconds=30)
def check_sources(params: str, root: str) -> list[dict[str, Any]]:
    from tasks.config import load_config
    from tasks.sources_check import check_all

    statuses = check_all(load_config(params), root=Path(root))
    return [asdict(s) | {"needs_refresh": s.needs_refresh, "refused": s.refused} for s in statuses]


@task(name="accept-source", task_run_name="accept-{name}")
def accept_source(name: str, params: str, root: str) -> dict[str, Any]:
    """``python -m tasks.sources_check accept <name>``, as a task (policy ``repin``)."""
    from tasks.sources_check import accept

    return accept(name, Path(params), Path(root))


@task(name="dvc-metrics")
def read_metrics(root: str) -> dict[str, dict[str, Any]]:
    from tasks.remote import metrics

    return metrics(Path(root))


@task(name="dvc-push", retries=2, retry_delay_seconds=30)
def push(params: str, root: str) -> str:
    from tasks.config import load_config
    from tasks.remote import push as dvc_push

    return dvc_push(load_config(params).orchestration.remote, Path(root))


def _statuses(rows: list[dict[str, Any]]) -> list[Any]:
    from tasks.sources_check import SourceStatus

    keep = {f.name for f in dataclasses.fields(SourceStatus)}
    return [SourceStatus(**{k: v for k, v in r.items() if k in keep}) for r in rows]


def _sources_md(rows: list[dict[str, Any]]) -> list[str]:
    from tasks.sources_check import to_markdown

    return ["## Sources (vs. the last download)", "", to_markdown(_statuses(rows))]


def _md5_table(rows: list[dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
    out = [
        "## Downloaded again (md5 before -> after)",
        "",
        "| source | md5 before | md5 after | size before -> after |",
        "|---|---|---|---|",
    ]
    for r in rows:
        new = after.get(r["name"]) or {}
        old_md5, old_size = r["recorded"].get("md5"), r["recorded"].get("size")
        out.append(f"| `{r['name']}` | `{old_md5}` | `{new.get('md5')}` | {old_size} -> {new.get('size')} |")
    return [*out, ""]


def _repin_md(accepted: list[dict[str, Any]]) -> list[str]:
    out = [
        "## Re-pinned (orchestration.refresh_on_change: repin)",
        "",
        "| source | md5 old -> new | size old -> new | files rewritten |",
        "|---|---|---|---|",
    ]
    for a in accepted:
        files = ", ".join(f"`{f}`" for f in a["repinned"]) or "none (same bytes)"
        md5s, sizes = f"`{a['old_md5']}` -> `{a['new_md5']}`", f"{a['old_size']} -> {a['new_size']}"
        out.append(f"| `{a['name']}` | {md5s} | {sizes} | {files} |")
    return [*out, "", "Commit the re-pinned files together with `dvc.lock`.", ""]


def _refuse(rows: list[dict[str, Any]], profile: str) -> None:
    """Record why the refresh stops, then fail the flow run."""
    from tasks.sources_check import refusal_markdown

    refused = [r["name"] for r in rows if r["refused"]]
    lines = ["# hardnegs refresh: refused", "", *_sources_md(rows)]
    lines += ["## Refused upstream changes", "", refusal_markdown(_statuses(rows), profile)]
    lines += ["## Stages that ran", "", "none (refused before any download)", ""]
    create_markdown_artifact(
        key="refresh",
        markdown="\n".join(lines),
        description=f"refresh refused: {', '.join(refused)} changed upstream, still pinned to the old file",
    )
    commands = "; ".join(f"`python -m tasks.sources_check accept {n}`" for n in refused)
    raise UpstreamChanged(
        f"upstream changed while the registry still pins the old file: {', '.join(refused)}; nothing was "
        f"downloaded or recomputed. Accept it with {commands} (then rerun the refresh), or set "
        "orchestration.refresh_on_change: repin"
    )


def _readable(value: Any) -> Any:
    """A metric value for people: floats to 4 significant digits (``0.331345678`` -> ``0.3313``),
    whole numbers from 10,000 on (``12345.6`` -> ``12,346``), the rest as is (counts, strings)."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return value


def readable_metrics_diff(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tasks.remote.metrics_diff`` rows rounded for the artifact: old and new to 4 significant
    digits, the change to 3 (``dvc metrics`` keeps the full values)."""
    out = []
    for r in rows:
        change = r["change"]
        if isinstance(change, float):
            change = float(f"{change:.3g}")
        out.append(r | {"old": _readable(r["old"]), "new": _readable(r["new"]), "change": change})
    return out


def _report(
    rows: list[dict[str, Any]],
    ran: list[str],
    metrics_md: str,
    pushed: str,
    after: dict[str, dict[str, Any]],
    accepted: list[dict[str, Any]],
) -> str:
    lines = ["# hardnegs refresh", "", *_sources_md(rows)]
    if accepted:
        lines += _repin_md(accepted)
    changed = [r for r in rows if r["needs_refresh"]]
    if changed:
        lines += _md5_table(changed, after)
    lines += ["## Stages that ran", "", ", ".join(f"`{s}`" for s in ran) or "none", ""]
    lines += ["## Metrics (dvc metrics, before -> after)", "", metrics_md]
    lines += ["## DVC remote", "", f"```\n{pushed or 'not pushed'}\n```", ""]
    return "\n".join(lines)


@flow(name="hardnegs-refresh")
def refresh(
    params: str = "params.yaml", push_remote: bool = True, root: str | None = None, wait: bool = False
) -> dict[str, Any]:
    """Check upstream sources; refuse (or re-pin) an upstream change; rerun what changed; push.

    Fails (``UpstreamChanged``) when a source changed upstream while its md5 is still pinned
    and ``orchestration.refresh_on_change`` is ``fail``: see the module docstring.

    Args:
        params: the params file (relative to the project root); its profile's sources are checked.
        push_remote: ``dvc push`` to ``orchestration.remote`` at the end.
        root: the project checkout to run in (default: the one this flow lives in).
        wait: when another flow run holds the checkout, wait for it instead of failing.
    """
    from tasks.config import load_config
    from tasks.sources_check import load_record, record_path

    logger = get_run_logger()
    project = Path(root) if root else ROOT
    params_path = str(project / params)
    # the whole run holds the checkout (a repin rewrites params.yaml; the pipeline subflow re-enters)
    with checkout_lock(project, wait=wait, who="a hardnegs-refresh flow run"):
        cfg = load_config(params_path)
        rows = check_sources(params_path, str(project))
        refused = [r["name"] for r in rows if r["refused"]]
        accepted: list[dict[str, Any]] = []
        if refused and cfg.orchestration.refresh_on_change == "fail":
            logger.error(
                "upstream changed, registry still pins the old file: %s; refusing", ", ".join(refused)
            )
            _refuse(rows, cfg.profile)
        if refused:
            logger.warning("upstream changed: %s; re-pinning (refresh_on_change: repin)", ", ".join(refused))
            accepted = [accept_source(name, params_path, str(project)) for name in refused]
            for a in accepted:
                logger.info(
                    "%s: md5 %s -> %s, re-pinned in %s", a["name"], a["old_md5"], a["new_md5"], a["repinned"]
                )
            rows = check_sources(params_path, str(project))
            if any(r["refused"] for r in rows):  # changed again while it was being fetched
                _refuse(rows, cfg.profile)
        changed = [r["name"] for r in rows if r["needs_refresh"]]
        for r in rows:
            if r["state"] == "unknown":
                logger.warning(
                    "source %s: cannot tell (%s); not treated as changed", r["name"], r["reasons"][0]
                )
        ran: list[str] = []
        after: dict[str, dict[str, Any]] = {}
        metrics_md = "Not compared: nothing was recomputed.\n"
        if not changed:
            logger.info(
                "no upstream source changed since the last download (%d checked): nothing to do", len(rows)
            )
        else:
            from tasks.remote import metrics_diff, metrics_markdown

            logger.info("changed: %s; re-downloading, then DVC reruns what depends on it", ", ".join(changed))
            before = read_metrics(str(project))
            orch = cfg.orchestration
            results = []
            for name in changed:
                stage = f"download@{name}"
                retries = 2 if stage.startswith(NETWORK_STAGES) else 0  # as the pipeline flow does
                runner = reproduce.with_options(retries=retries, retry_delay_seconds=10)
                timeout_s = stage_timeout(stage, orch.stage_timeout_s, orch.stage_timeouts)
                results.append(
                    runner(
                        stage,
                        force=True,
                        root=str(project),
                        timeout_s=timeout_s,
                        kill_grace_s=orch.stage_kill_grace_s,
                    )
                )
            results += pipeline(params=params, root=str(project), wait=wait)
            ran = [
                r["stage"] + (" (restored from the run cache)" if r.get("status") == "restored" else "")
                for r in results
                if r["ran"] or r.get("status") == "restored"
            ]
            cfg = load_config(params_path)
            after = {n: load_record(record_path(cfg, n, project)) or {} for n in changed}
            metrics_md = metrics_markdown(
                readable_metrics_diff(metrics_diff(before, read_metrics(str(project))))
            )
            logger.info("stages that ran: %s", ", ".join(ran) or "none")
        pushed = push(params_path, str(project)) if push_remote else ""
        create_markdown_artifact(
            key="refresh",
            markdown=_report(rows, ran, metrics_md, pushed, after, accepted),
            description=f"refresh: {len(changed)} source(s) changed, {len(accepted)} re-pinned, "
            f"{len(ran)} stage(s) ran",
        )
    return {"changed": changed, "ran": ran, "sources": rows, "pushed": pushed, "repinned": accepted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.refresh",
        description=(
            "Check the upstream sources of the active profile (HEAD / stat, no download). Nothing\n"
            "changed: done in seconds. A source changed upstream while params.yaml still pins its\n"
            "old md5 is refused: nothing is downloaded, the run ends Failed (exit 1) and the\n"
            "'refresh' artifact names `python -m tasks.sources_check accept <source>`; with\n"
            "orchestration.refresh_on_change: repin it is fetched and re-pinned instead. Changed\n"
            "sources are re-downloaded, the stages DVC finds out of date rerun, dvc push runs, and\n"
            "the diff (md5 before -> after, stages, metrics) is recorded as a Prefect artifact.\n"
            "Exit 0 done, 1 refused, 4 another flow run holds this checkout."
        ),
        epilog="examples:\n  python -m flows.refresh --no-push\n"
        "  python -m tasks.sources_check accept dl19_qrels && python -m flows.refresh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="default: params.yaml")
    parser.add_argument("--no-push", action="store_true", help="skip dvc push")
    parser.add_argument("--wait", action="store_true", help="wait for another flow run on this checkout")
    args = parser.parse_args(argv)
    try:
        result = refresh(params=args.params, push_remote=not args.no_push, wait=args.wait)
    except UpstreamChanged as exc:
        sys.stderr.write(f"refresh refused: {exc}\n")
        return 1
    except CheckoutBusy as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_BUSY
    sys.stderr.write(
        f"refresh: changed sources: {', '.join(result['changed']) or 'none'}; "
        f"re-pinned: {', '.join(a['name'] for a in result['repinned']) or 'none'}; "
        f"stages run: {', '.join(result['ran']) or 'none'}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
