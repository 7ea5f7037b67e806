"""Stage ``denoise``: drop mined negatives the cross-encoder finds too close to the positives.

Mined "negatives" include unlabelled relevant passages (false negatives). Per query, with
``m = min CE(pos)`` over the query's positives (raw logits from the score stage), a negative
is KEPT when ``CE(neg) <= threshold`` and dropped otherwise, the threshold chosen by
``denoise.rule``:

- ``absolute`` (default): ``threshold = m - denoise.margin`` (margin 3.0, the value of the
  sentence-transformers MS MARCO training scripts, ``ce_score_margin = 3.0``).
- ``relative`` (NV-Retriever's TopK-PercPos): ``threshold = relative * m`` for ``m >= 0``
  (default 0.95). Sign-safe: cross-encoder logits can be negative, and ``0.95 * m`` would
  then lie ABOVE ``m``, keeping negatives that outscore the positive. The rule is therefore
  applied to the distance below ``m``: ``threshold = m - (1 - relative) * |m|``, which equals
  ``relative * m`` when ``m >= 0`` and ``(2 - relative) * m`` (``1.05 * m`` for 0.95) when
  ``m < 0``; ``m = 0`` gives ``threshold = 0``. A negative is never kept above ``m``.

Writes ``paths.out/msmarco-hard-negatives.denoised.jsonl.gz`` (the published format; every
system key stays, possibly with an empty list) and ``paths.metrics/denoise.json`` (per system:
candidates, dropped as likely false negatives, kept). A negative or positive without a score
raises (the score stage ran on other inputs), never counts as kept or dropped. An empty or
truncated input fails with one line naming it (exit 1), leaving the previous output in place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tasks.cli import run_stage, stage_parser
from tasks.config import Denoise
from tasks.io import DataError, write_json
from tasks.records import HardNegatives, ScoreLookup, read_hard_negatives, read_scores, write_hard_negatives

log = logging.getLogger(__name__)


def threshold(min_pos: float, params: Denoise) -> float:
    """Highest CE score a negative may have and be kept (see the module docstring)."""
    if params.rule == "absolute":
        return min_pos - params.margin
    return min_pos - (1.0 - params.relative) * abs(min_pos)


def denoise_records(
    records: Iterator[HardNegatives],
    lookup: ScoreLookup,
    params: Denoise,
    counts: dict[str, dict[str, int | float]],
    source: Path | str = "hard negatives",
) -> Iterator[HardNegatives]:
    """Yield each record with its negatives filtered; ``counts[system]`` accumulates.

    ``source`` (the input file) names where a bad record came from in errors.
    """
    for rec in records:
        if not rec.pos:
            raise DataError(
                f"{source}: qid {rec.qid} has no positive passage to compare the negatives with; "
                "rerun the merge stage"
            )
        limit = threshold(float(lookup.query(rec.qid, list(rec.pos)).min()), params)
        neg: dict[str, list[int]] = {}
        for system, pids in rec.neg.items():
            c = counts.setdefault(system, {"candidates": 0, "dropped": 0, "kept": 0})
            if not pids:
                neg[system] = []
                continue
            keep = lookup.query(rec.qid, list(pids)).astype(np.float64) <= limit
            neg[system] = [p for p, k in zip(pids, keep.tolist(), strict=True) if k]
            c["candidates"] += len(pids)
            c["kept"] += len(neg[system])
            c["dropped"] += len(pids) - len(neg[system])
        yield rec._replace(neg=neg)


def run(
    negatives_path: Path, scores_path: Path, out_path: Path, metrics_path: Path, params: Denoise
) -> dict[str, Any]:
    """Filter the hard negatives; returns the metrics written to ``metrics_path``."""
    lookup = ScoreLookup(read_scores(scores_path), scores_path)
    counts: dict[str, dict[str, int | float]] = {}
    state = {"queries": 0, "empty": 0}

    def tracked() -> Iterator[HardNegatives]:
        for rec in tqdm(
            denoise_records(read_hard_negatives(negatives_path), lookup, params, counts, negatives_path),
            desc="denoise",
            unit="query",
        ):
            state["queries"] += 1
            state["empty"] += not any(rec.neg.values())
            yield rec

    write_hard_negatives(out_path, tracked())
    total: dict[str, int | float] = {
        k: sum(c[k] for c in counts.values()) for k in ("candidates", "dropped", "kept")
    }
    for c in (*counts.values(), total):
        c["dropped_share"] = round(c["dropped"] / c["candidates"], 6) if c["candidates"] else 0.0
    rule: dict[str, str | float] = {"rule": params.rule}
    rule.update({"margin": params.margin} if params.rule == "absolute" else {"relative": params.relative})
    metrics = {
        **rule,
        "queries": state["queries"],
        "queries_without_negatives": state["empty"],
        "systems": dict(sorted(counts.items())),
        "total": total,
    }
    write_json(metrics_path, metrics)
    for system, c in sorted(counts.items()):
        log.info(
            "%s: %d candidates, %d dropped as likely false negatives (%.1f%%), %d kept",
            system,
            c["candidates"],
            c["dropped"],
            100 * c["dropped_share"],
            c["kept"],
        )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.denoise",
        "Drop hard negatives the cross-encoder scores too close to the query's positives "
        "(denoise.rule: absolute margin or relative TopK-PercPos); write "
        "paths.out/msmarco-hard-negatives.denoised.jsonl.gz and paths.metrics/denoise.json.",
        "python -m tasks.denoise --params params.yaml",
    )
    args = parser.parse_args(argv)
    return run_stage(
        args.params,
        lambda cfg: run(
            cfg.path("out") / "msmarco-hard-negatives.jsonl.gz",
            cfg.path("scores") / "ce-scores.parquet",
            cfg.path("out") / "msmarco-hard-negatives.denoised.jsonl.gz",
            cfg.path("metrics") / "denoise.json",
            cfg.denoise,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
