"""Denoising rules and the denoise stage (synthetic CE scores: no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.config import Denoise
from tasks.denoise import main, run, threshold
from tasks.io import DataError, read_json
from tasks.records import HardNegatives, read_hard_negatives, scores_table, write_hard_negatives, write_table
from tests._score_helpers import SYSTEMS, make_records, synthetic_scores


def test_absolute_rule() -> None:
    p = Denoise(rule="absolute", margin=3.0)
    assert threshold(5.0, p) == 2.0
    assert threshold(-1.0, p) == -4.0


@pytest.mark.parametrize(
    ("min_pos", "expected"),
    [(10.0, 9.5), (0.0, 0.0), (-10.0, -10.5), (-0.2, -0.21)],
)
def test_relative_rule_is_sign_safe(min_pos: float, expected: float) -> None:
    p = Denoise(rule="relative", relative=0.95)
    assert threshold(min_pos, p) == pytest.approx(expected)
    assert threshold(min_pos, p) <= min_pos  # never keeps a negative scoring above the positive


def _write_scores(path: Path, rows: dict[tuple[int, int], float]) -> None:
    keys = sorted(rows)
    write_table(
        path,
        scores_table(
            np.array([k[0] for k in keys]), np.array([k[1] for k in keys]), np.array([rows[k] for k in keys])
        ),
    )


def test_run_keeps_exactly_the_negatives_below_the_threshold(tmp_path: Path) -> None:
    records = [
        HardNegatives(1, [10, 11], {"bm25": [20, 21, 22], "dense": [21, 23], "empty": []}),
        HardNegatives(2, [30], {"bm25": [31], "dense": [32, 33], "empty": []}),
    ]
    # qid 1: min pos = 4 -> threshold 1; qid 2: min pos = -2 -> threshold -5
    scores = {(1, 10): 4.0, (1, 11): 6.0, (1, 20): 1.0, (1, 21): 1.5, (1, 22): -3.0, (1, 23): 9.0}
    scores |= {(2, 30): -2.0, (2, 31): -5.0, (2, 32): -4.99, (2, 33): -6.0}
    neg_path, scores_path = tmp_path / "hn.jsonl.gz", tmp_path / "ce.parquet"
    write_hard_negatives(neg_path, records)
    _write_scores(scores_path, scores)
    out, metrics_path = tmp_path / "out.jsonl.gz", tmp_path / "m" / "denoise.json"
    metrics = run(neg_path, scores_path, out, metrics_path, Denoise(rule="absolute", margin=3.0))
    got = list(read_hard_negatives(out))
    assert got == [
        HardNegatives(1, [10, 11], {"bm25": [20, 22], "dense": [], "empty": []}),
        HardNegatives(2, [30], {"bm25": [31], "dense": [33], "empty": []}),
    ]
    assert metrics["systems"]["bm25"] == {"candidates": 4, "dropped": 1, "kept": 3, "dropped_share": 0.25}
    assert metrics["systems"]["dense"] == {"candidates": 4, "dropped": 3, "kept": 1, "dropped_share": 0.75}
    assert metrics["total"]["candidates"] == 8 and metrics["total"]["dropped"] == 4
    assert metrics["queries"] == 2 and metrics["queries_without_negatives"] == 0
    assert read_json(metrics_path) == metrics


def test_relative_run_and_determinism(tmp_path: Path) -> None:
    records = make_records(20, 300)
    neg_path, scores_path = tmp_path / "hn.jsonl.gz", tmp_path / "ce.parquet"
    write_hard_negatives(neg_path, records)
    scores = synthetic_scores(scores_path, records)
    params = Denoise(rule="relative", relative=0.9)
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    m = run(neg_path, scores_path, a, tmp_path / "a.json", params)
    run(neg_path, scores_path, b, tmp_path / "b.json", params)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    for rec, out in zip(records, read_hard_negatives(a), strict=True):
        limit = threshold(min(scores[(rec.qid, p)] for p in rec.pos), params)
        for system in SYSTEMS:
            assert out.neg[system] == [p for p in rec.neg[system] if scores[(rec.qid, p)] <= limit]
    for c in m["systems"].values():
        assert c["candidates"] == c["dropped"] + c["kept"]


def test_missing_score_is_an_error(tmp_path: Path) -> None:
    neg_path, scores_path = tmp_path / "hn.jsonl.gz", tmp_path / "ce.parquet"
    write_hard_negatives(neg_path, [HardNegatives(1, [10], {"bm25": [20, 21]})])
    _write_scores(scores_path, {(1, 10): 4.0, (1, 20): 1.0})
    with pytest.raises(DataError, match=r"no cross-encoder score for qid 1, pid\(s\) \[21\]"):
        run(neg_path, scores_path, tmp_path / "o.jsonl.gz", tmp_path / "m.json", Denoise())
    assert not (tmp_path / "o.jsonl.gz").exists()


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "example: python -m tasks.denoise" in capsys.readouterr().out
