"""The DVC artifact store: configure the remote from params, push, pull, read metrics.

Every stage output is DVC-tracked, so ``dvc push`` after a run uploads them all to the remote
named in ``params.yaml`` (``orchestration.remote``), and a second machine (a fresh clone)
runs ``dvc pull`` and then finds every stage up to date (``dvc repro`` recomputes nothing).

The default remote is a local directory (``../hardnegs-dvc-remote``, relative to the project
root). For cloud storage install DVC's extra and point ``url`` at the bucket:

    pip install "dvc[s3]"     # s3://bucket/path   (credentials: AWS_* env or ~/.aws)
    pip install "dvc[gs]"     # gs://bucket/path   (GOOGLE_APPLICATION_CREDENTIALS)
    pip install "dvc[azure]"  # azure://container/path (AZURE_STORAGE_CONNECTION_STRING)

Credentials go in ``.dvc/config.local`` (``dvc remote modify --local store ...``, not
committed) or the environment, never in params.

    python -m tasks.remote configure   # write orchestration.remote into .dvc/config (default)
    python -m tasks.remote push        # dvc push to it
    python -m tasks.remote pull        # dvc pull from it (a fresh clone: then dvc repro is a no-op)
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.config import ROOT, ConfigError, Remote, load_config

log = logging.getLogger(__name__)


def dvc(args: list[str], repo: Path = ROOT) -> str:
    """Run ``dvc <args>`` in ``repo`` with this interpreter; return stdout, raise on failure.

    ``python -m dvc`` rather than a ``dvc`` on PATH: a Prefect process worker may run with a
    PATH that lacks the virtualenv, and this way the DVC version is the locked one.
    """
    cmd = [sys.executable, "-m", "dvc", *args]
    log.debug("%s (in %s)", " ".join(cmd), repo)
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    return proc.stdout


def configure(remote: Remote, repo: Path = ROOT) -> None:
    """Make ``remote`` the default DVC remote of ``repo`` (idempotent; writes ``.dvc/config``)."""
    if not (repo / ".dvc").is_dir():
        raise ConfigError(f"{repo}: not a DVC repository (no .dvc/); run `dvc init` there first")
    # a relative local path is given from the project root; DVC rebases it on .dvc/ itself
    dvc(["remote", "add", "--default", "--force", remote.name, remote.url], repo)
    log.info("DVC remote %r -> %s (default)", remote.name, remote.url)


def push(remote: Remote, repo: Path = ROOT, jobs: int | None = None) -> str:
    """``dvc push`` every tracked output to ``remote``; returns DVC's summary line."""
    configure(remote, repo)
    args = ["push", "--remote", remote.name] + (["--jobs", str(jobs)] if jobs else [])
    out = dvc(args, repo).strip()
    log.info("dvc push: %s", out.splitlines()[-1] if out else "done")
    return out


def pull(remote: Remote, repo: Path = ROOT, jobs: int | None = None) -> str:
    """``dvc pull`` every tracked output from ``remote`` into the workspace."""
    args = ["pull", "--remote", remote.name] + (["--jobs", str(jobs)] if jobs else [])
    return dvc(args, repo).strip()


def status(repo: Path = ROOT) -> dict[str, Any]:
    """``dvc status --json``: out-of-date stages -> what changed ({} when all up to date)."""
    out = dvc(["status", "--json"], repo).strip()
    return json.loads(out) if out else {}


def metrics(repo: Path = ROOT) -> dict[str, dict[str, Any]]:
    """``dvc metrics show`` of the workspace, flattened: ``{file: {dotted.key: value}}``."""
    out = dvc(["metrics", "show", "--json"], repo).strip()
    data = json.loads(out) if out else {}
    flat: dict[str, dict[str, Any]] = {}
    for rev in data.values():  # only the workspace is asked for
        for fname, entry in (rev.get("data") or {}).items():
            flat[fname] = dict(_flatten(entry.get("data") or {}))
    return flat


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        items: list[tuple[str, Any]] = []
        for k in sorted(node):
            items.extend(_flatten(node[k], f"{prefix}.{k}" if prefix else str(k)))
        return items
    return [(prefix, node)]


def metrics_diff(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{path, metric, old, new, change}`` for every metric that differs (sorted)."""
    rows = []
    for fname in sorted(set(before) | set(after)):
        old_f, new_f = before.get(fname, {}), after.get(fname, {})
        for key in sorted(set(old_f) | set(new_f)):
            old, new = old_f.get(key), new_f.get(key)
            if old == new:
                continue
            change = new - old if isinstance(old, int | float) and isinstance(new, int | float) else None
            rows.append({"path": fname, "metric": key, "old": old, "new": new, "change": change})
    return rows


def metrics_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No metric changed.\n"
    lines = ["| path | metric | old | new | change |", "|---|---|---|---|---|"]
    for r in rows:
        change = "-" if r["change"] is None else f"{r['change']:+.6g}"
        lines.append(f"| `{r['path']}` | {r['metric']} | {r['old']} | {r['new']} | {change} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.remote",
        description="Manage the DVC remote named in params.yaml (orchestration.remote): write it into "
        ".dvc/config as the default, push every stage output to it, or pull them on another machine.",
        epilog="example (second machine): git clone ... && python -m tasks.remote pull && dvc repro  "
        "# nothing to reproduce",
    )
    parser.add_argument("action", choices=["configure", "push", "pull"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--jobs", type=int, default=None, help="parallel transfers (DVC's --jobs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        remote = load_config(args.params).orchestration.remote
        if args.action == "configure":
            configure(remote)
        elif args.action == "push":
            sys.stdout.write(push(remote, jobs=args.jobs) + "\n")
        else:
            configure(remote)
            sys.stdout.write(pull(remote, jobs=args.jobs) + "\n")
    except (ConfigError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
