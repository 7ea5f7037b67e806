"""Stage ``ce_rerank``: the cross-encoder re-ranks each query's candidates (for ``evaluate``).

For each evaluation set (``dev``: ``inputs.queries_dev``; ``dl19``: ``inputs.queries_dl19``) it
reads the set's candidates (:meth:`tasks.config.Config.candidates`: ``evaluate.dev_candidates`` /
``evaluate.dl19_candidates``). Our BM25 run (``paths.runs/bm25/<set>.full.trec``) is ranked and is
cut at each query's top ``evaluate.ce_rerank_depth``; an official list (``inputs.top1000_dev``,
``inputs.top1000_dl19``) is in random order, so EVERY candidate of every query is re-ranked, as
the official re-ranking task does (no depth applies). The pairs are scored with the cross-encoder
of ``cross_encoder.*`` (the same length-bucketed, executor-dispatchable shards as the ``score``
stage) into ``paths.runs/cross-encoder/<set>.rerank.trec`` sorted by score (ties: pid ascending),
tag ``cross-encoder``, and ``<set>.rerank.json`` beside it records what was re-ranked (the
candidate file, ordered or not, the depth, queries, candidates listed and re-ranked). Missing
query or passage ids raise a DataError naming them.

Resumable like ``score``: the shards go through the same content-addressed cache
``paths.score_cache`` (:func:`tasks.score.score_resumable`, keyed by the model identity with
the resolved device/dtype and by the shard's pairs and texts), which DVC does not delete, so a
rerun after kill -9 -- by ``dvc repro ce_rerank``, the flow or this CLI -- scores only the missing
shards and writes the same bytes. The CLI holds the stage lock (:mod:`tasks.locks`, exit 4).

With ``cross_encoder.addressing: pair`` the scores are cached per (query text, passage text)
instead, each pair scored alone (a batch of one: a score's bits then depend on the pair only,
not on its batch neighbours), in the same store as ``score`` (``paths.score_cache/pairs/``): a
refresh re-scores only the candidates it has never seen and still writes the bytes of a run with
an empty cache. Each run calls :func:`tasks.io.record_work` (``ce_rerank``: pairs scored of the
distinct pairs, with the candidate file's name).
"""

from __future__ import annotations

import logging
import sys
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from tasks.cli import run_stage, stage_parser
from tasks.config import ROOT, Config, ConfigError, CrossEncoderCfg
from tasks.io import record_work, write_json
from tasks.records import Candidates, Hit, read_candidates, write_run
from tasks.score import ModelSpec, load_texts, score_resumable

log = logging.getLogger(__name__)

SETS = ("dev", "dl19")  # every set a profile can have; Config.eval_sets says which it has
TAG = "cross-encoder"


def top_hits(candidates: Candidates) -> tuple[np.ndarray, np.ndarray]:
    """(qid, pid) of every candidate to re-rank, qids ascending (pids in the list's order)."""
    qids = np.fromiter((q for q, pids in candidates.sets.items() for _ in pids), np.int64, candidates.kept)
    pids = np.fromiter((p for plist in candidates.sets.values() for p in plist), np.int64, candidates.kept)
    return qids, pids


def run(
    run_path: Path,
    queries_path: Path,
    collection: Path,
    out_path: Path,
    depth: int,
    ce: CrossEncoderCfg,
    model_path: str | None = None,
    executor: Executor | None = None,
    cache_dir: Path | None = None,
) -> int:
    """Re-rank one candidate list (a BM25 run cut at ``depth``, or an official ``top1000`` list
    in full); returns the number of queries written.

    ``cache_dir`` (``paths.score_cache``) keeps finished shards to resume from; ``None`` keeps
    them in memory only.
    """
    candidates = read_candidates(run_path, depth)
    log.info("%s", candidates.describe())
    qids, pids = top_hits(candidates)
    queries, passages = load_texts(collection, queries_path, qids, pids, str(run_path))
    spec = ModelSpec.from_cfg(ce, model_path)  # resolves device/dtype here, once
    done = score_resumable(
        qids, pids, queries, passages, spec, ce.shard_size, cache_dir, executor, f"rerank {run_path.name}"
    )
    record_work(
        "ce_rerank", "pairs", done=done.pairs_scored, total=done.pairs_total, candidates=run_path.name
    )
    scores = done.scores
    order = np.lexsort((pids, -scores.astype(np.float64), qids))
    hits: list[Hit] = []
    rank = 0
    for i in order.tolist():
        rank = 1 if not hits or hits[-1].qid != qids[i] else rank + 1
        hits.append(Hit(int(qids[i]), int(pids[i]), rank, float(scores[i])))
    write_run(out_path, hits, TAG)
    write_json(out_path.with_suffix(".json"), candidates.summary())
    n_queries = len(candidates.sets)
    log.info("%s: re-ranked %d candidates of %d queries -> %s", run_path.name, len(qids), n_queries, out_path)
    return n_queries


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.rerank",
        "Re-rank each dev/DL19 query's candidates with the cross-encoder: the top evaluate.ce_rerank_depth "
        "of our BM25 run, or ALL of the official top-1000 list (evaluate.dev_candidates / dl19_candidates: "
        "top1000; it is in random order, so no depth applies); write paths.runs/cross-encoder/"
        "{dev,dl19}.rerank.trec (+ .json: what was re-ranked) for the evaluate stage.",
        "python -m tasks.rerank --params params.yaml --sets dev dl19",
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=SETS,
        default=None,
        help="evaluation sets (default: the profile's: dev and dl19 on MS MARCO, dev on your own corpus)",
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        from tasks.scaleout import executor
        from tasks.score import resolve_model

        names = args.sets or cfg.eval_sets
        absent = [n for n in names if n not in cfg.eval_sets]
        if absent:
            raise ConfigError(f"profile {cfg.profile!r} has no evaluation set {', '.join(absent)}")
        with executor(cfg.orchestration, device=cfg.cross_encoder.device) as ex:  # 1 worker per GPU
            for name in names:
                run(
                    cfg.candidates(name),
                    cfg.eval_queries()[name],
                    cfg.input_path("collection"),
                    cfg.path("runs") / TAG / f"{name}.rerank.trec",
                    cfg.evaluate.ce_rerank_depth,
                    cfg.cross_encoder,
                    model_path=resolve_model(cfg.cross_encoder.model, ROOT),
                    executor=ex,
                    cache_dir=cfg.path("score_cache"),
                )

    return run_stage(args.params, work, lock="ce_rerank")  # the lock carries dvc.yaml's stage name


if __name__ == "__main__":
    sys.exit(main())
