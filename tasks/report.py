"""The evaluation report: Markdown table (also the Prefect artifact), HTML page and PNG figures.

Figures are drawn with matplotlib's Agg backend and saved without metadata, so the same
figures give the same bytes. What the metrics alone do not say comes from the config as
:class:`ReportLabels` (:func:`report_labels`): which candidate list each re-ranking figure
re-ranks (``Config.candidates_label``), so the figures can be set beside published tables, and
which systems are smoke models (``smoke: true``: tiny random models built for the offline
sample), whose figures the report says plainly, at the top, mean nothing.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasks.io import atomic_dir  # noqa: E402

if TYPE_CHECKING:
    from tasks.config import Config

log = logging.getLogger(__name__)

CROSS_ENCODER = "cross-encoder"  # the cross-encoder's row (its run directory) in retrieval.json
SPLITS = {"dev": "MS MARCO dev", "dl19": "TREC DL 2019"}
SHORT = {"dev": "dev", "dl19": "DL19"}
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
COLUMNS = (("dev", "mrr@10"), ("dl19", "ndcg@10"))  # the main table's measure per set (MS MARCO)


def corpus_method(split: str) -> list[str]:
    """How the figures of a corpus of your own are computed (its split ``split``, graded qrels)."""
    return [
        "How the figures are computed:",
        "",
        f"- NDCG@10 ({split}): `trec_eval -c -m ndcg_cut.10` on the split's graded judgements, as BEIR "
        "reports it.",
        f"- MRR@10 ({split}): the run's rank order, relevant = rel >= 1, 0 for a query with no relevant "
        "passage in its top 10, divided by the number of judged queries.",
        "- Recall@k: `trec_eval -c -m recall.k`, relevant = rel >= 1.",
    ]


@dataclass(frozen=True)
class ReportLabels:
    """What the report says beside the figures, from the config (:func:`report_labels`).

    ``candidates``: per split (``dev`` | ``dl19``) the candidate list the bi-encoders re-rank;
    ``ce_candidates``: the same for the cross-encoder (it re-ranks fewer: ``ce_rerank_depth``);
    ``smoke``: systems (rows, the cross-encoder as ``cross-encoder``) that are smoke models;
    ``cross_encoder``: the cross-encoder's name (``cross_encoder.name``). Empty labels (the
    default) fall back to "re-ranking" and mark no system as smoke.
    """

    candidates: dict[str, str] = field(default_factory=dict)
    ce_candidates: dict[str, str] = field(default_factory=dict)
    smoke: tuple[str, ...] = ()
    cross_encoder: str = ""
    sets: dict[str, str] = field(default_factory=lambda: dict(SPLITS))  # set -> its name in titles
    short: dict[str, str] = field(default_factory=lambda: dict(SHORT))  # set -> its name in tables
    columns: tuple[tuple[str, str], ...] = COLUMNS  # (set, measure) of the main table
    method: tuple[str, ...] = tuple(METHOD)


def report_labels(cfg: Config) -> ReportLabels:
    """The :class:`ReportLabels` of a loaded config."""
    smoke = [name for name, system in cfg.systems.items() if system.smoke]
    if cfg.cross_encoder.smoke:
        smoke.append(CROSS_ENCODER)
    depth = cfg.evaluate.ce_rerank_depth
    labels = ReportLabels(
        candidates={split: cfg.candidates_label(split) for split in cfg.eval_sets},
        ce_candidates={split: cfg.candidates_label(split, depth) for split in cfg.eval_sets},
        smoke=tuple(smoke),
        cross_encoder=cfg.cross_encoder.name,
    )
    if cfg.dataset is None:
        return labels
    split = cfg.dataset[1].eval_split  # a corpus of your own: its split, NDCG@10 first as BEIR
    return replace(
        labels,
        sets={"dev": cfg.eval_set_label("dev")},
        short={"dev": split},
        columns=(("dev", "ndcg@10"), ("dev", "mrr@10")),
        method=tuple(corpus_method(split)),
    )


def run_label(run_key: str, labels: ReportLabels, system: str | None = None) -> str:
    """``dev.rerank`` -> ``MS MARCO dev, re-ranking BM25 top-1000 (this run)`` (a figure title)."""
    split, _, mode = run_key.partition(".")
    name = labels.sets.get(split, split)
    if mode == "full":
        return f"{name}, full retrieval"
    which = labels.ce_candidates if system == CROSS_ENCODER else labels.candidates
    return f"{name}, re-ranking {which[split]}" if split in which else f"{name}, re-ranking"


def smoke_notice(labels: ReportLabels) -> str:
    """A Markdown paragraph saying which systems are smoke models and what that means; ``""``
    when none is."""
    if not labels.smoke:
        return ""
    bi = [f"`{n}`" for n in labels.smoke if n != CROSS_ENCODER]
    ce = f"the cross-encoder (`{labels.cross_encoder}`)" if labels.cross_encoder else "the cross-encoder"
    names = bi + ([ce] if CROSS_ENCODER in labels.smoke else [])
    listed = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
    text = (
        f"**Smoke models: their figures mean nothing about retrieval quality.** {listed} "
        f"{'are' if len(names) > 1 else 'is a'} tiny random model{'s' if len(names) > 1 else ''} "
        "(`smoke: true` in params.yaml) that the pipeline builds for the offline sample; "
        "their figures only prove that the pipeline runs."
    )
    if CROSS_ENCODER in labels.smoke:
        text += (
            " The cross-encoder being one, its re-ranking, its score distributions and the "
            "denoising counts mean nothing either."
        )
    wrapped = textwrap.wrap(text, 96, break_on_hyphens=False, break_long_words=False)
    return "\n".join("> " + line for line in wrapped) + "\n"


def _order(metrics: dict[str, Any]) -> list[str]:
    """bm25 first, the cross-encoder last, the rest by name (retrieval.json is key-sorted)."""
    rest = sorted(n for n in metrics if n not in ("bm25", CROSS_ENCODER))
    return [n for n in ("bm25",) if n in metrics] + rest + [n for n in (CROSS_ENCODER,) if n in metrics]


def _cell(entry: dict[str, Any], split: str, mode: str, key: str) -> str:
    value = entry.get(split, {}).get(mode, {}).get(key)
    return "–" if value is None else f"{100 * value:.2f}"


def _name(name: str, labels: ReportLabels) -> str:
    return f"{name} (smoke)" if name in labels.smoke else name


def _legend(metrics: dict[str, Any], labels: ReportLabels) -> list[str]:
    """One line per split that has re-ranking figures: the candidate list each system re-ranks."""
    out = []
    for split in labels.sets:
        rerankers = [n for n, e in metrics.items() if "rerank" in e.get(split, {})]
        if not rerankers or split not in labels.candidates:
            continue
        bi, ce = labels.candidates[split], labels.ce_candidates.get(split, labels.candidates[split])
        text = f"- {labels.short.get(split, split)} re-rank: "
        if CROSS_ENCODER in rerankers and ce != bi:
            others = [n for n in rerankers if n != CROSS_ENCODER]
            text += (f"bi-encoders re-rank {bi}; " if others else "") + f"the cross-encoder re-ranks {ce}"
        else:
            text += f"each system re-ranks {bi}"
        out.append(text)
    return out


def report_markdown(metrics: dict[str, Any], labels: ReportLabels | None = None, notice: bool = True) -> str:
    """The evaluation tables (values x 100) of a ``retrieval.json`` dict, as Markdown.

    ``labels`` name the re-ranking candidates and the smoke systems; ``notice``: open with the
    smoke-model notice (the pipeline summary puts it at its own top instead).
    """
    labels = labels or ReportLabels()
    names = _order(metrics)
    head = smoke_notice(labels) if notice else ""
    lines = [head] if head else []
    heads = [
        f"{labels.short.get(split, split)} {measure.upper()} {mode}"
        for split, measure in labels.columns
        for mode in ("full", "re-rank")
    ]
    lines += ["| System | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    skipped = []
    for name in names:
        entry = metrics[name]
        if "skipped" in entry:
            skipped.append(f"- **{name}**: skipped ({entry['skipped']})")
            lines.append(f"| {name} | skipped |" + " |" * (len(heads) - 1))
            continue
        cells = [
            _cell(entry, split, mode, measure)
            for split, measure in labels.columns
            for mode in ("full", "rerank")
        ]
        lines.append(f"| {_name(name, labels)} | " + " | ".join(cells) + " |")
    lines += ["", "Figures x 100; full: retrieval over the whole corpus.", *_legend(metrics, labels)]
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
        rule = "rel >= 1 on dev, rel >= 2 on DL19" if "dl19" in labels.sets else "rel >= 1"
        lines += ["", f"Recall@k ({rule}), x 100:", ""]
        lines.append("| System | Run | " + " | ".join(f"R@{k}" for k in ks) + " |")
        lines.append("|---|---|" + "---:|" * len(ks))
        for name in names:
            entry = metrics[name]
            for split in labels.sets:
                for mode in ("full", "rerank"):
                    if mode in entry.get(split, {}):
                        cells = [_cell(entry, split, mode, f"recall@{k}") for k in ks]
                        run = f"{labels.short.get(split, split)} {'re-rank' if mode == 'rerank' else mode}"
                        lines.append(f"| {_name(name, labels)} | {run} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped systems:", "", *skipped]
    return "\n".join(lines) + "\n"


def _count(n: int) -> str:
    return f"{n:,}"


def denoise_markdown(metrics: dict[str, Any]) -> str:
    """The negatives each denoising rule drops, per system, of a ``denoise.json`` dict.

    Both rules on the same data (``by_rule``); a file written before ``by_rule`` existed shows
    the rule used only.
    """
    used = metrics["rule"]
    key = "margin" if used == "absolute" else "relative"
    by_rule = metrics.get("by_rule") or {
        used: {key: metrics[key], "systems": metrics["systems"], "total": metrics["total"]}
    }
    heads = []
    for rule, block in by_rule.items():
        param = f"margin {block['margin']:g}" if rule == "absolute" else f"{100 * block['relative']:g}%"
        heads.append(f"{rule}, {param}" + (" (used)" if rule == used else ""))
    lines = [
        "Negatives each denoising rule drops on the same data (m = min CE(pos); absolute keeps "
        "CE(neg) <= m - margin, relative keeps sigmoid(CE(neg)) <= share x sigmoid(m)):",
        "",
        "| System | candidates | " + " | ".join(heads) + " |",
        "|---|---:|" + "---:|" * len(heads),
    ]
    rows = [(name, c["candidates"]) for name, c in metrics["systems"].items()]
    rows.append(("total", metrics["total"]["candidates"]))
    for name, candidates in rows:
        cells = []
        for block in by_rule.values():
            c = block["total"] if name == "total" else block["systems"][name]
            cells.append(f"{_count(c['dropped'])} ({100 * c['dropped_share']:.1f}%)")
        label = "**total**" if name == "total" else name
        lines.append(f"| {label} | {_count(candidates)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=100, metadata=PNG_META)
    plt.close(fig)


def _curve_label(run_key: str, name: str, labels: ReportLabels) -> str:
    """A legend entry: the system, ``(smoke)``, and the cross-encoder's own candidate list when
    it re-ranks another one than the bi-encoders (fewer candidates)."""
    text = _name(name, labels)
    split = run_key.partition(".")[0]
    if run_key.endswith(".rerank") and name == CROSS_ENCODER:
        ce = labels.ce_candidates.get(split)
        if ce is not None and ce != labels.candidates.get(split):
            text += f", re-ranks {ce}"
    return text


def _recall_figure(
    run_key: str, per_system: dict[str, list[tuple[int, float]]], path: Path, labels: ReportLabels
) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in sorted(per_system):
        ks, vs = zip(*per_system[name], strict=True)
        ax.plot(ks, vs, marker="o", markersize=3, label=_curve_label(run_key, name, labels))
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1.02)
    title = textwrap.fill(run_label(run_key, labels), 80, break_on_hyphens=False)
    if any(name in labels.smoke for name in per_system):
        title += "\n(smoke) = smoke model: its curve means nothing"
    ax.set_title(title, fontsize=9)
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


def _score_figure(hist: list[dict[str, float]], path: Path, smoke: bool) -> None:
    left = np.array([h["bin_left"] for h in hist])
    width = np.array([h["bin_right"] - h["bin_left"] for h in hist])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.bar(left, [h["positives"] for h in hist], width=width, align="edge", alpha=0.6, label="positives")
    ax.bar(left, [h["negatives"] for h in hist], width=width, align="edge", alpha=0.6, label="negatives")
    ax.set_xlabel("cross-encoder score")
    ax.set_ylabel("fraction of pairs")
    title = "Cross-encoder scores: positives vs mined negatives"
    ax.set_title(title + ("\n(smoke cross-encoder: the scores mean nothing)" if smoke else ""), fontsize=9)
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
    labels: ReportLabels | None = None,
) -> None:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``report_dir`` (atomically).

    ``labels``: the candidate lists and smoke systems (:func:`report_labels`).
    """
    labels = labels or ReportLabels()
    parts = ["# Evaluation", "", report_markdown(metrics, labels), *labels.method, ""]
    with atomic_dir(report_dir) as stage:
        for run_key in sorted(curves):
            png = f"recall_{run_key.replace('.', '_')}.png"
            _recall_figure(run_key, curves[run_key], stage / png, labels)
            parts += [f"## Recall@k: {run_label(run_key, labels)}", "", f"![recall@k {run_key}]({png})", ""]
        if overlap:
            _overlap_figure(overlap, stage / "negatives_overlap.png")
            parts += ["## Overlap of mined negatives", "", "![negative overlap](negatives_overlap.png)", ""]
        if hist:
            _score_figure(hist, stage / "ce_scores.png", CROSS_ENCODER in labels.smoke)
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
