"""Evaluate every system's runs (MS MARCO dev, TREC DL 2019) and QA answers; write the report.

``run`` (the DVC stage) reads ``<runs>/<system>/<set>.<mode>.trec`` for every system
(``bm25``, each dense system, ``cross-encoder``; set ``dev`` | ``dl19``, mode ``full`` |
``rerank``) and computes:

- dev: MRR@10 as MS MARCO's ``msmarco_eval.py`` (rank column order, divided by the number
  of judged queries) and Recall@k as ``trec_eval -c`` (rel >= 1);
- DL19: NDCG@10 as ``trec_eval -c -m ndcg_cut.10`` (graded gains), Recall@k and MRR@10 with
  TREC DL's binary threshold rel >= 2.

It writes ``<metrics>/retrieval.json`` (DVC metrics), plot data under ``<metrics>/plots/``
(recall@k curves, the Jaccard overlap of the systems' negatives, cross-encoder score
histograms of positives vs negatives when scores exist) and ``<report>/report.{md,html}``
with PNG figures. Missing run files are tolerated; a system whose hits file is a zero-row
table with ``skipped=<reason>`` metadata is reported as skipped with the reason.

``qa`` scores QA answers exactly as the official MS MARCO QA evaluation (see
:mod:`tasks.qa_eval`).

``run`` exits as every stage (:mod:`tasks.cli`): an empty or malformed qrels or run file is one
line naming the file (exit 1), a bad ``params.yaml`` exit 2, an OS error exit 3; the previous
metrics and report stay in place. ``qa`` (a tool, not a stage) exits 2 for a bad answers file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from tasks.cli import LOG_FORMAT, run_stage
from tasks.config import Config, Evaluate
from tasks.io import DataError, atomic_dir, describe_os_error, write_json
from tasks.metrics import Qrels, Run, msmarco_mrr, trec_eval
from tasks.records import read_hard_negatives, read_hits, read_qrels, read_run_arrays, skipped_reason
from tasks.report import ReportLabels, report_labels, report_markdown, write_report

log = logging.getLogger(__name__)

SETS = ("dev", "dl19")
MODES = ("full", "rerank")
CROSS_ENCODER = "cross-encoder"
MRR_DEPTH = 10  # MRR@10 and NDCG@10: the official cut-offs, not knobs
NDCG_DEPTH = 10
BINARY_LEVEL = {"dev": 1, "dl19": 2}  # TREC DL binary measures count rel >= 2

__all__ = ["evaluate_run", "main", "read_trec_run", "report_markdown", "run", "skipped_reason"]


def evaluate_run(
    run: Run,
    qrels: Qrels,
    split: str,
    recall_cutoffs: Sequence[int],
    curve_cutoffs: Sequence[int] = (),
    ndcg: bool | None = None,
) -> tuple[dict[str, float], list[tuple[int, float]]]:
    """The figures of one run file against one qrels (``split`` is ``dev`` or ``dl19``).

    NDCG@10 is measured where the judgements are graded: ``ndcg`` (default: for ``dl19`` only,
    MS MARCO dev's are binary; a corpus of your own sets it for its split, as BEIR reports it).
    Returns the figures for ``retrieval.json`` and the recall@k curve at ``curve_cutoffs``.
    """
    level = BINARY_LEVEL[split]
    graded = split == "dl19" if ndcg is None else ndcg
    ks = sorted(set(recall_cutoffs) | set(curve_cutoffs))
    measures = [f"recall_{k}" for k in ks]
    if graded:
        measures.append(f"ndcg_cut_{NDCG_DEPTH}")
    ev = trec_eval(run, qrels, measures, relevance_level=level, complete=True)
    mrr = msmarco_mrr(run, qrels, k=MRR_DEPTH, min_rel=level)
    out: dict[str, float] = {f"mrr@{MRR_DEPTH}": mrr.mrr}
    summary = ev.summary
    if graded:
        out[f"ndcg@{NDCG_DEPTH}"] = summary[f"ndcg_cut_{NDCG_DEPTH}"]
    for k in sorted(set(recall_cutoffs)):
        out[f"recall@{k}"] = summary[f"recall_{k}"]
    out["queries"] = len(ev.qids)
    out["queries_in_run"] = mrr.queries_ranked
    return out, [(k, summary[f"recall_{k}"]) for k in sorted(set(curve_cutoffs))]


def read_trec_run(path: Path) -> Run:
    """A TREC run file as arrays (:func:`tasks.records.read_run_arrays`: no Python object per
    row, so a 7M-line dev run stays a few hundred MB)."""
    run = read_run_arrays(path)
    return Run.from_arrays(run.qid, run.pid, run.score, run.rank)


def _system_names(runs_dir: Path, systems: Sequence[str]) -> list[str]:
    """bm25, the configured dense systems, other run directories, then the cross-encoder."""
    names = ["bm25", *systems]
    found = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.exists() else []
    names += [n for n in found if n not in names and n != CROSS_ENCODER]
    if CROSS_ENCODER in found:
        names.append(CROSS_ENCODER)
    return list(dict.fromkeys(names))


def negative_overlap(negatives_dir: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """Mean per-query Jaccard overlap of each pair of systems' mined negatives.

    Averaged over the queries both systems have hits for; the diagonal is 1.0.
    """
    sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    tables = {}
    for name in names:
        path = negatives_dir / f"{name}.parquet"
        if path.exists() and skipped_reason(path) is None:
            t = read_hits(path)
            if t.num_rows:
                tables[name] = (t.column("qid").to_numpy(), t.column("pid").to_numpy())
    if not tables:
        return []
    low = min(min(int(q.min()), int(p.min())) for q, p in tables.values())
    if low < 0:
        raise DataError(f"{negatives_dir}: negative qid or pid {low} in a hits file")
    width = np.int64(max(int(p.max()) for _, p in tables.values()) + 1)
    for name, (qid, pid) in tables.items():
        keys = np.unique(qid.astype(np.int64) * width + pid.astype(np.int64))
        q, n = np.unique(keys // width, return_counts=True)
        sets[name] = (keys, q, n)
    rows = []
    order = list(sets)
    pairs = [(a, b) for i, a in enumerate(order) for b in order[i:]]
    for a, b in tqdm(pairs, desc="negative overlap", unit="pair", disable=len(pairs) < 10):
        ka, qa, na = sets[a]
        kb, qb, nb = sets[b]
        common, ia, ib = np.intersect1d(qa, qb, assume_unique=True, return_indices=True)
        inter_keys = ka[np.isin(ka, kb, assume_unique=True)]
        iq, icount = np.unique(inter_keys // width, return_counts=True)
        inter = np.zeros(len(common))
        inter[np.searchsorted(common, iq)] = icount
        jac = inter / (na[ia] + nb[ib] - inter) if len(common) else np.zeros(0)
        value = float(jac.mean()) if len(common) else 0.0
        for x, y in {(a, b), (b, a)}:
            rows.append({"system_a": x, "system_b": y, "jaccard": round(value, 6), "queries": len(common)})
    rows.sort(key=lambda r: (order.index(r["system_a"]), order.index(r["system_b"])))
    return rows


def ce_score_histogram(scores_file: Path, hard_negatives: Path, bins: int) -> list[dict[str, float]] | str:
    """Histogram (fractions) of cross-encoder scores of positives vs mined negatives.

    Returns a note (str) instead when the scores or the hard-negatives file do not exist.
    """
    if not scores_file.exists() or not hard_negatives.exists():
        missing = scores_file if not scores_file.exists() else hard_negatives
        return f"cross-encoder score distributions skipped: {missing.name} not found (run the score stage)"
    table = pq.read_table(scores_file, columns=["qid", "pid", "score"])
    s_q = table.column("qid").to_numpy().astype(np.int64)
    s_p = table.column("pid").to_numpy().astype(np.int64)
    s_v = table.column("score").to_numpy().astype(np.float64)
    width = np.int64(max(int(s_p.max(initial=0)), 0) + 1)
    skeys = s_q * width + s_p
    korder = np.argsort(skeys, kind="stable")
    skeys, s_v = skeys[korder], s_v[korder]
    pos_keys: list[int] = []
    neg_keys: list[int] = []
    for rec in read_hard_negatives(hard_negatives):
        q = rec.qid
        pos_keys.extend(q * int(width) + p for p in rec.pos if p < width)
        negs = {p for pids in rec.neg.values() for p in pids}
        neg_keys.extend(q * int(width) + p for p in sorted(negs) if p < width)

    def lookup(keys: list[int]) -> np.ndarray:
        k = np.asarray(keys, dtype=np.int64)
        idx = np.minimum(np.searchsorted(skeys, k), max(len(skeys) - 1, 0))
        hit = skeys[idx] == k if len(skeys) else np.zeros(len(k), bool)
        return s_v[idx[hit]]

    pos, neg = lookup(pos_keys), lookup(neg_keys)
    if len(pos) + len(neg) == 0:
        return "cross-encoder score distributions skipped: no scored positive or negative pair"
    both = np.concatenate([pos, neg])
    edges = np.linspace(both.min(), both.max() if both.max() > both.min() else both.min() + 1, bins + 1)
    hp = np.histogram(pos, edges)[0] / max(len(pos), 1)
    hn = np.histogram(neg, edges)[0] / max(len(neg), 1)
    return [
        {
            "bin_left": round(float(edges[i]), 6),
            "bin_right": round(float(edges[i + 1]), 6),
            "positives": round(float(hp[i]), 8),
            "negatives": round(float(hn[i]), 8),
        }
        for i in range(bins)
    ]


OVERLAP_COLUMNS = ["system_a", "system_b", "jaccard", "queries"]
SCORE_COLUMNS = ["bin_left", "bin_right", "positives", "negatives"]


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """CSV for DVC plots; with no rows, just the header (DVC needs every declared output)."""
    header = columns if columns is not None else list(rows[0])
    lines = [",".join(header)] + [",".join(str(r[c]) for c in header) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run(
    runs_dir: Path,
    qrels: dict[str, Path],
    negatives_dir: Path,
    scores_file: Path,
    hard_negatives: Path,
    metrics_dir: Path,
    report_dir: Path,
    params: Evaluate,
    systems: Sequence[str] = (),
    labels: ReportLabels | None = None,
    ndcg_sets: Sequence[str] = ("dl19",),
) -> dict[str, Any]:
    """Evaluate every system; write retrieval.json, plot data and the report. Returns the metrics.

    ``qrels``: the judgements of each evaluation set (``dev``, ``dl19``); ``ndcg_sets``: the sets
    whose judgements are graded, so NDCG@10 is measured on them.

    ``labels`` (:func:`tasks.report.report_labels`): the candidate list of each re-ranking figure
    and the smoke-model systems, for the report; none: plain "re-ranking", nothing marked smoke.
    """
    names = _system_names(runs_dir, systems)
    loaded: dict[str, Qrels] = {}
    metrics: dict[str, Any] = {}
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    notes: list[str] = []
    cutoffs = sorted(set(params.curve_cutoffs) | set(params.recall_cutoffs))
    for name in tqdm(names, desc="evaluate", unit="system", disable=len(names) < 4):
        reason = skipped_reason(negatives_dir / f"{name}.parquet")
        if reason is not None:
            metrics[name] = {"skipped": reason}
            continue
        entry: dict[str, Any] = {}
        for split in qrels:  # the profile's evaluation sets
            for mode in MODES:
                path = runs_dir / name / f"{split}.{mode}.trec"
                if not path.exists():
                    continue
                run_ = read_trec_run(path)
                if len(run_.qid) == 0:
                    notes.append(f"{name}: {path.name} is empty; not evaluated")
                    continue
                if split not in loaded:
                    loaded[split] = Qrels.from_records(read_qrels(qrels[split]))
                log.info("%s: %s (%d rows)", name, path.name, len(run_.qid))
                try:
                    figures, curve = evaluate_run(
                        run_, loaded[split], split, params.recall_cutoffs, cutoffs, ndcg=split in ndcg_sets
                    )
                except DataError as exc:  # the metrics see arrays: name the two files here
                    raise DataError(f"{path} against {qrels[split]}: {exc}") from None
                entry.setdefault(split, {})[mode] = figures
                curves.setdefault(f"{split}.{mode}", {})[name] = curve
        metrics[name] = entry if entry else {"skipped": "no run files found"}
    write_json(metrics_dir / "retrieval.json", metrics)

    overlap = negative_overlap(negatives_dir, names)
    if not overlap:
        notes.append("negative overlap skipped: no hits files in the negatives directory")
    hist = ce_score_histogram(scores_file, hard_negatives, params.score_bins)
    if isinstance(hist, str):
        notes.append(hist)
        hist = []
    with atomic_dir(metrics_dir / "plots") as stage:
        (stage / "recall").mkdir()
        for run_key, per_system in sorted(curves.items()):
            for name, points in per_system.items():
                _write_csv(
                    stage / "recall" / run_key / f"{name}.csv",
                    [{"k": k, "recall": round(v, 6)} for k, v in points],
                )
        _write_csv(stage / "negatives_overlap.csv", overlap, OVERLAP_COLUMNS)
        _write_csv(stage / "ce_scores.csv", hist, SCORE_COLUMNS)
    write_report(report_dir, metrics, curves, overlap, hist, notes, labels)
    return metrics


def _run_main(cfg: Config) -> None:
    run(
        runs_dir=cfg.path("runs"),
        qrels=cfg.eval_qrels(),
        negatives_dir=cfg.path("negatives"),
        scores_file=cfg.path("scores") / "ce-scores.parquet",
        hard_negatives=cfg.path("out") / "msmarco-hard-negatives.jsonl.gz",
        metrics_dir=cfg.path("metrics"),
        report_dir=cfg.path("report"),
        params=cfg.evaluate,
        systems=list(cfg.systems),
        labels=report_labels(cfg),
        ndcg_sets=("dl19",) if cfg.dataset is None else cfg.eval_sets,  # yours are graded, as BEIR's
    )
    log.info("wrote %s and %s", cfg.path("metrics") / "retrieval.json", cfg.path("report") / "report.html")


def _qa_main(args: argparse.Namespace) -> None:
    from tasks.qa_eval import evaluate_answers

    scores = evaluate_answers(args.references, args.candidates)
    if args.output:
        write_json(args.output, scores)
    lines = ["############################"]
    lines += [f"{name}: {scores[name]}" for name in sorted(scores)]
    lines.append("############################")
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m tasks.evaluate run                 # the DVC stage (paths from params.yaml)\n"
            "  python -m tasks.evaluate qa refs.json cands.json --output qa.json\n"
        ),
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser(
        "run",
        help="evaluate every system's runs, write metrics, plots and the report",
        description="MRR@10 (dev), NDCG@10 (DL19), Recall@k for full retrieval and re-ranking of "
        "every system under paths.runs; writes paths.metrics/retrieval.json, plot data and "
        "paths.report/report.{md,html}.",
        epilog="example: python -m tasks.evaluate run --params params.yaml && dvc metrics show",
    )
    r.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    q = sub.add_parser(
        "qa",
        help="BLEU-1..4, ROUGE-L, F1 and novice-task success of QA answers (official MS MARCO QA eval)",
        description='Both files: one JSON per line {"query_id": int, "answers": [str]}; a candidate '
        'gives one answer (or "No Answer Present."). Example: python -m tasks.evaluate qa '
        "sample_references.json sample_candidates.json",
    )
    q.add_argument("references", type=Path)
    q.add_argument("candidates", type=Path)
    q.add_argument("--output", type=Path, help="also write the scores as JSON here")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run_stage(args.params, _run_main)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:  # ``qa`` is a tool, not a stage: a bad answers file keeps its earlier exit code 2
        _qa_main(args)
    except (DataError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"error: {describe_os_error(exc)}\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
