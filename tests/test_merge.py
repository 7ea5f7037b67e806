"""merge: published format, ordering, skipped systems and queries, round trip, stable bytes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tasks.dense_mine import write_skipped
from tasks.io import DataError, file_digest
from tasks.merge import main, run
from tasks.records import (
    HardNegatives,
    Qrel,
    hits_table,
    read_hard_negatives,
    write_hard_negatives,
    write_hits,
    write_qrels,
)


def _hits(path: Path, rows: dict[int, list[int]]) -> None:
    qids = [q for q in sorted(rows) for _ in rows[q]]
    pids = [p for q in sorted(rows) for p in rows[q]]
    scores = [10.0 - i for q in sorted(rows) for i in range(len(rows[q]))]
    write_hits(path, hits_table(np.array(qids), np.array(pids), np.array(scores)))


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    neg = tmp_path / "negatives"
    neg.mkdir()
    # qid 3 has hits but no qrels; qid 4 has qrels but no hits anywhere
    _hits(neg / "bm25.parquet", {1: [11, 12, 13], 2: [21, 22], 3: [31]})
    _hits(neg / "dense-a.parquet", {1: [13, 10, 14], 2: [23], 3: [32]})  # 10 is a positive of qid 1
    _hits(neg / "dense-b.parquet", {2: [24, 24, 25]})  # a duplicate
    write_skipped(neg / "dense-gone.parquet", "no public weights")
    qrels = tmp_path / "qrels.train.tsv"
    write_qrels(qrels, [Qrel(2, 20, 1), Qrel(1, 10, 1), Qrel(1, 9, 1), Qrel(4, 40, 1)])
    return {"negatives": neg, "qrels": qrels, "out": tmp_path / "out" / "msmarco-hard-negatives.jsonl.gz"}


def test_merge_format_and_counts(project: dict[str, Path], tmp_path: Path) -> None:
    systems = ["bm25", "dense-a", "dense-gone", "dense-b", "dense-never-mined"]
    summary = run(systems, project["negatives"], project["qrels"], project["out"], tmp_path / "merge.json")
    recs = list(read_hard_negatives(project["out"]))
    assert recs == [
        HardNegatives(1, [9, 10], {"bm25": [11, 12, 13], "dense-a": [13, 14], "dense-b": []}),
        HardNegatives(2, [20], {"bm25": [21, 22], "dense-a": [23], "dense-b": [24, 25]}),
    ]
    assert summary["skipped_no_qrels"] == 1 and summary["skipped_no_hits"] == 1 and summary["lines"] == 2
    assert summary["systems"] == ["bm25", "dense-a", "dense-b"]
    assert summary["skipped_systems"]["dense-gone"] == "no public weights"
    assert "dense-never-mined" in summary["skipped_systems"]
    assert summary["per_system"]["dense-a"]["positives_dropped"] == 1
    assert summary["per_system"]["dense-b"]["duplicates_dropped"] == 1
    assert json.loads((tmp_path / "merge.json").read_text())["lines"] == 2
    # published shape: key order qid, pos, neg; default JSON separators; gzip mtime 0
    with gzip.open(project["out"], "rt") as fh:
        first = fh.readline()
    assert first.startswith('{"qid": 1, "pos": [9, 10], "neg": {"bm25": [11, 12, 13], ')
    assert project["out"].read_bytes()[4:8] == b"\0\0\0\0"
    for rec in recs:
        for pids in rec.neg.values():
            assert len(set(pids)) == len(pids) and not set(pids) & set(rec.pos)


def test_merge_is_byte_stable(project: dict[str, Path], tmp_path: Path) -> None:
    run(["bm25", "dense-a"], project["negatives"], project["qrels"], project["out"])
    again = tmp_path / "again.jsonl.gz"
    run(["bm25", "dense-a"], project["negatives"], project["qrels"], again)
    assert file_digest(project["out"]) == file_digest(again)


def test_reader_accepts_published_lines_and_rejects_bad_ones(tmp_path: Path) -> None:
    published = tmp_path / "pub.jsonl.gz"
    with gzip.open(published, "wt") as fh:  # shape of the file on the hub
        fh.write('{"qid": 867436, "pos": [5238393], "neg": {"bm25": [1, 2], "msmarco-MiniLM-L-6-v3": [3]}}\n')
    (rec,) = read_hard_negatives(published)
    assert rec == HardNegatives(867436, [5238393], {"bm25": [1, 2], "msmarco-MiniLM-L-6-v3": [3]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": 1, "pos": [2], "neg": {}}\n{"qid": 2, "pos": ["x"], "neg": {}}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: 'pos'"):
        list(read_hard_negatives(bad))
    with pytest.raises(ValueError, match="increasing qid"):
        write_hard_negatives(tmp_path / "o.jsonl", [HardNegatives(2, [], {}), HardNegatives(1, [], {})])


def test_no_system_to_merge_and_cli_help(
    project: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DataError, match="no system has hits"):
        run(["dense-gone"], project["negatives"], project["qrels"], project["out"])
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "published format" in capsys.readouterr().out
