"""Stage parity (tasks.parity): two runs' files with known differences give known figures.

Run A and run B are written with the project's writers (``write_hard_negatives``, as merge
does; ``write_scores_pickle``, as score does). B differs from A in one system (``dense-2``)
by a known amount, misses one of A's queries and has one of its own; a published-style
pickle with numpy float32 scores and an out-of-order published-style JSONL file stand for
the files users download.
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from tasks import parity
from tasks.config import ROOT
from tasks.io import DataError
from tasks.records import HardNegatives, scores_table, write_hard_negatives, write_table
from tasks.scores_pickle import write_scores_pickle

POS = {1: [1001], 2: [1002], 3: [1003], 4: [1004], 5: [1005], 7: [1007]}
BM25 = {q: [q * 100 + i for i in range(1, 6)] for q in POS}
DENSE1 = {q: [q * 100 + i for i in range(3, 8)] for q in POS}
DENSE1[2] = [201, 1002, 203]  # the query's positive inside its negatives, on both sides
DENSE2_A = {q: [q * 100 + 50 + i for i in range(4)] for q in POS}
DENSE2_B = {
    1: [151, 152, 153, 9999],  # one of 4 replaced: overlap 3/4, Jaccard 3/5
    2: list(DENSE2_A[2]),  # unchanged: 1, 1
    3: [1003, 9001, 9002, 9003],  # all 4 replaced (one by the positive): 0, 0
    # qid 4: no dense-2 list in B (only_a); qid 5 is not in B; qid 7 not in A
    7: [751, 752],
}


def _records(qids: list[int], dense2: dict[int, list[int]]) -> list[HardNegatives]:
    out = []
    for q in qids:
        neg = {"bm25": BM25[q], "dense-1": DENSE1[q]}
        if q in dense2:
            neg["dense-2"] = dense2[q]
        out.append(HardNegatives(q, POS[q], neg))
    return out


def _pairs(records: list[HardNegatives]) -> tuple[np.ndarray, np.ndarray]:
    """(qid, pid) pairs of positives and negatives, sorted and unique, as the score stage takes."""
    pairs = sorted({(r.qid, p) for r in records for p in [*r.pos, *(x for v in r.neg.values() for x in v)]})
    arr = np.array(pairs, dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def _scores(qids: np.ndarray, pids: np.ndarray) -> np.ndarray:
    """Scores exactly representable in float32 (multiples of 1/8), with ties."""
    return ((qids * 7 + pids * 3) % 41 - 20).astype(np.float64) / 8


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Path]:
    a_recs = _records([1, 2, 3, 4, 5], DENSE2_A)
    b_recs = _records([1, 2, 3, 4, 7], DENSE2_B)
    paths = {"a_neg": tmp_path / "a" / parity.NEGATIVES_NAME, "b_neg": tmp_path / "b" / parity.NEGATIVES_NAME}
    write_hard_negatives(paths["a_neg"], a_recs)
    write_hard_negatives(paths["b_neg"], b_recs)
    qa, pa = _pairs(a_recs)
    paths["a_pkl"] = tmp_path / "a" / "scores.pkl.gz"
    write_scores_pickle(paths["a_pkl"], qa, pa, _scores(qa, pa))
    paths["a_table_dir"] = tmp_path / "a" / "scores"
    write_table(paths["a_table_dir"] / parity.SCORES_TABLE, scores_table(qa, pa, _scores(qa, pa)))
    return paths


def _side(label: str, paths: dict[str, Path], side: str, scores: bool = False) -> parity.Side:
    return parity.Side(label, paths[f"{side}_neg"], paths[f"{side}_pkl"] if scores else None)


def test_known_differences_give_known_figures(runs, tmp_path):
    doc = parity.run(_side("A", runs, "a"), _side("B", runs, "b"), tmp_path / "out")
    neg = doc["negatives"]
    assert neg["queries"] == {
        "a": 5, "b": 5, "both": 4, "only_a": 1, "only_b": 1,
        "only_a_first": [5], "only_b_first": [7], "positives_differ": 0,
    }  # fmt: skip
    for name in ("bm25", "dense-1"):  # unchanged systems
        s = neg["systems"][name]
        assert (s["mean_overlap@50"], s["mean_jaccard@50"]) == (1.0, 1.0)
        assert (s["queries_compared"], s["identical_lists"], s["only_a"], s["only_b"]) == (4, 4, 0, 0)
    d2 = neg["systems"]["dense-2"]
    assert d2["queries_compared"] == 3 and d2["identical_lists"] == 1
    assert d2["mean_overlap@50"] == round((3 / 4 + 1 + 0) / 3, 6)
    assert d2["mean_jaccard@50"] == round((3 / 5 + 1 + 0) / 3, 6)
    assert (d2["only_a"], d2["only_b"]) == (1, 0)
    # positives inside negatives, per side over all of its queries
    assert neg["systems"]["dense-1"]["a"]["positives_in_negatives"] == 1
    assert neg["systems"]["dense-1"]["b"]["queries_with_positive_in_negatives"] == 1
    assert d2["a"]["positives_in_negatives"] == 0 and d2["b"]["positives_in_negatives"] == 1
    assert neg["systems"]["bm25"]["a"] == {
        "lists": 5, "negatives": 25, "positives_in_negatives": 0, "queries_with_positive_in_negatives": 0,
    }  # fmt: skip
    out = tmp_path / "out"
    assert json.loads((out / "parity.json").read_text()) == doc
    md = (out / "parity.md").read_text()
    assert "0.583" in md and "0.533" in md  # 3 decimals
    assert max(len(line) for line in md.splitlines() if not line.startswith("- ")) <= 100  # paths may not
    assert (out / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlap_takes_the_top_k_and_identical_means_same_order(tmp_path):
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_hard_negatives(a, [HardNegatives(1, [9], {"s": [1, 2, 3, 4, 5]})])
    write_hard_negatives(b, [HardNegatives(1, [9], {"s": [1, 2, 4, 3, 6, 7]})])
    top2 = parity.run(parity.Side("A", a), parity.Side("B", b), tmp_path / "k2", k=2)["negatives"]
    s = top2["systems"]["s"]
    assert (s["mean_overlap@2"], s["mean_jaccard@2"], s["identical_lists"]) == (1.0, 1.0, 1)
    s = parity.run(parity.Side("A", a), parity.Side("B", b), tmp_path / "k50")["negatives"]["systems"]["s"]
    assert s["identical_lists"] == 0
    assert s["mean_overlap@50"] == 0.8  # 4 common / min(5, 6)
    assert s["mean_jaccard@50"] == round(4 / 7, 6)


def test_identical_runs_have_no_difference(runs, tmp_path):
    a = _side("A", runs, "a", scores=True)
    doc = parity.run(a, parity.Side("A again", runs["a_neg"], runs["a_table_dir"]), tmp_path / "out")
    for s in doc["negatives"]["systems"].values():
        assert (s["mean_overlap@50"], s["mean_jaccard@50"]) == (1.0, 1.0)
        assert s["identical_lists"] == s["queries_compared"] == 5
    assert doc["negatives"]["queries"]["only_a"] == doc["negatives"]["queries"]["only_b"] == 0
    sc = doc["scores"]
    assert sc["pairs_a"] == sc["pairs_b"] == sc["pairs_both"] == sc["pairs_equal"] > 0
    assert (sc["pairs_only_a"], sc["pairs_only_b"], sc["max_abs_delta"], sc["mean_abs_delta"]) == (0, 0, 0, 0)
    assert (sc["pearson"], sc["spearman"]) == (1.0, 1.0)
    md = (tmp_path / "out" / "parity.md").read_text()
    assert "| Pearson " in md and "1.0000" in md


def test_published_style_pickle_with_numpy_scalars(runs, tmp_path):
    """B: ``pickle.dump`` of np.float32 scores (as a model's predict leaves them), one score
    changed by 0.5, one pair dropped, one added; checked against scipy on the common pairs."""
    a_recs = _records([1, 2, 3, 4, 5], DENSE2_A)
    qa, pa = _pairs(a_recs)
    sa = _scores(qa, pa)
    nested: dict[int, dict[int, np.float32]] = {}
    for q, p, s in zip(qa.tolist(), pa.tolist(), sa.tolist(), strict=True):
        nested.setdefault(q, {})[p] = np.float32(s)
    q0, p0 = int(qa[0]), int(pa[0])
    nested[q0][p0] = np.float32(sa[0] + 0.5)
    del nested[int(qa[-1])][int(pa[-1])]
    nested[99] = {1: np.float32(2.0)}
    pkl = tmp_path / "published-scores.pkl.gz"
    with gzip.open(pkl, "wb") as fh:
        pickle.dump(nested, fh, protocol=4)
    doc = parity.run(
        parity.Side("A", None, runs["a_pkl"]), parity.Side("published", None, pkl), tmp_path / "out"
    )
    sc = doc["scores"]
    n = len(qa) - 1
    assert (sc["pairs_a"], sc["pairs_b"], sc["pairs_both"]) == (len(qa), len(qa), n)
    assert (sc["pairs_only_a"], sc["pairs_only_b"], sc["queries_b"], sc["queries_both"]) == (1, 1, 6, 5)
    assert sc["max_abs_delta"] == 0.5 and sc["mean_abs_delta"] == pytest.approx(0.5 / n, rel=1e-5)
    assert sc["pairs_equal"] == n - 1
    x, y = sa[:-1], sa[:-1].copy()
    y[0] += 0.5
    assert sc["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-6)
    assert sc["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-6)
    assert "negatives not compared" in " ".join(doc["notes"])


def test_average_ranks_match_scipy():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 20, 1000).astype(np.float64)  # many ties
    np.testing.assert_array_equal(parity.average_ranks(x), stats.rankdata(x))


def _write_unordered(path: Path, records: list[HardNegatives]) -> None:
    """A published-style file in another order (this project's writer refuses that)."""
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps({"qid": r.qid, "pos": r.pos, "neg": r.neg}) + "\n")


def test_a_file_out_of_qid_order_gives_the_same_report(runs, tmp_path):
    ordered = parity.run(_side("A", runs, "a"), _side("B", runs, "b"), tmp_path / "ordered")
    shuffled = tmp_path / "published.jsonl.gz"
    _write_unordered(shuffled, _records([7, 3, 1, 4, 2], DENSE2_B))
    doc = parity.run(
        _side("A", runs, "a"), parity.Side("B", shuffled), tmp_path / "buckets", bucket_bytes=100
    )  # several buckets on disk
    assert doc["negatives"] == ordered["negatives"]
    assert not list(tmp_path.glob(".parity.*.scratch"))  # scratch removed

    dup = tmp_path / "dup.jsonl.gz"
    _write_unordered(dup, _records([2, 1, 2], DENSE2_B))
    with pytest.raises(DataError, match=r"dup\.jsonl\.gz: qid 2 has more than one line"):
        parity.run(_side("A", runs, "a"), parity.Side("B", dup), tmp_path / "dup", bucket_bytes=100)


def test_same_inputs_give_the_same_bytes(runs, tmp_path):
    for name in ("one", "two"):
        parity.run(_side("A", runs, "a", True), _side("B", runs, "a", True), tmp_path / name)
    for f in ("parity.json", "parity.md", "parity.png"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_cli_outputs_and_errors_name_the_file(runs, tmp_path, caplog):
    out = tmp_path / "cli"
    argv = ["--a-negatives", str(runs["a_neg"]), "--b-negatives", str(runs["b_neg"]),
            "--a-scores", str(runs["a_table_dir"]), "--b-scores", str(runs["a_pkl"]),
            "--out", str(out), "--label-a", "run 1", "--label-b", "run 2"]  # fmt: skip
    assert parity.main(argv) == 0
    doc = json.loads((out / "parity.json").read_text())
    assert doc["a"]["label"] == "run 1" and doc["scores"]["pairs_equal"] == doc["scores"]["pairs_a"]
    missing = tmp_path / "nope.jsonl.gz"
    assert parity.main([*argv[:2], "--b-negatives", str(missing), "--out", str(out)]) == 1
    assert str(missing) in caplog.text
    assert parity.main([*argv[:2], "--out", str(out)]) == 1  # negatives for one side only
    assert "for both sides" in caplog.text
    with pytest.raises(SystemExit):
        parity.main(argv[:4])  # no --out


def _params(tmp_path: Path, parity_section: dict | None) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["paths"] = {k: str(tmp_path / "data" / k) for k in data["paths"]}
    if parity_section is not None:
        data["parity"] = parity_section
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_stage_without_reference_writes_a_note(tmp_path):
    assert parity.main(["--params", str(_params(tmp_path, None))]) == 0
    metrics = tmp_path / "data" / "metrics"
    assert "parity.reference_negatives" in json.loads((metrics / "parity.json").read_text())["skipped"]
    assert "Skipped" in (metrics / "parity" / "parity.md").read_text()
    assert "skipped" in json.loads((metrics / "parity" / "parity.json").read_text())


def test_stage_compares_this_run_with_the_reference(runs, tmp_path):
    params = _params(
        tmp_path,
        {"reference_negatives": str(runs["b_neg"]), "reference_scores": str(runs["a_pkl"]),
         "reference_label": "published", "k": 50},
    )  # fmt: skip
    data = tmp_path / "data"
    (data / "out").mkdir(parents=True)
    (data / "out" / parity.NEGATIVES_NAME).write_bytes(runs["a_neg"].read_bytes())
    (data / "scores").mkdir()
    table = runs["a_table_dir"] / parity.SCORES_TABLE
    (data / "scores" / parity.SCORES_TABLE).write_bytes(table.read_bytes())
    assert parity.main(["--params", str(params)]) == 0
    doc = json.loads((data / "metrics" / "parity" / "parity.json").read_text())
    assert doc["b"]["label"] == "published" and doc["a"]["label"] == "this run (sample)"
    assert doc["a"]["negatives"]["path"] == str(data / "out" / parity.NEGATIVES_NAME)
    metrics = json.loads((data / "metrics" / "parity.json").read_text())
    assert metrics == parity.metrics_of(doc) and set(metrics) == {"negatives", "scores"}
    assert "only_a_first" not in metrics["negatives"]["queries"]
    assert metrics["negatives"]["systems"]["dense-2"]["mean_overlap@50"] < 1.0
    assert metrics["negatives"]["systems"]["bm25"]["mean_overlap@50"] == 1.0
    assert metrics["scores"]["max_abs_delta"] == 0
    assert {p.name for p in (data / "metrics" / "parity").iterdir()} == {
        "parity.json",
        "parity.md",
        "parity.png",
    }


def test_stage_exit_codes_name_the_file(tmp_path, caplog):
    missing = tmp_path / "nope.yaml"
    assert parity.main(["--params", str(missing)]) == 2
    assert f"{missing}: no such params file" in caplog.text
    ref = tmp_path / "published.jsonl.gz"
    params = _params(tmp_path, {"reference_negatives": str(ref)})
    assert parity.main(["--params", str(params)]) == 1  # neither this run's file nor the reference
    assert "no such hard-negatives file" in caplog.text
