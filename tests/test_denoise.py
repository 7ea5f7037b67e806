"""Denoising rules and the denoise stage (synthetic CE scores: no model needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tasks.config import Denoise
from tasks.denoise import keep, main, run, sigmoid, threshold
from tasks.io import DataError, read_json
from tasks.records import HardNegatives, read_hard_negatives, scores_table, write_hard_negatives, write_table
from tests._score_helpers import SYSTEMS, make_records, synthetic_scores


def _sigmoid(x: float) -> float:
    """The reference: the logistic function written out with Python floats (float64)."""
    return 1.0 / (1.0 + math.exp(-x))


def test_absolute_rule_boundaries() -> None:
    p = Denoise(rule="absolute", margin=3.0)
    assert threshold(5.0, p) == 2.0 and threshold(-1.0, p) == -4.0
    # exactly m - margin is kept, the next float above it is dropped; negative logits alike
    for m in (5.0, -1.0, 0.0):
        edge = m - 3.0
        assert keep(np.array([edge, np.nextafter(edge, np.inf), edge - 10]), m, p).tolist() == [
            True,
            False,
            True,
        ]
    # margin 0: a negative scoring exactly like the weakest positive is kept
    assert keep(np.array([2.5, 2.5000001]), 2.5, Denoise(rule="absolute", margin=0.0)).tolist() == [
        True,
        False,
    ]


def test_sigmoid_is_exact_and_does_not_overflow() -> None:
    xs = np.array([-800.0, -40.0, -3.0, 0.0, 0.5, 8.0, 40.0, 800.0])
    with np.errstate(over="raise", invalid="raise"):  # no overflow to inf, no nan (underflow to 0 is right)
        got = sigmoid(xs)
    assert got.dtype == np.float64
    assert got[0] == 0.0 and got[-1] == 1.0 and got[3] == 0.5
    assert got[1:-1].tolist() == pytest.approx([_sigmoid(x) for x in xs[1:-1]], rel=1e-15)


@pytest.mark.parametrize("min_pos", [-8.0, -2.0, -0.2, 0.0, 0.5, 3.0, 8.0])
def test_relative_rule_compares_sigmoid_probabilities(min_pos: float) -> None:
    p = Denoise(rule="relative", relative=0.95)
    bound = 0.95 * _sigmoid(min_pos)  # keep iff sigmoid(neg) <= 0.95 * sigmoid(min pos)
    edge = math.log(bound / (1.0 - bound))  # the logit whose probability is the bound
    negs = np.array([edge - 1e-6, edge + 1e-6, min_pos, min_pos - 20.0, min_pos + 1.0])
    assert keep(negs, min_pos, p).tolist() == [True, False, False, True, False]
    assert edge < min_pos  # never keeps a negative scoring at or above the positive


def test_relative_rule_exact_boundary_and_ties() -> None:
    # sigmoid(0) = 0.5 and sigmoid(-ln 3) = 1/4 exactly in float64: 1/4 <= 0.5 * 0.5 is kept
    half = Denoise(rule="relative", relative=0.5)
    assert sigmoid(-math.log(3.0)) == 0.25
    assert keep(np.array([-math.log(3.0), -math.log(3.0) + 1e-9]), 0.0, half).tolist() == [True, False]
    # a tie with the weakest positive: dropped below relative = 1, kept at relative = 1
    scores = np.array([-3.25, 0.0, 4.5], dtype=np.float32)
    for m in scores.tolist():
        assert not keep(np.array([m]), m, Denoise(rule="relative", relative=0.95))[0]
        assert keep(np.array([m]), m, Denoise(rule="relative", relative=1.0))[0]
    # float32 logits (as the score stage stores them) are compared after an exact cast
    assert keep(
        np.array([0.1], dtype=np.float32), float(np.float32(0.1)), Denoise(rule="relative", relative=1.0)
    )[0]


def test_relative_rule_is_a_share_of_the_probability_not_of_the_logit() -> None:
    """The issue's example: 5% of logit 0.5 is 0.025, of logit 8 it is 0.4; on the probability
    the kept negatives are those at most 95% as probable as the positive, at any logit."""
    p = Denoise(rule="relative", relative=0.95)
    for m in (0.5, 8.0, -4.0):
        negs = np.linspace(m - 10, m, 2001)
        kept = keep(negs, m, p)
        ratio = np.array([_sigmoid(x) for x in negs]) / _sigmoid(m)
        assert kept.tolist() == (ratio <= 0.95).tolist()
    # the raw-logit reading 0.95 * m would keep a negative above a negative positive: not this rule
    assert not keep(np.array([0.95 * -2.0]), -2.0, p)[0]
    with pytest.raises(ValueError, match="use tasks.denoise.keep"):
        threshold(1.0, p)


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
    # both rules counted on the same data. relative 0.95: qid 1 keeps sigmoid(neg) <= 0.95 *
    # sigmoid(4), i.e. logit <= 2.63 (drops pid 23 at 9.0); qid 2 keeps logit <= -2.06 (drops none)
    by_rule = metrics["by_rule"]
    assert by_rule["absolute"]["margin"] == 3.0 and by_rule["relative"]["relative"] == 0.95
    assert by_rule["absolute"]["systems"] == {
        "bm25": {"dropped": 1, "dropped_share": 0.25},
        "dense": {"dropped": 3, "dropped_share": 0.75},
        "empty": {"dropped": 0, "dropped_share": 0.0},
    }
    assert by_rule["relative"]["systems"] == {
        "bm25": {"dropped": 0, "dropped_share": 0.0},
        "dense": {"dropped": 1, "dropped_share": 0.25},
        "empty": {"dropped": 0, "dropped_share": 0.0},
    }
    assert by_rule["absolute"]["total"] == {"dropped": 4, "dropped_share": 0.5}
    assert by_rule["relative"]["total"] == {"dropped": 1, "dropped_share": 0.125}
    # filtering with the other rule: the same comparison, the top-level figures follow the rule
    other = run(
        neg_path, scores_path, tmp_path / "rel.jsonl.gz", tmp_path / "rel.json", Denoise(rule="relative")
    )
    assert other["by_rule"] == by_rule and other["rule"] == "relative" and other["relative"] == 0.95
    assert "margin" not in other
    assert other["systems"]["dense"] == {"candidates": 4, "dropped": 1, "kept": 3, "dropped_share": 0.25}
    assert [r.neg["dense"] for r in read_hard_negatives(tmp_path / "rel.jsonl.gz")] == [[21], [32, 33]]


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
        bound = 0.9 * _sigmoid(min(scores[(rec.qid, p)] for p in rec.pos))
        for system in SYSTEMS:
            want = [p for p in rec.neg[system] if _sigmoid(scores[(rec.qid, p)]) <= bound]
            assert out.neg[system] == want
    for name, c in m["systems"].items():
        assert c["candidates"] == c["dropped"] + c["kept"]
        assert m["by_rule"]["relative"]["systems"][name]["dropped"] == c["dropped"]
    assert 0 < m["total"]["dropped"] < m["total"]["candidates"]  # the data exercise both outcomes


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
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert "example: python -m tasks.denoise" in out
    assert "keep iff CE(neg) <= m - denoise.margin" in out
    assert "keep iff sigmoid(CE(neg)) <= denoise.relative * sigmoid(m)" in out
