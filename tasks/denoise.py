"""Stage ``denoise``: drop mined negatives the cross-encoder finds too close to the positives.

Mined "negatives" include unlabelled relevant passages (false negatives). Per query, with
``m = min CE(pos)`` over the query's positives (raw logits from the score stage), each negative
is KEPT or dropped by ``denoise.rule``, computed in float64 (the stored float32 logits cast
exactly, no rounding in between):

- ``absolute`` (default): keep iff ``CE(neg) <= m - denoise.margin`` (margin 3.0, the value of
  the sentence-transformers MS MARCO training scripts, ``ce_score_margin = 3.0``); a logit
  difference, so it does not depend on where the logit's zero lies.
- ``relative`` (NV-Retriever's TopK-PercPos, on the sigmoid probability): keep iff
  ``sigmoid(CE(neg)) <= denoise.relative * sigmoid(m)`` (default 0.95). TopK-PercPos keeps a
  negative scoring below a percentage of the positive's score; on raw logits a percentage
  depends on the logit's arbitrary zero point (5% of logit 0.5 is 0.025, of logit 8 it is 0.4,
  and below 0 it would keep negatives ABOVE the positive), so it is applied to the
  cross-encoder's probability ``sigmoid(logit) = 1 / (1 + exp(-logit))`` in (0, 1), where it
  always means "at most 95% of the positive's probability". Consequences: a negative scoring
  equal to ``m`` is kept only with ``relative = 1``; a negative is never kept above ``m``;
  the logit threshold it implies, ``logit(relative * sigmoid(m))``, lies ``~ -ln(relative)``
  (0.05) below ``m`` for a very negative ``m`` and approaches ``logit(relative)`` (2.94 for
  0.95) for a very positive one; every negative with a logit above that is dropped.

Both rules are counted on the same data whichever one filters (``by_rule`` in the metrics),
so the drops of the other rule are there to compare before switching.

Writes ``paths.out/msmarco-hard-negatives.denoised.jsonl.gz`` (the published format; every
system key stays, possibly with an empty list) and ``paths.metrics/denoise.json``: the rule
used and its parameter, per system ``candidates``, ``dropped`` (as likely false negatives),
``kept`` and ``dropped_share`` under the rule used, the same totals under ``total``, and
``by_rule``: for ``absolute`` (at ``denoise.margin``) and ``relative`` (at
``denoise.relative``) the parameter, per system and in total ``dropped`` and ``dropped_share``.
A negative or positive without a score raises (the score stage ran on other inputs), never
counts as kept or dropped. An empty or truncated input fails with one line naming it (exit 1),
leaving the previous output in place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tasks import provenance
from tasks.cli import run_stage, stage_parser
from tasks.config import Config, Denoise
from tasks.io import DataError, write_json
from tasks.records import HardNegatives, ScoreLookup, read_hard_negatives, read_scores, write_hard_negatives

log = logging.getLogger(__name__)


RULES = ("absolute", "relative")


def sigmoid(logits: np.ndarray | float) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in float64, without overflow (``exp`` only of non-positive values)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def keep(neg_scores: np.ndarray, min_pos: float, params: Denoise) -> np.ndarray:
    """Which negatives ``params.rule`` keeps: a bool array aligned with ``neg_scores`` (logits).

    ``absolute``: ``CE(neg) <= min_pos - margin``; ``relative``:
    ``sigmoid(CE(neg)) <= relative * sigmoid(min_pos)``; both in float64 (module docstring).
    """
    neg = np.asarray(neg_scores, dtype=np.float64)
    m = np.float64(min_pos)
    if params.rule == "absolute":
        return np.asarray(neg <= m - np.float64(params.margin))
    return np.asarray(sigmoid(neg) <= np.float64(params.relative) * sigmoid(m))


def threshold(min_pos: float, params: Denoise) -> float:
    """Highest logit a negative may have and be kept, for the ``absolute`` rule only.

    The ``relative`` rule compares probabilities, not logits: use :func:`keep`, which applies
    both rules exactly.
    """
    if params.rule != "absolute":
        raise ValueError("denoise.rule: relative compares sigmoid probabilities; use tasks.denoise.keep")
    return float(np.float64(min_pos) - np.float64(params.margin))


def denoise_records(
    records: Iterator[HardNegatives],
    lookup: ScoreLookup,
    params: Denoise,
    counts: dict[str, dict[str, int]],
    source: Path | str = "hard negatives",
) -> Iterator[HardNegatives]:
    """Yield each record with its negatives filtered by ``params.rule``; ``counts[system]``
    accumulates ``candidates``, ``dropped`` and ``kept`` under that rule and
    ``dropped_<rule>`` under each rule of :data:`RULES`, on the same scores.

    ``source`` (the input file) names where a bad record came from in errors.
    """
    rules = {rule: params.model_copy(update={"rule": rule}) for rule in RULES}
    for rec in records:
        if not rec.pos:
            raise DataError(
                f"{source}: qid {rec.qid} has no positive passage to compare the negatives with; "
                "rerun the merge stage"
            )
        min_pos = float(lookup.query(rec.qid, list(rec.pos)).astype(np.float64).min())
        neg: dict[str, list[int]] = {}
        for system, pids in rec.neg.items():
            c = counts.setdefault(
                system, {"candidates": 0, "dropped": 0, "kept": 0, **{f"dropped_{r}": 0 for r in RULES}}
            )
            if not pids:
                neg[system] = []
                continue
            scores = lookup.query(rec.qid, list(pids))
            masks = {rule: keep(scores, min_pos, p) for rule, p in rules.items()}
            neg[system] = [p for p, k in zip(pids, masks[params.rule].tolist(), strict=True) if k]
            c["candidates"] += len(pids)
            c["kept"] += len(neg[system])
            c["dropped"] += len(pids) - len(neg[system])
            for rule, mask in masks.items():
                c[f"dropped_{rule}"] += len(pids) - int(mask.sum())
        yield rec._replace(neg=neg)


def _share(dropped: int, candidates: int) -> float:
    return round(dropped / candidates, 6) if candidates else 0.0


def _metrics(params: Denoise, counts: dict[str, dict[str, int]], queries: int, empty: int) -> dict[str, Any]:
    """The ``denoise.json`` dict (module docstring) of the accumulated ``counts``."""
    systems = dict(sorted(counts.items()))
    totals = {k: sum(c[k] for c in systems.values()) for k in ("candidates", "dropped", "kept")}
    totals |= {f"dropped_{r}": sum(c[f"dropped_{r}"] for c in systems.values()) for r in RULES}

    def chosen(c: dict[str, int]) -> dict[str, int | float]:
        out: dict[str, int | float] = {k: c[k] for k in ("candidates", "dropped", "kept")}
        return out | {"dropped_share": _share(c["dropped"], c["candidates"])}

    def of_rule(rule: str, c: dict[str, int]) -> dict[str, int | float]:
        n = c[f"dropped_{rule}"]
        return {"dropped": n, "dropped_share": _share(n, c["candidates"])}

    param = {"absolute": ("margin", params.margin), "relative": ("relative", params.relative)}
    by_rule = {
        rule: {
            param[rule][0]: param[rule][1],
            "systems": {name: of_rule(rule, c) for name, c in systems.items()},
            "total": of_rule(rule, totals),
        }
        for rule in RULES
    }
    return {
        "rule": params.rule,
        param[params.rule][0]: param[params.rule][1],
        "queries": queries,
        "queries_without_negatives": empty,
        "systems": {name: chosen(c) for name, c in systems.items()},
        "total": chosen(totals),
        "by_rule": by_rule,
    }


def run(
    negatives_path: Path, scores_path: Path, out_path: Path, metrics_path: Path, params: Denoise
) -> dict[str, Any]:
    """Filter the hard negatives; returns the metrics written to ``metrics_path``."""
    lookup = ScoreLookup(read_scores(scores_path), scores_path)
    counts: dict[str, dict[str, int]] = {}
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
    metrics = _metrics(params, counts, state["queries"], state["empty"])
    write_json(metrics_path, metrics)
    other = "relative" if params.rule == "absolute" else "absolute"
    for system, c in metrics["systems"].items():
        log.info(
            "%s: %d candidates, %d dropped as likely false negatives (%.1f%%), %d kept; the %s rule "
            "would drop %d",
            system,
            c["candidates"],
            c["dropped"],
            100 * c["dropped_share"],
            c["kept"],
            other,
            metrics["by_rule"][other]["systems"][system]["dropped"],
        )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.denoise",
        "Drop hard negatives the cross-encoder scores too close to the query's weakest positive "
        "m = min CE(pos) (raw logits, compared in float64). denoise.rule absolute: keep iff "
        "CE(neg) <= m - denoise.margin; relative (NV-Retriever's TopK-PercPos on the sigmoid "
        "probability): keep iff sigmoid(CE(neg)) <= denoise.relative * sigmoid(m). Writes "
        "paths.out/msmarco-hard-negatives.denoised.jsonl.gz and paths.metrics/denoise.json (with "
        "the drops of both rules on the same data, by_rule).",
        "python -m tasks.denoise --params params.yaml",
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        out = cfg.path("out") / "msmarco-hard-negatives.denoised.jsonl.gz"
        run(cfg.path("out") / "msmarco-hard-negatives.jsonl.gz", cfg.path("scores") / "ce-scores.parquet",
            out, cfg.path("metrics") / "denoise.json", cfg.denoise)  # fmt: skip
        # provenance record beside the output (tasks.provenance): inputs, the cross-encoder, params
        provenance.record_file(cfg, "denoise", out, provenance.stage_models(cfg, False, cross_encoder=True))

    return run_stage(args.params, work)


if __name__ == "__main__":
    sys.exit(main())
