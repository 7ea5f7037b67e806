"""tasks.corpus_change: a deterministic small change of a BEIR folder, that ingest accepts; and the pure
functions of benchmarks/refresh_bench.py (work shares, the table)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.refresh_bench import StageRow, render_table, work_rows
from tasks.beir_sample import write_beir_sample
from tasks.config import CORPUS_IDS, QUERY_IDS, ROOT, Dataset
from tasks.corpus_change import per_kind, run, spread_positions
from tasks.ingest import run as ingest
from tasks.io import DataError

SMALL = {"docs": 300, "train_queries": 90, "test_queries": 20}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["_id"] for line in _lines(path)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _qrels(folder: Path, split: str) -> list[tuple[str, str, int]]:
    return [
        (q, d, int(s))
        for q, d, s in (line.split("\t") for line in _lines(folder / "qrels" / f"{split}.tsv")[1:])
    ]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    write_beir_sample(tmp_path / "src", **SMALL)
    return tmp_path / "src"


def test_same_seed_same_bytes_other_seed_other_change(src: Path, tmp_path: Path) -> None:
    assert run(src, tmp_path / "a", 0.06, 1) == run(src, tmp_path / "b", 0.06, 1)
    run(src, tmp_path / "c", 0.06, 2)
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")
    assert _snapshot(tmp_path / "a") != _snapshot(tmp_path / "c")
    assert _snapshot(src) != _snapshot(tmp_path / "a")


def test_counts_match_the_share_and_unchanged_lines_keep_their_bytes(src: Path, tmp_path: Path) -> None:
    before_docs, before_queries = _lines(src / "corpus.jsonl"), _lines(src / "queries.jsonl")
    counts = run(src, tmp_path / "d", 0.06, 1)
    k, kq = per_kind(300, 0.06), per_kind(90, 0.06)
    assert (k, kq) == (6, 2)
    assert counts == {
        "passages": 300, "queries": 110, "passages_edited": k, "passages_removed": k, "passages_added": k,
        "queries_edited": kq, "queries_removed": kq, "queries_added": kq,
        "qrels_removed": counts["qrels_removed"], "qrels_added": kq,
    }  # fmt: skip
    assert counts["qrels_removed"] >= kq  # each removed query takes its lines (one or two positives)
    after_docs, after_queries = (
        _lines(tmp_path / "d" / "corpus.jsonl"),
        _lines(tmp_path / "d" / "queries.jsonl"),
    )
    assert len(after_docs) == 300 and len(after_queries) == 110
    old, new = set(before_docs), set(after_docs)
    assert len(old - new) == 2 * k and len(new - old) == 2 * k  # removed + edited out, added + edited in
    ids_before, ids_after = _ids(src / "corpus.jsonl"), _ids(tmp_path / "d" / "corpus.jsonl")
    added = [i for i, ident in enumerate(ids_after) if ident not in set(ids_before)]
    assert len(added) == k and added[0] < 300 // 2 < added[-1]  # spread, not only appended
    assert len(set(before_queries) - set(after_queries)) == 2 * kq


def test_every_qrels_line_names_a_record_and_every_train_query_keeps_a_positive(
    src: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "d"
    run(src, dest, 0.1, 3)
    docs, queries = set(_ids(dest / "corpus.jsonl")), set(_ids(dest / "queries.jsonl"))
    for split in ("train", "test"):
        for q, d, _ in _qrels(dest, split):
            assert q in queries and d in docs, (split, q, d)
    positives = {q for q, _, s in _qrels(dest, "train") if s > 0}
    before = {q for q, _, s in _qrels(src, "train") if s > 0}
    removed = before - positives
    assert len(removed) == per_kind(90, 0.1)
    assert _qrels(dest, "test") == _qrels(src, "test")  # removed passages were never judged


def test_ingest_accepts_the_changed_folder(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    counts = run(src, dest, 0.06, 1)
    manifest = ingest(Dataset(format="beir", path=str(dest)), "x", tmp_path / "raw" / "x")
    assert manifest["counts"]["passages"] == 300
    assert manifest["counts"]["train_queries"] == SMALL["train_queries"]  # as many removed as added
    assert _lines(tmp_path / "raw" / "x" / CORPUS_IDS) == _ids(dest / "corpus.jsonl")
    new_queries = [q for q in _lines(tmp_path / "raw" / "x" / QUERY_IDS) if "new-" in q]
    assert len(new_queries) == counts["queries_added"]


def test_in_place_and_only_passages(src: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    run(src, tmp_path / "ref", 0.06, 1, what=("passages",))
    run(src, copy, 0.0, 1)  # share 0: an identical copy
    assert _snapshot(copy) == _snapshot(src)
    counts = run(copy, copy, 0.06, 1, what=("passages",))
    assert counts["queries_edited"] == counts["queries_added"] == 0
    assert _snapshot(copy) == _snapshot(tmp_path / "ref")
    assert (copy / "queries.jsonl").read_bytes() == (src / "queries.jsonl").read_bytes()


def test_spread_positions_cover_the_file() -> None:
    import random

    at = spread_positions(1000, 10, random.Random(0))
    assert at == sorted(at) and all(i * 100 <= p <= (i + 1) * 100 for i, p in enumerate(at))
    assert spread_positions(0, 1, random.Random(0)) == [0]


def test_bad_input(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share must be within"):
        run(src, tmp_path / "d", 1.5)
    with pytest.raises(ValueError, match="unknown kind"):
        run(src, tmp_path / "d", 0.1, what=("docs",))
    with pytest.raises(DataError, match="no such folder"):
        run(tmp_path / "nope", tmp_path / "d")
    small = tmp_path / "small"
    write_beir_sample(small, docs=40, train_queries=25, test_queries=15)  # nearly every passage judged
    with pytest.raises(ValueError, match="removals need"):
        run(small, tmp_path / "d", 0.9)
    bad = tmp_path / "bad"
    write_beir_sample(bad, **SMALL)
    lines = _lines(bad / "corpus.jsonl")
    (bad / "corpus.jsonl").write_text("\n".join([*lines, lines[3]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"corpus.jsonl:{len(lines) + 1}: duplicate _id 'doc-"):
        run(bad, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_cli(src: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tasks.corpus_change", *args], cwd=ROOT,
                              capture_output=True, text=True)  # fmt: skip

    assert "--share" in cli("--help").stdout
    done = cli(str(src), str(tmp_path / "d"), "--share", "0.06", "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == run(src, tmp_path / "e", 0.06, 1)
    assert cli(str(tmp_path / "nope"), str(tmp_path / "d")).returncode == 1
    assert cli(str(src), str(tmp_path / "d"), "--what", "docs").returncode == 2


# --------------------------------------------------------------------------- benchmarks/refresh_bench.py
def test_work_rows_and_table() -> None:
    records = [
        {"stage": "encode@m", "unit": "texts", "done": 12, "total": 1000},
        {"stage": "encode@m", "unit": "texts", "done": 3, "total": 200},
        {
            "stage": "mine@m",
            "unit": "dot products",
            "done": 50,
            "total": 10000,
            "queries": 9,
            "queries_searched": 2,
        },
        {"stage": "score", "unit": "pairs", "done": 0, "total": 0},
    ]
    rows = work_rows(records, {"encode@m": 4.0, "mine@m": 1.0, "bm25_index": 2.0}, {"encode@m": 40.0})
    by = {(r.stage, r.unit): r for r in rows}
    assert by[("encode@m", "texts")].done == 15 and by[("encode@m", "texts")].total == 1200
    assert by[("encode@m", "texts")].share == pytest.approx(15 / 1200)
    assert by[("score", "pairs")].share == 0.0
    assert (
        by[("mine@m", "queries re-searched")].done == 2 and by[("mine@m", "queries re-searched")].total == 9
    )
    assert by[("bm25_index", "")].share is None  # timed, no work record
    table = render_table(rows, changed=0.01, refresh_s=10.0, rebuild_s=50.0, identical=True, compared=7)
    assert "| encode@m | texts | 15 / 1,200 | 1.25% | 1.00% | 4.0 | 40.0 |" in table
    assert "| bm25_index | (whole stage) | - | 100% | 1.00% | 2.0 | - |" in table
    assert "refresh 10.0 s vs full rebuild 50.0 s (ratio 0.20)" in table
    assert table.rstrip().endswith("byte-identical to a full rebuild: yes (7 outs compared)")
    assert isinstance(rows[0], StageRow)
