"""Stage ``mine_scores``: the cross-encoder scores that ``mine_export``'s options need, and no more.

``sentence_transformers.util.mine_hard_negatives`` runs its cross-encoder only when a score
filter (``absolute_margin``, ``relative_margin``, ``max_score``, ``min_score``) or
``output_scores`` asks for it, and then only on each query's candidates and positives. This
stage does the same for ``mine_export`` (params section ``mining``, per system
``mining.per_system.<system>``): for each system of ``mining.systems`` whose resolved options
need scores, and each training query with a positive (qrels ``rel >= 1``) and a hit in that
system, it takes the pairs (query, each of the system's first ``range_max`` hits) and (query,
each positive); the distinct pairs over all such systems, sorted by (qid, pid), are scored with
the cross-encoder (``cross_encoder.*``) through :func:`tasks.score.score_resumable`: the same
shard or pair cache (``paths.score_cache``), resume after kill -9 and executors as the ``score``
stage.

So ``dvc repro mine_export`` no longer waits on ``score`` (every distinct pair of the merged
hard negatives, for the published pickle): with options that need no score it scores nothing
and does not import torch; with a filter it scores the mining windows only. A full ``dvc repro``
runs both; with ``cross_encoder.addressing: shard`` (the default) the pairs the two have in
common are scored once by each stage (their shards hold different pairs, so neither reuses
the other's), with ``addressing: pair`` the second stage reads them from the pair store.

Outputs, under ``paths.mine_scores`` (replaced as a whole, atomically):

- ``ce-scores.parquet``: ``qid:int64, pid:int64, score:float32`` sorted by (qid, pid), the
  layout of ``paths.scores/ce-scores.parquet`` (raw logits); zero rows when no system needs
  scores.
- ``manifest.json``: the systems that needed scores, the pair count, and (when any were scored)
  the model identity with the resolved device/dtype and the per-shard rows and hashes, as the
  score stage's manifest.

and ``paths.metrics/mine_scores.json`` (systems, queries, pairs). Same inputs and params give
byte-identical files. Bad input (a hits file that is missing or damaged, an id missing from the
collection or the queries) fails naming the file, and leaves the previous outputs in place.
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tasks.cli import run_stage, stage_parser
from tasks.config import ROOT, Config, CrossEncoderCfg, Mining
from tasks.io import DataError, atomic_dir, record_work, write_json
from tasks.records import load_texts, qrels_by_query, read_qrels, scores_table, skipped_reason, write_table

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def needing_scores(cfg_mining: Mining, systems: list[str], top_k: int, seed: int) -> dict[str, int]:
    """System -> its ``range_max``, for the systems whose resolved options need CE scores."""
    out: dict[str, int] = {}
    for s in systems:
        opts = cfg_mining.options(s, top_k, seed)
        if opts.filtered or opts.output_scores:
            out[s] = opts.range_max or top_k
    return out


def window_pairs(
    path: Path, range_max: int, positives: dict[int, list[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """(qid, pid) of a hits file's first ``range_max`` hits of each query with a positive, plus
    (qid, positive) for each of those queries: what ``mine_export`` looks up for this system."""
    try:
        table = pq.read_table(path, columns=["qid", "rank", "pid"])
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError; a missing column too
        raise DataError(
            f"{path}: not a readable hits file ({exc}); delete it and rerun its mining stage"
        ) from None
    q = table.column("qid").to_numpy()
    r = table.column("rank").to_numpy()
    p = table.column("pid").to_numpy()
    judged = np.asarray(sorted(positives), np.int64)
    keep = (r <= range_max) & np.isin(q, judged)
    q, p = q[keep].astype(np.int64), p[keep].astype(np.int64)
    with_hits = np.unique(q).tolist()
    pos_q = [np.full(len(positives[x]), x, np.int64) for x in with_hits]
    pos_p = [np.asarray(positives[x], np.int64) for x in with_hits]
    return np.concatenate([q, *pos_q]), np.concatenate([p, *pos_p])


def collect(
    need: dict[str, int], negatives_dir: Path, positives: dict[int, list[int]]
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """The distinct pairs of every system in ``need`` sorted by (qid, pid), and the systems whose
    mining stage skipped them (their reason): they have no rows in ``mine_export`` either."""
    qs: list[np.ndarray] = [np.zeros(0, np.int64)]
    ps: list[np.ndarray] = [np.zeros(0, np.int64)]
    skipped: dict[str, str] = {}
    for s, range_max in need.items():
        path = negatives_dir / f"{s}.parquet"
        reason = skipped_reason(path)
        if reason is not None:
            skipped[s] = reason
            continue
        q, p = window_pairs(path, range_max, positives)
        qs.append(q)
        ps.append(p)
    pairs = np.unique(np.stack([np.concatenate(qs), np.concatenate(ps)], axis=1), axis=0)
    return pairs[:, 0].copy(), pairs[:, 1].copy(), skipped


def run(
    cfg_mining: Mining,
    systems: list[str],
    top_k: int,
    seed: int,
    negatives_dir: Path,
    collection: Path,
    queries_path: Path,
    qrels_path: Path,
    out_dir: Path,
    ce: CrossEncoderCfg,
    model_path: str | None = None,
    executor: Executor | None = None,
    metrics_path: Path | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Score the pairs ``mine_export`` needs (module docstring) into ``out_dir``; returns the stats.

    ``model_path`` overrides ``ce.model``; ``executor`` runs the shards (``None``: here);
    ``cache_dir`` is the score stage's shard/pair cache (``None``: memory only, no resume)."""
    for s in systems:  # mine_export reads every one of them: a missing file fails here already
        if not (negatives_dir / f"{s}.parquet").exists():
            raise FileNotFoundError(
                f"{negatives_dir / f'{s}.parquet'}: no hits of system {s}; run its mining stage "
                "(or drop it from mining.systems)"
            )
    need = needing_scores(cfg_mining, systems, top_k, seed)
    manifest: dict[str, Any] = {"format": MANIFEST_VERSION, "systems": sorted(need)}
    stats: dict[str, Any] = {"systems": sorted(need), "queries": 0, "pairs": 0}
    if not need:
        log.info(
            "no system of %s needs cross-encoder scores (no filter, no output_scores): none scored", systems
        )
        qids = pids = np.zeros(0, np.int64)
        scores = np.zeros(0, np.float32)
        scored = 0
    else:
        from tasks.accel import resolve
        from tasks.score import ModelSpec, score_resumable

        positives = qrels_by_query(read_qrels(qrels_path))
        if not positives:
            raise DataError(f"{qrels_path}: no judgement with relevance >= 1: nothing to mine")
        qids, pids, skipped = collect(need, negatives_dir, positives)
        for s, reason in skipped.items():
            log.warning("system %s was skipped by its mining stage (%s): no scores for it", s, reason)
        stats["skipped"] = skipped
        stats["queries"] = int(len(np.unique(qids)))
        stats["pairs"] = int(len(qids))
        log.info("%d distinct pairs of %d queries for %s", len(qids), stats["queries"], ", ".join(need))
        accel = resolve(ce.device, ce.dtype)  # once, here: workers get the concrete setting
        model = ModelSpec.from_cfg(ce, model_path, accel)
        queries, passages = load_texts(collection, queries_path, qids, pids, str(negatives_dir))
        t0 = time.perf_counter()
        done = score_resumable(
            qids, pids, queries, passages, model, ce.shard_size, cache_dir, executor, "mine_scores"
        )
        scores, scored = done.scores, done.pairs_scored
        log.info(
            "mine_scores: scored %d pair(s), reused %d shard(s), %.1fs",
            scored, len(done.reused), time.perf_counter() - t0,
        )  # fmt: skip
        manifest.update(
            {"model": done.identity, "shard_size": ce.shard_size, "pairs": len(qids), "shards": done.shards}
        )
        record_work("mine_scores", "pairs", done=scored, total=done.pairs_total)
    manifest.setdefault("pairs", 0)
    with atomic_dir(out_dir) as stage:
        write_table(stage / "ce-scores.parquet", scores_table(qids, pids, scores))
        write_json(stage / "manifest.json", manifest)
    if metrics_path is not None:
        write_json(metrics_path, stats)
    return {**stats, "scored_pairs": scored}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.mine_scores",
        "Score with the cross-encoder (cross_encoder.*) the pairs that mine_export's options need: for each "
        "system of mining.systems with a score filter (absolute_margin, relative_margin, max_score, "
        "min_score) or output_scores, each training query's first range_max hits and its positives; "
        "nothing when no system needs scores (torch is then not imported). Shards are cached in "
        "paths.score_cache as the score stage's are (a rerun after a crash scores only what is missing). "
        "Writes paths.mine_scores/ce-scores.parquet + manifest.json and paths.metrics/mine_scores.json. "
        "Exits 4 while another process runs this stage.",
        "python -m tasks.mine_scores --params params.yaml",
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        from tasks.scaleout import executor
        from tasks.score import resolve_model

        need = needing_scores(cfg.mining, cfg.mining_systems(), cfg.mine.top_k, cfg.seed)
        kwargs: dict[str, Any] = dict(
            cfg_mining=cfg.mining,
            systems=cfg.mining_systems(),
            top_k=cfg.mine.top_k,
            seed=cfg.seed,
            negatives_dir=cfg.path("negatives"),
            collection=cfg.input_path("collection"),
            queries_path=cfg.input_path("queries_train"),
            qrels_path=cfg.input_path("qrels_train"),
            out_dir=cfg.path("mine_scores"),
            ce=cfg.cross_encoder,
            metrics_path=cfg.path("metrics") / "mine_scores.json",
            cache_dir=cfg.path("score_cache"),
        )
        if not need:  # no model, no executor: nothing to score
            run(**kwargs)
            return
        with executor(cfg.orchestration, device=cfg.cross_encoder.device) as ex:  # 1 worker per GPU
            run(**kwargs, model_path=resolve_model(cfg.cross_encoder.model, ROOT), executor=ex)

    return run_stage(args.params, work)


if __name__ == "__main__":
    # Run as the importable module, not as __main__: the shard function pickles by reference
    # (tasks.score.score_shard) to Dask or process workers (see tasks.score).
    from tasks.mine_scores import main as _main

    sys.exit(_main())
