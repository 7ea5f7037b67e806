"""TREC runs as arrays: the fast reader reads exactly what the line reader reads (rows or error),
the array writer writes the bytes the Hit writer writes, candidates are cut as before."""

from __future__ import annotations

import gzip
import random
from collections import defaultdict

import numpy as np
import pytest

from tasks.io import DataError
from tasks.records import (
    Hit,
    RunArrays,
    _read_run_fast,
    read_candidates,
    read_run,
    read_run_arrays,
    write_run,
    write_run_arrays,
)


def _random_run(seed: int, queries: int = 40, depth: int = 30) -> list[Hit]:
    rng = random.Random(seed)
    hits = []
    for qid in rng.sample(range(10**6), queries):
        pids = rng.sample(range(10**9), depth)
        scores = sorted((np.float32(rng.uniform(-50, 50)) for _ in pids), reverse=True)
        hits += [Hit(qid, pid, r, float(s)) for r, (pid, s) in enumerate(zip(pids, scores, strict=True), 1)]
    return hits


def _reference(path) -> RunArrays | DataError:
    """What the line reader gives: the rows, or its error."""
    try:
        rows = list(read_run(path))
    except DataError as exc:
        return exc
    if not rows:
        return RunArrays.empty()
    return RunArrays(*(np.array(c) for c in zip(*rows, strict=True)))


def _same(path) -> None:
    want = _reference(path)
    if isinstance(want, DataError):
        with pytest.raises(DataError) as got:
            read_run_arrays(path)
        assert str(got.value) == str(want)
        return
    if any(a.dtype == object for a in want):  # an id past int64: Python reads it, arrays cannot
        with pytest.raises(DataError, match=r":\d+: (qid|pid|rank) \d+ does not fit in 64 bits"):
            read_run_arrays(path)
        return
    got_arrays = read_run_arrays(path)
    for name, a, b in zip(RunArrays._fields, got_arrays, want, strict=True):
        assert a.dtype == (np.float64 if name == "score" else np.int64), name
        np.testing.assert_array_equal(a, b, err_msg=f"{path.name}: {name}")


@pytest.mark.parametrize("gz", [False, True])
def test_a_written_run_is_read_by_the_fast_path_with_the_same_rows(tmp_path, gz):
    hits = _random_run(1)
    path = tmp_path / ("r.trec.gz" if gz else "r.trec")
    write_run(path, hits, "all-MiniLM-L6-v2")
    assert _read_run_fast(path) is not None  # no fallback for what the stages write
    _same(path)
    got = read_run_arrays(path)
    assert got.qid.tolist() == [h.qid for h in hits]
    assert got.score.tolist() == [float(f"{h.score:.6f}") for h in hits]  # as printed: 6 decimals


# what each mutation does to a line: the odd spacings the line reader takes (str.split()), the
# values it takes or refuses, line ends, bad bytes; the fast path must agree or step aside
MUTATIONS = [
    lambda s: s.replace(" ", "\t", 1),
    lambda s: s.replace(" ", "  ", 1),
    lambda s: " " + s,
    lambda s: s + " ",
    lambda s: s.replace(" ", "\x0b", 1),
    lambda s: s.replace(" ", "\xa0", 2),
    lambda s: s.replace(" ", "\u2003", 1),
    lambda s: s.replace(" bm25", " bm\x1f25"),
    lambda s: s.replace(" Q0 ", " Q\t0 "),
    lambda s: s.replace(" Q0 ", " Q0\r"),
    lambda s: s + "\r",
    lambda s: "+" + s,
    lambda s: s.replace(" 1 ", " 1_0 ", 1),
    lambda s: s.split(" ", 1)[0] + "0" * 25 + " " + s.split(" ", 1)[1],
    lambda s: " ".join(s.split(" ")[:4] + ["nan"] + s.split(" ")[5:]),
    lambda s: " ".join(s.split(" ")[:4] + ["inf"] + s.split(" ")[5:]),
    lambda s: " ".join(s.split(" ")[:4] + ["1e400"] + s.split(" ")[5:]),
    lambda s: " ".join(s.split(" ")[:4] + ["x"] + s.split(" ")[5:]),
    lambda s: " ".join(s.split(" ")[:5]),
    lambda s: s + " extra",
    lambda s: s.replace(" ", "", 1),
    lambda s: "",
    lambda s: "   ",
    lambda s: s + "\n",
    lambda s: s.replace(" bm25", ' "bm25"'),
    lambda s: s.replace(" bm25", " bm25\u00e9"),
    lambda s: s.replace("Q0", "NA"),
]


@pytest.mark.parametrize("which", range(len(MUTATIONS)))
def test_an_odd_line_reads_as_the_line_reader_reads_it(tmp_path, which):
    lines = [f"{h.qid} Q0 {h.pid} {h.rank} {h.score:.6f} bm25" for h in _random_run(2, 5, 4)]
    rng = random.Random(which)
    for k in rng.sample(range(len(lines)), 2):
        lines[k] = MUTATIONS[which](lines[k])
    path = tmp_path / "odd.trec"
    path.write_bytes(("\n".join(lines) + "\n").encode())
    _same(path)


def test_bytes_and_files_the_fast_path_leaves_to_the_line_reader(tmp_path):
    good = "1 Q0 2 1 0.500000 bm25\n"
    cases = {
        "empty.trec": b"",
        "blank.trec": b"\n\n",
        "utf8.trec": good.encode() + b"1 Q0 3 2 0.1 bm\xff25\n",
        "lone-cr.trec": b"1 Q0 2 1 0.5 a\r3 Q0 4 1 0.5 a\n",  # two rows for pyarrow, 12 fields for split()
        "crlf.trec": good.replace("\n", "\r\n").encode() * 3,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        _same(tmp_path / name)
    (tmp_path / "cut.trec.gz").write_bytes(gzip.compress((good * 2000).encode())[:-40])
    _same(tmp_path / "cut.trec.gz")
    assert read_run_arrays(tmp_path / "crlf.trec").qid.tolist() == [1, 1, 1]
    with pytest.raises(DataError, match=r"lone-cr\.trec:1: expected 6 columns"):
        read_run_arrays(tmp_path / "lone-cr.trec")
    with pytest.raises(FileNotFoundError):
        read_run_arrays(tmp_path / "missing.trec")
    (tmp_path / "big.trec").write_text("1 Q0 99999999999999999999 1 0.5 bm25\n")
    with pytest.raises(DataError, match=r"big\.trec:1: pid 99999999999999999999 does not fit in 64 bits"):
        read_run_arrays(tmp_path / "big.trec")


@pytest.mark.parametrize("tag", ["bm25", "100%-dense", "{x}"])
def test_the_array_writer_writes_the_bytes_of_the_hit_writer(tmp_path, tag):
    hits = _random_run(3, 30, 50) + [Hit(7, 8, 1, float(np.float32(1 / 3))), Hit(7, 9, 2, -0.0)]
    write_run(tmp_path / "hits.trec", hits, tag)
    cols = [np.array(c) for c in zip(*hits, strict=True)]
    write_run_arrays(tmp_path / "arrays.trec", *cols[:3], cols[3].astype(np.float32), tag)
    assert (tmp_path / "arrays.trec").read_bytes() == (tmp_path / "hits.trec").read_bytes()
    with pytest.raises(ValueError, match="same length"):
        write_run_arrays(tmp_path / "bad.trec", cols[0], cols[1][:-1], cols[2], cols[3], tag)
    assert not (tmp_path / "bad.trec").exists()


def test_candidates_are_each_querys_top_by_rank_ties_by_pid(tmp_path):
    rng = random.Random(4)
    hits = []
    for qid in (9, 3, 5):
        ranks = [rng.randint(1, 6) for _ in range(12)]  # ties and gaps, not in rank order
        hits += [Hit(qid, rng.randint(0, 40), r, 0.0) for r in ranks]
    rng.shuffle(hits)
    write_run(tmp_path / "c.trec", hits, "bm25")
    ranked = defaultdict(list)
    for h in hits:
        ranked[h.qid].append((h.rank, h.pid))
    for depth in (1, 5, 100):
        want = {q: [p for _, p in sorted(ranked[q])[:depth]] for q in sorted(ranked)}
        got = read_candidates(tmp_path / "c.trec", depth)
        assert got.sets == want and list(got.sets) == [3, 5, 9] and got.listed == len(hits)
