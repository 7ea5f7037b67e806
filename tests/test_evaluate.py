"""The evaluate stage: metrics JSON, plot data, report, skipped systems, determinism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks.config import Evaluate, compose
from tasks.evaluate import main, negative_overlap, report_markdown, run
from tests._evaluate_helpers import make_project


def _run(paths: dict[str, Path], systems=("dense-a", "dense-b")) -> dict:
    return run(
        runs_dir=paths["runs"],
        qrels={"dev": paths["qrels_dev"], "dl19": paths["qrels_dl19"]},
        negatives_dir=paths["negatives"],
        scores_file=paths["scores"],
        hard_negatives=paths["hard_negatives"],
        metrics_dir=paths["metrics"],
        report_dir=paths["report"],
        params=Evaluate(recall_cutoffs=[1, 2, 10], curve_cutoffs=[1, 5, 10], score_bins=4),
        systems=list(systems),
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_metrics_per_system_and_run(tmp_path):
    paths = make_project(tmp_path)
    metrics = _run(paths)
    assert metrics == json.loads((paths["metrics"] / "retrieval.json").read_text())
    assert list(metrics) == ["bm25", "dense-a", "dense-b", "cross-encoder"]
    bm25 = metrics["bm25"]
    # dev: q1 rank 1, q2 rank 3, q3 rank 11, q4..q6 missing; divided by the 6 judged queries.
    assert bm25["dev"]["full"]["mrr@10"] == pytest.approx((1 + 1 / 3) / 6)
    assert bm25["dev"]["full"]["recall@1"] == pytest.approx(1 / 6)
    assert bm25["dev"]["full"]["recall@10"] == pytest.approx(2 / 6)
    assert (bm25["dev"]["full"]["queries"], bm25["dev"]["full"]["queries_in_run"]) == (6, 3)
    assert set(bm25) == {"dev", "dl19"} and set(bm25["dl19"]) == {"full"}
    # DL19 q101: run 3(rel 1), 1(3), 9(-), 2(2); rel >= 2 for recall/MRR -> first at rank 2.
    dl = bm25["dl19"]["full"]
    assert dl["mrr@10"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert dl["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    import math

    dcg101 = 1 / math.log2(2) + 3 / math.log2(3) + 2 / math.log2(5)
    idcg101 = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    dcg102, idcg102 = 1 + 2 / math.log2(3), 2 + 1 / math.log2(3)
    assert dl["ndcg@10"] == pytest.approx((dcg101 / idcg101 + dcg102 / idcg102) / 2)
    assert metrics["dense-a"]["dev"]["full"]["mrr@10"] == pytest.approx(0.5)
    assert metrics["dense-a"]["dev"]["rerank"]["mrr@10"] == pytest.approx(1 / 6)
    assert metrics["dense-b"] == {"skipped": "no public weights (set systems.dense-b.model)"}
    assert set(metrics["cross-encoder"]) == {"dl19"}


def test_plots_report_and_determinism(tmp_path):
    paths = make_project(tmp_path)
    _run(paths)
    plots = paths["metrics"] / "plots"
    curve = (plots / "recall" / "dev.full" / "bm25.csv").read_text().splitlines()
    assert curve == ["k,recall", "1,0.166667", "2,0.166667", "5,0.333333", "10,0.333333"]
    overlap = (plots / "negatives_overlap.csv").read_text().splitlines()
    assert overlap[0] == "system_a,system_b,jaccard,queries"
    # q1: {7,8,9} vs {7,5} -> 1/4; q2: {22,23} vs {22} -> 1/2; q3 only in dense-a.
    assert "bm25,dense-a,0.375,2" in overlap and "dense-a,bm25,0.375,2" in overlap
    ce = (plots / "ce_scores.csv").read_text().splitlines()
    assert ce[0] == "bin_left,bin_right,positives,negatives" and len(ce) == 5
    report = (paths["report"] / "report.md").read_text()
    assert "| dense-b | skipped | | | |" in report
    assert "no public weights" in report
    for png in ("recall_dev_full.png", "recall_dl19_rerank.png", "negatives_overlap.png", "ce_scores.png"):
        assert (paths["report"] / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
    assert "<table>" in (paths["report"] / "report.html").read_text()
    first = _tree(paths["metrics"]) | _tree(paths["report"])
    _run(paths)
    assert _tree(paths["metrics"]) | _tree(paths["report"]) == first


def test_missing_scores_and_runs_are_tolerated(tmp_path):
    paths = make_project(tmp_path, with_scores=False)
    (paths["runs"] / "bm25" / "dl19.full.trec").unlink()
    metrics = _run(paths, systems=("dense-a", "dense-b", "dense-c"))
    assert set(metrics["bm25"]) == {"dev"}
    assert metrics["dense-c"] == {"skipped": "no run files found"}
    report = (paths["report"] / "report.md").read_text()
    assert "cross-encoder score distributions skipped: ce-scores.parquet not found" in report
    ce = paths["metrics"] / "plots" / "ce_scores.csv"
    assert ce.read_text() == "bin_left,bin_right,positives,negatives\n"  # header only: DVC needs the out


def test_report_markdown_is_a_table():
    md = report_markdown(
        {
            "x": {"dev": {"full": {"mrr@10": 0.3313, "recall@10": 0.5}}},
            "bm25": {"dl19": {"rerank": {"ndcg@10": 0.4546, "recall@10": 0.25}}},
            "y": {"skipped": "no weights"},
        }
    )
    lines = md.splitlines()
    assert lines[2] == "| bm25 | – | – | – | 45.46 |"
    assert lines[3] == "| x | 33.13 | – | – | – |"
    assert "| x | dev full | 50.00 |" in md and "- **y**: skipped (no weights)" in md


def test_negative_overlap_diagonal(tmp_path):
    paths = make_project(tmp_path)
    rows = negative_overlap(paths["negatives"], ["bm25", "dense-a", "dense-b"])
    diag = {r["system_a"]: r["jaccard"] for r in rows if r["system_a"] == r["system_b"]}
    assert diag == {"bm25": 1.0, "dense-a": 1.0}


def test_cli_run_reads_every_path_from_params(tmp_path):
    paths = make_project(tmp_path)
    params = yaml.safe_load(compose("sample"))
    params["paths"].update(
        runs=str(paths["runs"]), negatives=str(paths["negatives"]), scores=str(paths["scores"].parent),
        out=str(paths["hard_negatives"].parent), metrics=str(paths["metrics"]), report=str(paths["report"]),
        raw=str(paths["qrels_dev"].parent),
    )  # fmt: skip
    params["inputs"].update(qrels_dev="qrels.dev.small.tsv", qrels_dl19="2019qrels-pass.txt")
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    assert main(["run", "--params", str(pfile)]) == 0
    metrics = json.loads((paths["metrics"] / "retrieval.json").read_text())
    assert "dev" in metrics["bm25"] and (paths["report"] / "report.html").exists()
    assert main(["run", "--params", str(tmp_path / "nope.yaml")]) == 2
