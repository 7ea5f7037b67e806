"""The refresh flow on a copy of the project whose dvc.yaml keeps the real download stage.

Real DVC, real download stage over the sample's ``file:`` sources, real Prefect (the session's
test API): a first pipeline run, a refresh with nothing changed (no stage runs, the remote is
filled), then one source changed (only the stages that depend on it run, metrics diff recorded).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests._deploy_helpers import ROOT, git, project_copy

pytestmark = pytest.mark.slow

COUNT = """import json, pathlib, sys
lines = pathlib.Path(sys.argv[1]).read_text().splitlines()
out = pathlib.Path(sys.argv[2])
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"qrels": len(lines), "relevant": sum(l.split()[3] != "0" for l in lines)}))
"""
SIZE = """import pathlib, sys
out = pathlib.Path(sys.argv[2])
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(str(sum(p.stat().st_size for p in pathlib.Path(sys.argv[1]).rglob("*") if p.is_file())))
"""


def _mini_project(dest: Path, store: Path) -> Path:
    proj = project_copy(dest)
    real = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = {
        "download": real["stages"]["download"],
        "count": {
            "cmd": "python count.py ${paths.raw}/dl19_qrels/2019qrels-pass.txt ${paths.metrics}/count.json",
            "deps": ["count.py", "${paths.raw}/dl19_qrels"],
            "metrics": [{"${paths.metrics}/count.json": {"cache": False}}],
        },
        "size": {
            "cmd": "python size.py ${paths.raw}/collectionandqueries ${paths.out}/size.txt",
            "deps": ["size.py", "${paths.raw}/collectionandqueries"],
            "outs": ["${paths.out}/size.txt"],
        },
    }
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (proj / "count.py").write_text(COUNT)
    (proj / "size.py").write_text(SIZE)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["orchestration"]["remote"] = {"name": "store", "url": str(store)}
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(["add", "-A"], proj)
    git(["commit", "-q", "-m", "mini pipeline"], proj)
    return proj


def _files(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.is_file()) if d.exists() else 0


def test_refresh_unchanged_then_one_source_changed(prefect_harness, tmp_path: Path):
    from prefect.artifacts import Artifact

    from flows.pipeline import pipeline
    from flows.refresh import refresh

    store = tmp_path / "store"
    proj = _mini_project(tmp_path / "proj", store)
    first = pipeline(root=str(proj))
    assert {r["stage"] for r in first if r["ran"]} >= {"download@dl19_qrels", "count", "size"}
    size_out = proj / "data" / "sample" / "out" / "size.txt"
    size_mtime = size_out.stat().st_mtime_ns

    # 1. nothing changed upstream: no stage runs; the remote catches up with the first run
    quiet = refresh(root=str(proj))
    assert quiet["changed"] == [] and quiet["ran"] == []
    assert {s["state"] for s in quiet["sources"]} == {"unchanged"}
    assert _files(store) > 0
    art = Artifact.get("refresh")
    assert art is not None and "| `dl19_qrels` | unchanged | - |" in art.data

    # 2. one source changes (a maintainer regenerates it and updates the registry entry)
    qrels = proj / "sample" / "2019qrels-pass.txt"
    body = "".join(qrels.read_text().splitlines(keepends=True)[:-5])
    qrels.write_text(body)
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["sources"]["dl19_qrels"].update(
        md5=hashlib.md5(body.encode()).hexdigest(), size=len(body.encode())
    )
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = _files(store)

    changed = refresh(root=str(proj))
    assert changed["changed"] == ["dl19_qrels"]
    assert changed["ran"] == ["download@dl19_qrels", "count"]  # not size, not the other downloads
    assert size_out.stat().st_mtime_ns == size_mtime
    assert _files(store) > before
    art = Artifact.get("refresh")
    assert "| `dl19_qrels` | changed | params md5:" in art.data
    assert "| count.json | qrels |" not in art.data  # rows name the metrics file by its path
    assert "count.json` | qrels |" in art.data and "| -5 |" in art.data
