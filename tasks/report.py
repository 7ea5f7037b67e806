"""The evaluation report: Markdown table (also the Prefect artifact), HTML page and PNG figures.

Figures are drawn with matplotlib's Agg backend and saved without metadata, so the same
figures give the same bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasks.io import atomic_dir  # noqa: E402

log = logging.getLogger(__name__)

RUN_LABELS = {
    "dev.full": "MS MARCO dev, full retrieval",
    "dev.rerank": "MS MARCO dev, re-ranking BM25 top-k",
    "dl19.full": "TREC DL 2019, full retrieval",
    "dl19.rerank": "TREC DL 2019, re-ranking BM25 top-k",
}
PNG_META = {"Software": None}
METHOD = [
    "How the figures are computed:",
    "",
    "- MRR@10 (dev): MS MARCO's `msmarco_eval.py` rule: the run's rank order, 0 for a query with no "
    "relevant passage in its top 10 or missing from the run, divided by the number of judged queries.",
    "- NDCG@10 (DL19): `trec_eval -c -m ndcg_cut.10` (graded gains 0..3, ties by docno descending).",
    "- Recall@k: `trec_eval -c -m recall.k`, relevant = rel >= 1 on dev and rel >= 2 on DL19 "
    "(TREC DL's binary threshold, also used for MRR@10 on DL19).",
]


def _order(metrics: dict[str, Any]) -> list[str]:
    """bm25 first, the cross-encoder last, the rest by name (retrieval.json is key-sorted)."""
    rest = sorted(n for n in metrics if n not in ("bm25", "cross-encoder"))
    return [n for n in ("bm25",) if n in metrics] + rest + [n for n in ("cross-encoder",) if n in metrics]


def _cell(entry: dict[str, Any], split: str, mode: str, key: str) -> str:
    value = entry.get(split, {}).get(mode, {}).get(key)
    return "–" if value is None else f"{100 * value:.2f}"


def report_markdown(metrics: dict[str, Any]) -> str:
    """The evaluation tables (values x 100) of a ``retrieval.json`` dict, as Markdown."""
    names = _order(metrics)
    lines = [
        "| System | MRR@10 dev (full) | MRR@10 dev (re-rank) "
        "| NDCG@10 DL19 (full) | NDCG@10 DL19 (re-rank) |",
        "|---|---:|---:|---:|---:|",
    ]
    skipped = []
    for name in names:
        entry = metrics[name]
        if "skipped" in entry:
            skipped.append(f"- **{name}**: skipped ({entry['skipped']})")
            lines.append(f"| {name} | skipped | | | |")
            continue
        cells = [
            _cell(entry, "dev", "full", "mrr@10"),
            _cell(entry, "dev", "rerank", "mrr@10"),
            _cell(entry, "dl19", "full", "ndcg@10"),
            _cell(entry, "dl19", "rerank", "ndcg@10"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ks = sorted(
        {
            int(key.split("@")[1])
            for entry in metrics.values()
            for split in entry.values()
            if isinstance(split, dict)
            for mode in split.values()
            for key in mode
            if key.startswith("recall@")
        }
    )
    if ks:
        lines += ["", "Recall@k (rel >= 1 on dev, rel >= 2 on DL19), x 100:", ""]
        lines.append("| System | Run | " + " | ".join(f"R@{k}" for k in ks) + " |")
        lines.append("|---|---|" + "---:|" * len(ks))
        for name in names:
            entry = metrics[name]
            for split in ("dev", "dl19"):
                for mode in ("full", "rerank"):
                    if mode in entry.get(split, {}):
                        cells = [_cell(entry, split, mode, f"recall@{k}") for k in ks]
                        lines.append(f"| {name} | {split} {mode} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped systems:", "", *skipped]
    return "\n".join(lines) + "\n"


def _save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=100, metadata=PNG_META)
    plt.close(fig)


def _recall_figure(run_key: str, per_system: dict[str, list[tuple[int, float]]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in sorted(per_system):
        ks, vs = zip(*per_system[name], strict=True)
        ax.plot(ks, vs, marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(RUN_LABELS.get(run_key, run_key))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _overlap_figure(rows: list[dict[str, Any]], path: Path) -> None:
    names = list(dict.fromkeys(r["system_a"] for r in rows))
    mat = np.zeros((len(names), len(names)))
    for r in rows:
        mat[names.index(r["system_a"]), names.index(r["system_b"])] = r["jaccard"]
    size = 2.5 + 0.5 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{mat[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if mat[i, j] < 0.6 else "black",
            )
    ax.set_title("Mined negatives: mean per-query Jaccard", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def _score_figure(hist: list[dict[str, float]], path: Path) -> None:
    left = np.array([h["bin_left"] for h in hist])
    width = np.array([h["bin_right"] - h["bin_left"] for h in hist])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.bar(left, [h["positives"] for h in hist], width=width, align="edge", alpha=0.6, label="positives")
    ax.bar(left, [h["negatives"] for h in hist], width=width, align="edge", alpha=0.6, label="negatives")
    ax.set_xlabel("cross-encoder score")
    ax.set_ylabel("fraction of pairs")
    ax.set_title("Cross-encoder scores: positives vs mined negatives")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def _html(markdown_text: str) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}"
        "img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>hardnegs evaluation</title>'
        f"<style>{style}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(
    report_dir: Path,
    metrics: dict[str, Any],
    curves: dict[str, dict[str, list[tuple[int, float]]]],
    overlap: list[dict[str, Any]],
    hist: list[dict[str, float]],
    notes: list[str],
) -> None:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``report_dir`` (atomically)."""
    parts = ["# Evaluation", "", report_markdown(metrics), *METHOD, ""]
    with atomic_dir(report_dir) as stage:
        for run_key in sorted(curves):
            png = f"recall_{run_key.replace('.', '_')}.png"
            _recall_figure(run_key, curves[run_key], stage / png)
            parts += [
                f"## Recall@k: {RUN_LABELS.get(run_key, run_key)}",
                "",
                f"![recall@k {run_key}]({png})",
                "",
            ]
        if overlap:
            _overlap_figure(overlap, stage / "negatives_overlap.png")
            parts += ["## Overlap of mined negatives", "", "![negative overlap](negatives_overlap.png)", ""]
        if hist:
            _score_figure(hist, stage / "ce_scores.png")
            parts += [
                "## Cross-encoder score distributions",
                "",
                "![cross-encoder scores](ce_scores.png)",
                "",
            ]
        if notes:
            parts += ["## Notes", "", *[f"- {n}" for n in notes], ""]
        text = "\n".join(parts)
        (stage / "report.md").write_text(text, encoding="utf-8")
        (stage / "report.html").write_text(_html(text), encoding="utf-8")
    log.info("report written to %s", report_dir)
