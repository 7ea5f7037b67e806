"""A tiny project on disk and a way to run one stage CLI on it as a real process.

The fault tests (bad input, disk errors, leftovers) run ``python -m tasks.<stage>`` the way DVC
does, with a ``params.yaml`` whose paths all point into the test's directory, then check the
exit code, the one error line and that the previous outputs are byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from tasks.records import Qrel, hits_table, write_hits, write_qrels

ROOT = Path(__file__).resolve().parent.parent
HARD_NEGATIVES = "msmarco-hard-negatives.jsonl.gz"


def make_project(root: Path, queries: int = 3, negatives: int = 5, **inputs: str) -> Path:
    """A params.yaml under ``root`` (every path inside it) and mined BM25 hits plus train qrels
    for ``queries`` queries, so ``tasks.merge`` has real work. Returns the params file."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["paths"] = {key: str(root / key) for key in data["paths"]}
    data["inputs"].update(inputs)
    data["bm25"]["threads"] = 1
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    qids = [q for q in range(1, queries + 1) for _ in range(negatives)]
    pids = [1000 * q + r for q in range(1, queries + 1) for r in range(negatives)]
    write_hits(root / "negatives" / "bm25.parquet", hits_table(qids, pids, [1.0] * len(qids)))
    write_qrels(raw(root, data, "qrels_train"), [Qrel(q, 10**7 + q, 1) for q in range(1, queries + 1)])
    return params


def raw(root: Path, data: dict | None, key: str) -> Path:
    """Where input ``key`` of the project's params lives."""
    data = data if data is not None else yaml.safe_load((root / "params.yaml").read_text())
    path = root / "raw" / data["inputs"][key]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_cli(
    stage: str,
    params: Path,
    *args: str,
    preexec_fn: Callable[[], None] | None = None,
    prefix: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m tasks.<stage> --params <params> ...`` in the checkout, as DVC runs it."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [*prefix, sys.executable, "-m", f"tasks.{stage}", *args, "--params", str(params)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
        check=False,
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one ERROR line of a failed stage; fails if there is a traceback or more than one."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def snapshot(*paths: Path) -> dict[str, str]:
    """md5 of every file under ``paths`` (files or directories), to compare before/after."""
    out: dict[str, str] = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[str(f)] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def leftovers(directory: Path) -> list[str]:
    """Hidden temporaries (``.<name>.<pid>.tmp`` / ``.staging``) left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name[1:2] != ".")
