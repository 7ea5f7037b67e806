"""Readers of the exchange formats reject bad rows with file:line; writers round-trip."""

from __future__ import annotations

import pytest

from tasks.io import DataError
from tasks.records import (
    Hit,
    Qrel,
    hits_table,
    iter_hits,
    qrels_by_query,
    read_candidates,
    read_collection,
    read_hits,
    read_qrels,
    read_queries,
    read_run,
    write_hits,
    write_qrels,
    write_run,
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1\ta\nx2\tb\n", r"c\.tsv:2: pid 'x2' is not an integer"),
        ("1\ta\n1\tb\n", r"c\.tsv:2: duplicate pid 1"),
        ("1 a\n", r"c\.tsv:1: expected 2 tab-separated fields '<pid>\\t<passage>', found no tab"),
        ("1\ta\n2\tb\tc\n", r"c\.tsv:2: expected 2 tab-separated fields .* found 3 fields"),
        ("", r"c\.tsv: no passages \(an empty collection file"),
        ("\n\n", r"c\.tsv: no passages \(an empty collection file, or only blank lines\)"),
    ],
)
def test_collection_errors_name_the_line(tmp_path, content, message):
    (tmp_path / "c.tsv").write_text(content)
    with pytest.raises(DataError, match=message):
        list(read_collection(tmp_path / "c.tsv"))


def test_qrels_both_separators_and_errors(tmp_path):
    (tmp_path / "q.tsv").write_text("1\t0\t10\t1\n1 0 11 2\n2\t0\t10\t0\n")
    qrels = list(read_qrels(tmp_path / "q.tsv"))
    assert qrels == [Qrel(1, 10, 1), Qrel(1, 11, 2), Qrel(2, 10, 0)]
    assert qrels_by_query(qrels) == {1: [10, 11]}
    assert qrels_by_query(qrels, min_rel=2) == {1: [11]}
    write_qrels(tmp_path / "w.tsv", qrels)
    assert list(read_qrels(tmp_path / "w.tsv")) == qrels
    (tmp_path / "bad.tsv").write_text("1 0 10\n")
    with pytest.raises(DataError, match=r"bad\.tsv:1: expected 4 columns"):
        list(read_qrels(tmp_path / "bad.tsv"))


def test_run_roundtrip(tmp_path):
    hits = [Hit(1, 10, 1, 3.5), Hit(1, 11, 2, 1.25)]
    write_run(tmp_path / "r.trec", hits, "bm25")
    assert (tmp_path / "r.trec").read_text().splitlines()[0] == "1 Q0 10 1 3.500000 bm25"
    assert list(read_run(tmp_path / "r.trec")) == hits


def test_candidates_of_a_top1000_list_are_sets_and_of_a_run_its_top(tmp_path):
    """An official list has no order: its candidates come back as sets (pids ascending, no rank
    to cut by); a TREC run (by name) is cut at its top ``depth`` by rank. The details (shuffling,
    the DL19 list, bad lines) are in tests/test_candidates.py."""
    top = tmp_path / "top1000.dev"
    top.write_text("7\t30\tq seven\tp thirty\n5\t10\tq five\tp\tten\n7\t20\tq seven\tp twenty\n")
    cands = read_candidates(top, depth=1)
    assert cands.sets == {5: [10], 7: [20, 30]} and not cands.ordered and cands.depth is None
    assert (cands.listed, cands.kept) == (3, 3)  # depth 1 does not cut an unordered list
    write_run(tmp_path / "r.trec", [Hit(1, 10, 2, 3.5), Hit(1, 11, 1, 4.0), Hit(2, 9, 1, 1.0)], "bm25")
    run = read_candidates(tmp_path / "r.trec", depth=1)
    assert run.sets == {1: [11], 2: [9]} and run.ordered and (run.listed, run.kept) == (3, 2)
    with pytest.raises(FileNotFoundError, match="download stage"):
        read_candidates(tmp_path / "none" / "top1000.dev", 10)
    with pytest.raises(FileNotFoundError, match="bm25_mine"):
        read_candidates(tmp_path / "none" / "dev.full.trec", 10)


def test_hits_table_ranks_and_parquet_roundtrip(tmp_path):
    table = hits_table([5, 5, 5, 7, 9, 9], [1, 2, 3, 4, 5, 6], [3.0, 2.0, 1.0, 9.0, 2.0, 1.0])
    assert table.column("rank").to_pylist() == [1, 2, 3, 1, 1, 2]
    write_hits(tmp_path / "h.parquet", table)
    first = (tmp_path / "h.parquet").read_bytes()
    write_hits(tmp_path / "h.parquet", table)
    assert (tmp_path / "h.parquet").read_bytes() == first
    back = read_hits(tmp_path / "h.parquet")
    assert back.equals(table)
    assert list(iter_hits(back))[3] == Hit(7, 4, 1, 9.0)
    assert hits_table([], [], []).num_rows == 0


def test_empty_texts_queries_raise_passages_are_counted(tmp_path, caplog):
    """An empty query cannot be retrieved with (error, naming the line); an empty passage is
    allowed, as published collections have a few, and reported once with its count."""
    (tmp_path / "q.tsv").write_text("1\twhat is x\n2\t \n")
    with pytest.raises(DataError, match=r"q\.tsv:2: qid 2 has an empty query; give it a text"):
        list(read_queries(tmp_path / "q.tsv"))
    (tmp_path / "c.tsv").write_text("1\tsome text\n2\t\n3\t  \n4\tmore\n")
    with caplog.at_level("WARNING", logger="tasks.records"):
        assert [p.pid for p in read_collection(tmp_path / "c.tsv")] == [1, 2, 3, 4]
    assert "c.tsv: 2 empty passage text(s) of 4 (first on line 2)" in caplog.text


@pytest.mark.parametrize("reader", ["qrels", "hard_negatives", "top1000"])
def test_empty_inputs_raise_naming_the_file(tmp_path, reader):
    from tasks.records import read_hard_negatives, read_top1000

    path = tmp_path / f"{reader}.txt"
    path.write_text("\n")
    read = {"qrels": read_qrels, "hard_negatives": read_hard_negatives, "top1000": read_top1000}[reader]
    with pytest.raises(DataError, match=rf"{reader}\.txt: no "):
        list(read(path))
    (tmp_path / "r.trec").write_text("")
    assert list(read_run(tmp_path / "r.trec")) == []  # an empty run is evaluate's to report


def test_truncated_parquet_names_the_file(tmp_path):
    from tasks.records import skipped_reason

    write_hits(tmp_path / "h.parquet", hits_table([5], [1], [3.0]))
    data = (tmp_path / "h.parquet").read_bytes()
    (tmp_path / "h.parquet").write_bytes(data[: len(data) // 2])
    for read in (read_hits, skipped_reason):
        with pytest.raises(DataError, match=r"h\.parquet: not a readable Parquet file .*rerun the stage"):
            read(tmp_path / "h.parquet")
