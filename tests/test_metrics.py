"""tasks.metrics against trec_eval's own test data, pytrec_eval, and MS MARCO's MRR rule."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.io import DataError
from tasks.metrics import Qrels, Run, msmarco_mrr, trec_eval
from tests._evaluate_helpers import fixture_dir, read_all_lines, read_trec_qrels, read_trec_results, synthetic

CUTS = (5, 10, 15, 20, 30, 100, 200, 500, 1000)
MEASURES = (
    ["num_q", "num_ret", "num_rel", "num_rel_ret", "map", "recip_rank", "ndcg"]
    + [f"P_{k}" for k in CUTS]
    + [f"recall_{k}" for k in CUTS]
    + [f"ndcg_cut_{k}" for k in CUTS]
    + ["success_1", "success_5", "success_10"]
)
COUNTS = {"num_q", "num_ret", "num_rel", "num_rel_ret"}

# `trec_eval -m all_trec -mrelstring.20 -q -l2 test/qrels.rel_level test/results.test`:
# the `all` lines of trec_eval's test/out.test.aql (usnistgov/trec_eval, NIST license, see
# ../shared/fixtures/trec_eval/LICENSE.md), for the graded qrels with relevance level 2.
OUT_TEST_AQL = {
    "num_q": "3", "num_ret": "1500", "num_rel": "97", "num_rel_ret": "59", "map": "0.1667",
    "recip_rank": "0.3520", "P_5": "0.2667", "P_10": "0.2333", "P_100": "0.1633", "P_1000": "0.0197",
    "recall_5": "0.0173", "recall_10": "0.0303", "recall_100": "0.4735", "recall_1000": "0.5776",
    "ndcg": "0.3894", "ndcg_cut_5": "0.2768", "ndcg_cut_10": "0.2656", "ndcg_cut_100": "0.3577",
    "ndcg_cut_1000": "0.3894", "success_1": "0.3333", "success_5": "0.3333", "success_10": "0.3333",
}  # fmt: skip


def _printed(name: str, value: float) -> str:
    return str(int(value)) if name in COUNTS else f"{value:.4f}"


def test_matches_trec_eval_out_test_a():
    """`trec_eval -m all_trec qrels.test results.test` == out.test.a, to 4 decimals as printed."""
    fx = fixture_dir("trec_eval")
    expected = read_all_lines((fx / "out.test.a").read_text())
    summary = trec_eval(
        read_trec_results(fx / "results.test"), read_trec_qrels(fx / "qrels.test"), MEASURES
    ).summary
    got = {m: _printed(m, summary[m]) for m in MEASURES}
    assert got == {m: expected[m] for m in MEASURES}


def test_matches_trec_eval_graded_rel_level_2():
    """Graded qrels.rel_level at -l2 (TREC DL's binary threshold): trec_eval's out.test.aql."""
    fx = fixture_dir("trec_eval")
    names = list(OUT_TEST_AQL)
    summary = trec_eval(
        read_trec_results(fx / "results.test"),
        read_trec_qrels(fx / "qrels.rel_level"),
        names,
        relevance_level=2,
    ).summary
    assert {m: _printed(m, summary[m]) for m in names} == OUT_TEST_AQL


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("tie_every", [0, 20])
def test_agrees_with_pytrec_eval_per_query(level, tie_every):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run, qrels = synthetic(n_queries=40, depth=120, n_docs=200, seed=7 + level, tie_every=tie_every)
    ours = trec_eval(
        run, qrels, ["map", "recip_rank", "ndcg", "ndcg_cut_10", "P_10", "recall_10", "recall_100"], level
    )
    q_rel: dict[str, dict[str, int]] = {}
    for q, d, r in zip(qrels.qid.tolist(), qrels.docno.tolist(), qrels.rel.tolist(), strict=True):
        q_rel.setdefault(str(q), {})[str(d)] = r
    q_run: dict[str, dict[str, float]] = {}
    for q, d, s in zip(run.qid.tolist(), run.docno.tolist(), run.score.tolist(), strict=True):
        q_run.setdefault(str(q), {})[str(d)] = s
    ev = pytrec_eval.RelevanceEvaluator(
        q_rel,
        {"map", "recip_rank", "ndcg", "ndcg_cut.10", "P.10", "recall.10", "recall.100"},
        relevance_level=level,
    ).evaluate(q_run)
    for name, values in ours.per_query.items():
        theirs = np.array([ev[str(q)][name] for q in ours.qids.tolist()])
        np.testing.assert_allclose(values, theirs, rtol=0, atol=1e-12, err_msg=name)


def test_ties_broken_by_docno_descending_as_strings_rank_column_ignored():
    # "9" > "10" > "1" as strings: trec_eval ranks 9, then 10, then 1 (all tied on score).
    run = Run.from_arrays([1, 1, 1], [1, 10, 9], [0.5, 0.5, 0.5], [1, 2, 3])
    only_10 = Qrels.from_arrays([1], [10], [1])
    assert trec_eval(run, only_10, ["recip_rank"]).summary["recip_rank"] == 0.5
    only_1 = Qrels.from_arrays([1], [1], [1])
    assert trec_eval(run, only_1, ["recip_rank"]).summary["recip_rank"] == pytest.approx(1 / 3)
    # msmarco_eval's MRR follows the rank column instead.
    assert msmarco_mrr(run, only_1).mrr == 1.0


def test_graded_gains_and_negative_judgements():
    run = Run.from_arrays([1, 1, 1], ["a", "b", "c"], [3.0, 2.0, 1.0])
    qrels = Qrels.from_arrays([1, 1, 1, 1], ["a", "b", "c", "d"], [1, 3, -1, 2])
    ev = trec_eval(run, qrels, ["ndcg_cut_2", "recall_2", "num_rel"], relevance_level=2).summary
    dcg = 1 / np.log2(2) + 3 / np.log2(3)
    idcg = 3 / np.log2(2) + 2 / np.log2(3)
    assert ev["ndcg_cut_2"] == pytest.approx(dcg / idcg)
    assert ev["recall_2"] == 0.5 and ev["num_rel"] == 2


def test_complete_counts_missing_queries_as_zero():
    run = Run.from_arrays([1], ["a"], [1.0])
    qrels = Qrels.from_arrays([1, 2], ["a", "b"], [1, 1])
    assert trec_eval(run, qrels, ["recip_rank"]).summary["recip_rank"] == 1.0
    ev = trec_eval(run, qrels, ["recip_rank", "num_q"], complete=True)
    assert ev.summary == {"recip_rank": 0.5, "num_q": 2.0}
    assert ev.qids.tolist() == [1, 2]


def test_errors_name_the_problem():
    qrels = Qrels.from_arrays([1], ["a"], [1])
    with pytest.raises(DataError, match="duplicate document a for query 1"):
        trec_eval(Run.from_arrays([1, 1], ["a", "a"], [1.0, 0.5]), qrels, ["map"])
    with pytest.raises(DataError, match="duplicate judgement"):
        trec_eval(Run.from_arrays([1], ["a"], [1.0]), Qrels.from_arrays([1, 1], ["a", "a"], [1, 0]), ["map"])
    with pytest.raises(DataError, match="no queries with both"):
        trec_eval(Run.from_arrays([7], ["a"], [1.0]), qrels, ["map"])
    with pytest.raises(ValueError, match="unknown measure 'mrr'"):
        trec_eval(Run.from_arrays([1], ["a"], [1.0]), qrels, ["mrr"])
    with pytest.raises(DataError, match="NaN"):
        Run.from_arrays([1], ["a"], [float("nan")])


# ----------------------------------------------------------------------------- MRR@10 (msmarco_eval)
QRELS = Qrels.from_arrays([1, 2, 3, 4], [10, 20, 30, 40], [1, 1, 1, 1])


def _run(rows: list[tuple[int, int, int]]) -> Run:
    q, d, r = zip(*rows, strict=True)
    return Run.from_arrays(q, d, [0.0] * len(q), r)


def test_mrr_hand_cases():
    rows = [(1, 10, 1)]  # q1: relevant at rank 1 -> 1
    rows += [(2, 21, 1), (2, 22, 2), (2, 20, 3)]  # q2: rank 3 -> 1/3
    rows += [(3, 31 + i, i + 1) for i in range(10)] + [(3, 30, 11)]  # q3: rank 11 -> 0
    rows += [(9, 90, 1)]  # q9: not judged -> ignored; q4 missing from the run -> 0
    res = msmarco_mrr(_run(rows), QRELS)
    assert res.mrr == pytest.approx((1 + 1 / 3) / 4)
    assert res.per_query == {1: 1.0, 2: pytest.approx(1 / 3), 3: 0.0, 4: 0.0}
    assert (res.queries_ranked, res.queries_judged) == (4, 4)


def test_mrr_uses_rank_column_not_scores_and_first_relevant():
    run = Run.from_arrays([1, 1, 1], [99, 10, 11], [9.0, 1.0, 5.0], [3, 2, 1])
    qrels = Qrels.from_arrays([1, 1], [10, 11], [1, 1])
    assert msmarco_mrr(run, qrels).mrr == 1.0  # pid 11 has rank 1


def test_mrr_threshold_for_trec_dl():
    run = _run([(1, 10, 1), (1, 11, 2)])
    qrels = Qrels.from_arrays([1, 1], [10, 11], [1, 2])
    assert msmarco_mrr(run, qrels, min_rel=2).mrr == 0.5
    assert msmarco_mrr(run, qrels, min_rel=1).mrr == 1.0


def test_mrr_errors():
    with pytest.raises(DataError, match="document 10 twice"):
        msmarco_mrr(_run([(1, 10, 1), (1, 10, 2)]), QRELS)
    with pytest.raises(DataError, match="rank 1 twice"):
        msmarco_mrr(_run([(1, 10, 1), (1, 11, 1)]), QRELS)
    with pytest.raises(DataError, match="no query of the run is in the qrels"):
        msmarco_mrr(_run([(8, 10, 1)]), QRELS)
    with pytest.raises(DataError, match="below 1"):
        msmarco_mrr(_run([(1, 10, 0)]), QRELS)
