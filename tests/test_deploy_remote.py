"""The DVC artifact store on a real 2-stage DVC repo: push, then a fresh clone pulls and skips work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tasks.config import ConfigError, Remote
from tasks.remote import configure, metrics, metrics_diff, metrics_markdown, pull, push, status
from tests._deploy_helpers import dvc, git

STAGE1 = """import pathlib
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/a.txt").write_text(open("in.txt").read().upper())
"""
STAGE2 = """import json
t = open("out/a.txt").read()
open("b.txt", "w").write(t[::-1])
json.dump({"chars": len(t), "nested": {"words": len(t.split())}}, open("m.json", "w"))
"""


def _dvc_yaml() -> str:
    import yaml

    py = sys.executable
    return yaml.safe_dump(
        {
            "stages": {
                "upper": {"cmd": f"{py} upper.py", "deps": ["upper.py", "in.txt"], "outs": ["out"]},
                "reverse": {
                    "cmd": f"{py} reverse.py",
                    "deps": ["reverse.py", "out/a.txt"],
                    "outs": ["b.txt"],
                    "metrics": [{"m.json": {"cache": False}}],
                },
            }
        }
    )


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(["init", "-q", "-b", "main"], r)
    dvc(["init", "-q"], r)
    (r / "in.txt").write_text("hard negatives\n")
    (r / "upper.py").write_text(STAGE1)
    (r / "reverse.py").write_text(STAGE2)
    (r / "dvc.yaml").write_text(_dvc_yaml())
    return r


def test_push_then_fresh_clone_pulls_and_reproduces_nothing(repo: Path, tmp_path: Path):
    remote = Remote(name="store", url="../store")  # relative to the project root, as in params
    configure(remote, repo)
    assert "url = ../../store" in (repo / ".dvc" / "config").read_text()  # DVC rebases it on .dvc/
    dvc(["repro"], repo)
    before = metrics(repo)
    assert before == {"m.json": {"chars": 15, "nested.words": 2}}
    out = push(remote, repo)
    assert "pushed" in out
    store = tmp_path / "store"
    assert sum(1 for p in store.rglob("*") if p.is_file()) == 3  # out/ (dir + a.txt) and b.txt
    git(["add", "-A"], repo)
    git(["commit", "-q", "-m", "run"], repo)

    clone = tmp_path / "clone"
    git(["clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "b.txt").exists()
    assert "pulled" in pull(remote, clone) or (clone / "b.txt").exists()
    assert (clone / "b.txt").read_text() == (repo / "b.txt").read_text()
    assert status(clone) == {}  # every stage up to date: nothing to recompute
    assert "Running stage" not in dvc(["repro"], clone)

    (repo / "in.txt").write_text("hard negatives mined again\n")
    assert set(status(repo)) == {"upper"}
    dvc(["repro"], repo)
    rows = metrics_diff(before, metrics(repo))
    assert [(r["metric"], r["old"], r["new"], r["change"]) for r in rows] == [
        ("chars", 15, 27, 12),
        ("nested.words", 2, 4, 2),
    ]
    assert "| `m.json` | chars | 15 | 27 | +12 |" in metrics_markdown(rows)
    assert push(remote, repo) and sum(1 for p in store.rglob("*") if p.is_file()) == 6


def test_configure_needs_a_dvc_repo(tmp_path: Path):
    with pytest.raises(ConfigError, match="dvc init"):
        configure(Remote(), tmp_path)


def test_cli_help_and_bad_params(tmp_path: Path, capsys):
    from tasks.remote import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "tasks.remote pull" in capsys.readouterr().out
    assert main(["push", "--params", str(tmp_path / "missing.yaml")]) == 2
