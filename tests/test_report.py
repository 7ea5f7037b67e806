"""What the reports tell people: smoke models named at the top, re-ranking figures labelled with
their candidate list, tables that fit a window, figures rounded (evaluation report, the
pipeline-summary and refresh artifacts, the denoising comparison)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from flows.pipeline import evaluation_markdown, human_seconds, smoke_markdown, summary_markdown
from flows.refresh import readable_metrics_diff
from tasks.config import Config, Denoise, compose
from tasks.denoise import run as denoise
from tasks.evaluate import run as evaluate
from tasks.io import write_json
from tasks.records import write_hard_negatives
from tasks.remote import metrics_markdown
from tasks.report import ReportLabels, denoise_markdown, report_labels, report_markdown, run_label
from tests._evaluate_helpers import make_project
from tests._score_helpers import make_records, synthetic_scores
from tests.test_evaluate import _run

LONG = "co-condenser-margin_mse-sym_mnrl-mean-v1"  # the longest system name of the msmarco profile
WIDTH = 100  # characters of Markdown per table row
LABELS = ReportLabels(
    candidates={"dev": "BM25 top-1000 (this run)", "dl19": "official top-1000 (all candidates re-ranked)"},
    ce_candidates={"dev": "BM25 top-100 (this run)", "dl19": "official top-1000 (all candidates re-ranked)"},
    smoke=("smoke-bi", "cross-encoder"),
    cross_encoder="smoke-ce",
)
# one metric with 16 digits in every cell: what the tables must round
FIG = {
    "mrr@10": 0.3313456789012345,
    "ndcg@10": 0.6902123456789012,
    "recall@10": 0.5,
    "recall@1000": 0.987654321,
}
METRICS: dict[str, Any] = {
    "bm25": {"dev": {"full": FIG}, "dl19": {"full": FIG}},
    LONG: {"dev": {"full": FIG, "rerank": FIG}, "dl19": {"full": FIG, "rerank": FIG}},
    "smoke-bi": {"dev": {"full": FIG, "rerank": FIG}},
    "cross-encoder": {"dev": {"rerank": FIG}, "dl19": {"rerank": FIG}},
    "no-weights": {"skipped": "no public weights (set systems.no-weights.model)"},
}


def _sample_cfg() -> Config:
    return Config.model_validate(yaml.safe_load(compose("sample")))


def _table_rows(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|")]


def _floats(md: str) -> list[str]:
    return re.findall(r"\d+\.\d+", md)


def test_report_labels_of_the_sample_name_its_smoke_models_and_candidates() -> None:
    cfg = _sample_cfg()
    labels = report_labels(cfg)
    assert set(labels.smoke) == {*cfg.systems, "cross-encoder"} and cfg.cross_encoder.smoke
    assert labels.cross_encoder == cfg.cross_encoder.name
    assert labels.candidates == {s: cfg.candidates_label(s) for s in ("dev", "dl19")}
    depth = cfg.evaluate.ce_rerank_depth
    assert labels.ce_candidates == {s: cfg.candidates_label(s, depth) for s in ("dev", "dl19")}
    msmarco = report_labels(Config.model_validate(yaml.safe_load(compose("msmarco"))))
    assert msmarco.smoke == ()  # real checkpoints: no notice
    assert report_markdown(METRICS, msmarco).startswith("| System |")


def test_report_markdown_says_smoke_at_the_top_labels_candidates_and_rounds() -> None:
    md = report_markdown(METRICS, LABELS)
    head = md.split("| System |")[0]
    assert head.startswith("> **Smoke models: their figures mean nothing about retrieval quality.**")
    flat = " ".join(line.lstrip("> ") for line in head.splitlines())
    assert "`smoke-bi` and the cross-encoder (`smoke-ce`) are tiny random models" in flat
    assert "only prove that the pipeline runs" in flat and "denoising counts mean nothing" in flat
    assert f"| {LONG} | 33.13 | 33.13 | 69.02 | 69.02 |" in md  # x 100, 2 decimals
    assert "| smoke-bi (smoke) | 33.13 | 33.13 | – | – |" in md
    assert "| cross-encoder (smoke) | – | 33.13 | – | 69.02 |" in md
    assert "| bm25 | 33.13 | – | 69.02 | – |" in md  # BM25 is no smoke model
    assert "| no-weights | skipped | | | |" in md
    legend = [line for line in md.splitlines() if "re-rank:" in line]
    assert legend == [
        "- dev re-rank: bi-encoders re-rank BM25 top-1000 (this run); the cross-encoder re-ranks "
        "BM25 top-100 (this run)",
        "- DL19 re-rank: each system re-ranks official top-1000 (all candidates re-ranked)",
    ]
    assert f"| {LONG} | DL19 re-rank | 50.00 | 98.77 |" in md
    assert all(len(row) <= WIDTH for row in _table_rows(md)), max(_table_rows(md), key=len)
    assert all(len(f.split(".")[1]) == 2 for f in _floats(md.split("Figures x 100")[0]))
    assert not report_markdown(METRICS, LABELS, notice=False).startswith(">")


def test_run_labels_name_the_candidate_list() -> None:
    assert run_label("dev.full", LABELS) == "MS MARCO dev, full retrieval"
    assert run_label("dev.rerank", LABELS) == "MS MARCO dev, re-ranking BM25 top-1000 (this run)"
    assert (
        run_label("dev.rerank", LABELS, "cross-encoder") == "MS MARCO dev, re-ranking BM25 top-100 (this run)"
    )
    dl19 = "TREC DL 2019, re-ranking official top-1000 (all candidates re-ranked)"
    assert run_label("dl19.rerank", LABELS) == dl19
    assert run_label("dl19.rerank", ReportLabels()) == "TREC DL 2019, re-ranking"  # no config: no claim


def test_the_written_report_carries_notice_labels_and_smoke_marks(tmp_path: Path) -> None:
    paths = make_project(tmp_path)
    labels = ReportLabels(
        candidates=LABELS.candidates, ce_candidates=LABELS.ce_candidates, smoke=("dense-a", "cross-encoder")
    )
    from tasks.config import Evaluate

    evaluate(
        runs_dir=paths["runs"],
        qrels={"dev": paths["qrels_dev"], "dl19": paths["qrels_dl19"]},
        negatives_dir=paths["negatives"],
        scores_file=paths["scores"],
        hard_negatives=paths["hard_negatives"],
        metrics_dir=paths["metrics"],
        report_dir=paths["report"],
        params=Evaluate(recall_cutoffs=[1, 2, 10], curve_cutoffs=[1, 5, 10], score_bins=4),
        systems=["dense-a", "dense-b"],
        labels=labels,
    )
    report = (paths["report"] / "report.md").read_text()
    assert report.startswith("# Evaluation\n\n> **Smoke models:")
    assert "## Recall@k: MS MARCO dev, re-ranking BM25 top-1000 (this run)" in report
    assert "## Recall@k: TREC DL 2019, re-ranking official top-1000 (all candidates re-ranked)" in report
    assert "| dense-a (smoke) |" in report and "| bm25 |" in report
    html = (paths["report"] / "report.html").read_text()
    assert "<blockquote>" in html and "Smoke models" in html
    # without labels the figures differ (titles, legend): the labels reach the PNGs
    plain = tmp_path / "plain"
    _run(paths | {"report": plain, "metrics": tmp_path / "plain-metrics"})
    assert (plain / "recall_dl19_rerank.png").read_bytes() != (
        paths["report"] / "recall_dl19_rerank.png"
    ).read_bytes()
    assert (plain / "recall_dev_full.png").read_bytes() != (
        paths["report"] / "recall_dev_full.png"
    ).read_bytes()


def _denoise_json(tmp_path: Path) -> dict[str, Any]:
    records = make_records(30, 400)
    neg, scores = tmp_path / "hn.jsonl.gz", tmp_path / "ce.parquet"
    write_hard_negatives(neg, records)
    synthetic_scores(scores, records)
    return denoise(neg, scores, tmp_path / "out.jsonl.gz", tmp_path / "denoise.json", Denoise(margin=1.0))


def test_denoise_markdown_compares_both_rules_on_the_same_data(tmp_path: Path) -> None:
    metrics = _denoise_json(tmp_path)
    md = denoise_markdown(metrics)
    rows = _table_rows(md)
    assert rows[0] == "| System | candidates | absolute, margin 1 (used) | relative, 95% |"
    for name, c in metrics["systems"].items():
        rel = metrics["by_rule"]["relative"]["systems"][name]
        row = (
            f"| {name} | {c['candidates']:,} | {c['dropped']:,} ({100 * c['dropped_share']:.1f}%) | "
            f"{rel['dropped']:,} ({100 * rel['dropped_share']:.1f}%) |"
        )
        assert row in rows
    assert rows[-1].startswith(f"| **total** | {metrics['total']['candidates']:,} | ")
    assert all(len(row) <= WIDTH for row in rows)
    # a denoise.json of before by_rule: the rule used only
    old = {k: v for k, v in metrics.items() if k != "by_rule"}
    assert _table_rows(denoise_markdown(old))[0] == "| System | candidates | absolute, margin 1 (used) |"


def test_summary_fits_a_window_rounds_and_puts_the_notice_on_top(tmp_path: Path) -> None:
    results = [
        {"stage": f"encode@{LONG}", "ran": True, "status": "ran", "changed": True, "seconds": 4321.123456789,
         "peak_rss": 3.5 * 2**30},
        {"stage": f"mine@{LONG}", "ran": False, "status": "restored", "changed": True, "seconds": 2.04567891,
         "peak_rss": 123456789},
        {"stage": "merge", "ran": False, "status": "up to date", "changed": False, "seconds": 0.0},
        {"stage": "score", "ran": False, "status": "up to date", "changed": False, "seconds": 1.96789},
    ]  # fmt: skip
    notice = "> **Smoke models: x**\n"
    evaluation = "## Evaluation\n\n" + report_markdown(METRICS, LABELS, notice=False)
    md = summary_markdown(results, "sample", evaluation, notice)
    lines = md.splitlines()
    assert lines[:3] == ["# hardnegs pipeline: profile `sample`", "", notice.strip()]
    assert lines[4] == "| stage | status | changed | time | peak RSS |"
    assert f"| encode@{LONG} | ran | yes | 72.0 min | 3.5 GiB |" in lines
    assert f"| mine@{LONG} | restored (run cache) | yes | 2.0 s | 118 MiB |" in lines
    assert "| merge | up to date | no | – | – |" in lines  # no dvc call: no time to show
    assert "| score | up to date | no | 2.0 s | – |" in lines
    assert all(len(row) <= WIDTH for row in _table_rows(md)), max(_table_rows(md), key=len)
    assert max(len(f.split(".")[1]) for f in _floats(md)) == 2
    assert [human_seconds(s) for s in (0.04, 99.94, 100, 5999, 6000, 86400)] == [
        "0.0 s", "99.9 s", "1.7 min", "100.0 min", "1.7 h", "24.0 h",
    ]  # fmt: skip


def test_summary_of_a_sample_checkout_reads_the_metrics_files(tmp_path: Path) -> None:
    cfg = _sample_cfg()
    params = tmp_path / "params.yaml"
    params.write_text(compose("sample"))
    assert "`smoke-bi-cls-dot`" in smoke_markdown(params).replace("\n> ", " ")
    assert evaluation_markdown(tmp_path, params) == ""  # nothing evaluated yet
    metrics_dir = tmp_path / cfg.paths.metrics
    write_json(metrics_dir / "retrieval.json", METRICS)
    denoised = _denoise_json(tmp_path)
    write_json(metrics_dir / "denoise.json", denoised)
    md = evaluation_markdown(tmp_path, params)
    assert md.startswith("## Evaluation\n\n| System |")  # the notice goes on top of the summary
    assert "\n## Denoising\n" in md and "| System | candidates | absolute, margin 1 (used) |" in md
    assert "- DL19 re-rank: each system re-ranks " + cfg.candidates_label("dl19") in md


def test_refresh_artifact_rounds_the_metrics_diff() -> None:
    rows = [
        {"path": "m/retrieval.json", "metric": "bm25.dev.full.mrr@10", "old": 0.18734567890123456,
         "new": 0.19012345678901234, "change": 0.19012345678901234 - 0.18734567890123456},
        {"path": "m/denoise.json", "metric": "total.dropped", "old": 12, "new": 15, "change": 3},
        {"path": "m/x.json", "metric": "rows", "old": 123456.789, "new": None, "change": None},
    ]  # fmt: skip
    md = metrics_markdown(readable_metrics_diff(rows))
    assert "| `m/retrieval.json` | bm25.dev.full.mrr@10 | 0.1873 | 0.1901 | +0.00278 |" in md
    assert "| `m/denoise.json` | total.dropped | 12 | 15 | +3 |" in md
    assert "| `m/x.json` | rows | 123,457 | None | - |" in md
    assert rows[0]["old"] == 0.18734567890123456  # the rows themselves are not changed
