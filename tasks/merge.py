"""merge: every system's mined hits into ``msmarco-hard-negatives.jsonl.gz`` (published format).

Reads ``paths.negatives/bm25.parquet`` and ``paths.negatives/<system>.parquet`` for every system
of ``params.yaml`` (in that order) and writes ``paths.out/msmarco-hard-negatives.jsonl.gz``:
one line per training query with qrels, ordered by qid,

    {"qid": 867436, "pos": [5238393], "neg": {"bm25": [...], "<system>": [...], ...}}

lists in rank order, gzip with mtime 0 (same inputs, same bytes). A skipped system (zero-row
hits with ``skipped`` metadata) or a missing hits file is left out of ``neg`` and listed in the
summary ``paths.metrics/merge.json``. A query that has hits but no qrels is skipped and counted;
so is a qrels query that no system returned anything for (it had no query text). A positive or
a repeated pid in a list is dropped with a warning and counted (mining already removes them).

It never replaces a good file with an empty one: an empty or truncated qrels or hits file, or
inputs that share no query (0 lines to write), fail with one line naming the file (exit 1)
and leave the previous ``msmarco-hard-negatives.jsonl.gz`` as it was.

The CLI also writes ``msmarco-hard-negatives.jsonl.gz.provenance.json`` beside it
(:mod:`tasks.provenance`: input md5s, the bi-encoders' resolved revisions, packages, params).

    python -m tasks.merge
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tasks import provenance
from tasks.cli import run_stage, stage_parser
from tasks.config import Config
from tasks.io import DataError, write_json
from tasks.records import (
    HardNegatives,
    qrels_by_query,
    read_hits,
    read_qrels,
    skipped_reason,
    write_hard_negatives,
)

log = logging.getLogger(__name__)

OUT_NAME = "msmarco-hard-negatives.jsonl.gz"
__all__ = ["OUT_NAME", "main", "run", "skipped_reason"]


class _SystemHits:
    """One system's hits as sorted arrays, sliced per qid."""

    def __init__(self, name: str, path: Path):
        table = read_hits(path)
        self.name = name
        self.qids = table.column("qid").to_numpy()
        self.pids = table.column("pid").to_numpy()
        ranks = table.column("rank").to_numpy()
        if len(self.qids) and (
            np.any(np.diff(self.qids) < 0) or np.any((np.diff(ranks) <= 0) & (np.diff(self.qids) == 0))
        ):
            raise DataError(f"{path}: hits are not sorted by (qid, rank); rerun the mining stage")

    def unique_qids(self) -> np.ndarray:
        return np.unique(self.qids)

    def get(self, qid: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.qids, [qid, qid + 1])
        return self.pids[lo:hi]


def run(
    systems: Sequence[str],
    negatives_dir: Path,
    qrels_train: Path,
    out_path: Path,
    summary_out: Path | None = None,
) -> dict[str, Any]:
    """Merge ``systems`` (``bm25`` first, then the dense ones, in params order); returns the summary."""
    if len(set(systems)) != len(systems):
        raise ValueError(f"systems: duplicate names in {list(systems)}")
    loaded: list[_SystemHits] = []
    skipped: dict[str, str] = {}
    for name in systems:
        path = Path(negatives_dir) / f"{name}.parquet"
        if not path.exists():
            skipped[name] = f"no hits file {path.name} (its mining stage has not run)"
            log.warning("merge: %s has no hits file %s; left out", name, path)
            continue
        reason = skipped_reason(path)
        if reason is not None:
            skipped[name] = reason
            log.warning("merge: %s was skipped (%s); left out", name, reason)
            continue
        loaded.append(_SystemHits(name, path))
    if not loaded:
        raise DataError(f"{negatives_dir}: no system has hits to merge (looked for {', '.join(systems)})")

    positives = qrels_by_query(read_qrels(qrels_train))
    if not positives:
        raise DataError(f"{qrels_train}: no judgement with relevance >= 1; is it the training qrels?")
    mined = np.unique(np.concatenate([s.unique_qids() for s in loaded]))
    with_qrels = [int(q) for q in mined if int(q) in positives]
    if not with_qrels:
        raise DataError(
            f"{qrels_train}: none of its {len(positives)} judged queries is among the {len(mined)} queries "
            f"mined in {negatives_dir} (nothing to write); are the qrels and the mined queries the same "
            "training set? Rerun the mining stages after changing inputs"
        )
    counts = {
        name.name: {"queries": 0, "negatives": 0, "positives_dropped": 0, "duplicates_dropped": 0}
        for name in loaded
    }
    summary: dict[str, Any] = {
        "queries": len(with_qrels),
        "skipped_no_qrels": int(len(mined) - len(with_qrels)),
        "skipped_no_hits": len(set(positives) - {int(q) for q in mined}),
        "systems": [s.name for s in loaded],
        "skipped_systems": skipped,
        "per_system": counts,
    }
    if summary["skipped_no_qrels"]:
        log.warning(
            "merge: %d mined queries have no qrels in %s (skipped)", summary["skipped_no_qrels"], qrels_train
        )

    def records() -> Iterator[HardNegatives]:
        for qid in tqdm(with_qrels, desc="merge", unit="query", dynamic_ncols=True):
            pos = positives[qid]
            pos_set = set(pos)
            neg: dict[str, list[int]] = {}
            for s in loaded:
                c = counts[s.name]
                kept: list[int] = []
                seen: set[int] = set()
                for pid in s.get(qid).tolist():
                    if pid in pos_set:
                        c["positives_dropped"] += 1
                    elif pid in seen:
                        c["duplicates_dropped"] += 1
                    else:
                        seen.add(pid)
                        kept.append(pid)
                c["queries"] += bool(kept)
                c["negatives"] += len(kept)
                neg[s.name] = kept
            yield HardNegatives(qid, list(pos), neg)

    summary["lines"] = write_hard_negatives(out_path, records())
    for name, c in counts.items():
        if c["positives_dropped"] or c["duplicates_dropped"]:
            log.warning("merge: %s had %d positive(s) and %d duplicate(s) in its lists (dropped)",
                        name, c["positives_dropped"], c["duplicates_dropped"])  # fmt: skip
    log.info("merge: %d queries x %d systems -> %s", summary["lines"], len(loaded), out_path)
    if summary_out:
        write_json(summary_out, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.merge",
        "Merge BM25's and every dense system's mined hits (paths.negatives/*.parquet) into "
        f"paths.out/{OUT_NAME} in the published format: one line per training query with qrels, "
        '{"qid", "pos", "neg": {system: [pids in rank order]}}, ordered by qid, gzip mtime 0.',
        "python -m tasks.merge --params params.yaml",
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        out = cfg.path("out") / OUT_NAME
        run(["bm25", *cfg.systems], cfg.path("negatives"), cfg.input_path("qrels_train"), out,
            cfg.path("metrics") / "merge.json")  # fmt: skip
        models = provenance.stage_models(cfg, systems=True, cross_encoder=False)  # the bi-encoders
        provenance.record_file(cfg, "merge", out, models)

    return run_stage(args.params, work)


if __name__ == "__main__":
    sys.exit(main())
