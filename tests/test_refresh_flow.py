"""The refresh flow on a copy of the project whose dvc.yaml keeps the real download stage.

Real DVC, real download stage, real Prefect (the session's test API). Over the sample's
``file:`` sources: a first pipeline run, a refresh with nothing changed (no stage runs, the
remote is filled), then one source changed with its registry entry (only the stages that
depend on it run, metrics diff recorded). Over a real HTTP server on 127.0.0.1: a source that
changes upstream while its md5 is still pinned is refused (run Failed, twice), accepted with
``python -m tasks.sources_check accept``, then refreshed; and with ``refresh_on_change: repin``
re-pinned and refreshed in one run. GET requests are counted: nothing is downloaded twice.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._deploy_helpers import ROOT, git, project_copy
from tests._refresh_helpers import Served, http_server

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


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _http_project(dest: Path, url: str, body: bytes) -> Path:
    """One source, ``qrels``, served over HTTP, and one stage that depends on it."""
    proj = project_copy(dest)
    prof = proj / "conf" / "profile" / "sample.yaml"
    head, rest = prof.read_text().split("\nsources:\n", 1)
    entry = {"qrels": {"url": url, "md5": _md5(body), "size": len(body)}}
    tail = rest.split("\nsystems:\n", 1)[1]  # the profile's own sources block replaced, the rest kept
    prof.write_text(f"{head}\n{yaml.safe_dump({'sources': entry})}\nsystems:\n{tail}")
    real = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = {
        "download": real["stages"]["download"],
        "count": {
            "cmd": "python count.py ${paths.raw}/qrels/2019qrels-pass.txt ${paths.metrics}/count.json",
            "deps": ["count.py", "${paths.raw}/qrels"],
            "metrics": [{"${paths.metrics}/count.json": {"cache": False}}],
        },
    }
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (proj / "count.py").write_text(COUNT)
    _compose(proj)
    git(["add", "-A"], proj)
    git(["commit", "-q", "-m", "http pipeline"], proj)
    return proj


def _compose(proj: Path) -> None:
    cmd = [sys.executable, "-m", "tasks.config", "use", "sample"]
    subprocess.run(cmd, cwd=proj, check=True, capture_output=True, timeout=60)


def test_refresh_refuses_upstream_change_until_accepted_then_repins(prefect_harness, tmp_path: Path):
    from prefect.artifacts import Artifact

    from flows.pipeline import pipeline
    from flows.refresh import UpstreamChanged, refresh

    v1 = (ROOT / "sample" / "2019qrels-pass.txt").read_bytes()
    v2 = b"".join(v1.splitlines(keepends=True)[:-5])
    v3 = b"".join(v2.splitlines(keepends=True)[:-5])
    files = {"/2019qrels-pass.txt": Served(v1)}
    with http_server(files) as (base, handler):
        url = f"{base}/2019qrels-pass.txt"
        gets = lambda: sum(m == "GET" for m, _ in handler.requests)  # noqa: E731
        proj = _http_project(tmp_path / "proj", url, v1)
        raw = proj / "data" / "sample" / "raw" / "qrels" / "2019qrels-pass.txt"
        assert {r["stage"] for r in pipeline(root=str(proj)) if r["ran"]} == {"download@qrels", "count"}
        assert gets() == 1

        # 1. upstream changes, the registry still pins v1: refused, the run Failed, nothing touched
        files["/2019qrels-pass.txt"] = Served(v2, etag='"v2"', last_modified="Tue, 03 Nov 2026 10:00:00 GMT")
        lock = (proj / "dvc.lock").read_text()
        for _ in range(2):  # and the next weekly run the same: never reported as a success
            state = refresh(root=str(proj), push_remote=False, return_state=True)
            assert state.is_failed()
            with pytest.raises(UpstreamChanged, match="accept qrels"):
                state.result()
            art = Artifact.get("refresh").data
            assert "| `qrels` | changed (refused) | size:" in art
            assert f"| size | `{len(v1)}` | `{len(v2)}` |" in art
            assert '| ETag | `"v1"` | `"v2"` |' in art
            assert (
                "| Last-Modified | `Mon, 02 Nov 2026 10:00:00 GMT` | `Tue, 03 Nov 2026 10:00:00 GMT` |" in art
            )
            assert f"| md5 | `{_md5(v1)}` | unknown" in art
            assert "python -m tasks.sources_check accept qrels" in art
            assert (proj / "dvc.lock").read_text() == lock and raw.read_bytes() == v1 and gets() == 1

        # 2. accept: fetches v2 from upstream, re-pins conf and params; the refresh then reruns
        cmd = [sys.executable, "-m", "tasks.sources_check", "accept", "qrels"]
        done = subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert gets() == 2
        for f in ("conf/profile/sample.yaml", "params.yaml"):
            assert f"md5: {_md5(v2)}" in (proj / f).read_text()
        done = refresh(root=str(proj), push_remote=False)
        assert done["changed"] == ["qrels"] and done["ran"] == ["download@qrels", "count"]
        assert raw.read_bytes() == v2 and gets() == 2  # the bytes accept fetched, not a second GET
        art = Artifact.get("refresh").data
        assert f"| `qrels` | `{_md5(v1)}` | `{_md5(v2)}` | {len(v1)} -> {len(v2)} |" in art
        assert "count.json` | qrels |" in art and "| -5 |" in art

        # 3. refresh_on_change: repin: the next upstream change is fetched, re-pinned and rerun at once
        base_yaml = proj / "conf" / "base.yaml"
        base_yaml.write_text(
            base_yaml.read_text().replace("refresh_on_change: fail", "refresh_on_change: repin")
        )
        _compose(proj)
        files["/2019qrels-pass.txt"] = Served(v3, etag='"v3"')
        done = refresh(root=str(proj), push_remote=False)
        assert done["ran"] == ["download@qrels", "count"] and raw.read_bytes() == v3
        ((rep),) = done["repinned"]
        assert (rep["old_md5"], rep["new_md5"]) == (_md5(v2), _md5(v3)) and gets() == 3
        art = Artifact.get("refresh").data
        assert f"| `qrels` | `{_md5(v2)}` -> `{_md5(v3)}` | {len(v2)} -> {len(v3)} |" in art
        assert f"md5: {_md5(v3)}" in (proj / "conf" / "profile" / "sample.yaml").read_text()

        quiet = refresh(root=str(proj), push_remote=False)
        assert quiet["changed"] == [] and quiet["ran"] == [] and gets() == 3
    downloads = proj / "data" / "downloads"
    assert not [p for p in downloads.rglob("*") if p.name.endswith((".corrupt", ".part"))]
