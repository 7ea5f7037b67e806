"""Stage ``mine_export``: sentence-transformers' ``mine_hard_negatives`` datasets from our mined hits.

``sentence_transformers.util.mine_hard_negatives`` retrieves candidates with one embedding model,
optionally rescores them with a cross-encoder, filters and samples them, and returns one dataset
in one of four formats. This stage applies the same options (params section ``mining``, per
system ``mining.per_system.<system>``) to what the pipeline already has: each system's top
``mine.top_k`` hits per training query (``paths.negatives/<system>.parquet``, positives removed),
the cross-encoder scores of the pairs its options need (``paths.mine_scores/ce-scores.parquet``
from stage ``mine_scores``, model ``cross_encoder``: each window and the positives of the systems
with a filter or ``output_scores``, nothing otherwise, as ``mine_hard_negatives`` scores only
then), the qrels, the collection and the training queries. It writes, under ``paths.datasets``
(replaced as a whole, atomically), one Hugging Face dataset folder per system:
``<system>/README.md`` (a card whose ``configs:`` header makes
``datasets.load_dataset("<paths.datasets>/<system>", "<format>")`` work offline) and
``<system>/<format>/train-NNNNN-of-NNNNN.parquet``, and ``paths.metrics/mine_export.json``.

Per system and training query (qrels ``rel >= 1``; P its positives, pid ascending; m the lowest
CE score among them), in this order, as ``mine_hard_negatives`` does:

1. Candidates: the system's first ``range_max`` hits in rank order (``null`` = ``mine.top_k``;
   more is a config error). A pid of P among them is removed (the mining stages already do).
   ``mine_hard_negatives`` retrieves ``range_max + max_positives`` and keeps the best
   ``range_max`` non-positives by its sort score; our hits files hold exactly the first
   ``top_k`` non-positives, so the window is fixed by rank (the same set whenever the order is
   the system's own, and whenever the query's positives were all retrieved).
2. Filters, on the cross-encoder scores (raw logits, float32 arithmetic as in
   sentence-transformers' tensors), each removing candidates still in: ``absolute_margin``
   removes ``CE(neg) + absolute_margin > m``; ``relative_margin`` removes
   ``CE(neg) > m - |m| * relative_margin``; ``max_score`` removes ``CE(neg) > max_score``;
   ``min_score`` removes ``CE(neg) < min_score``. The metrics count each candidate under the
   first rule that removed it.
3. Order: with any filter on, sentence-transformers sorts the candidates by the cross-encoder
   score, so the remaining candidates are ordered by CE score descending (ties: system rank);
   with no filter, by the system's rank (its own score order).
4. ``range_min``: the first ``range_min`` candidates of that order are skipped (indexing the
   survivors of the filters, not the system's ranks, as sentence-transformers' ``topk`` then
   ``[:, range_min:]`` does).
5. ``sampling_strategy``: ``top`` keeps the first ``num_negatives``; ``random`` draws
   ``num_negatives`` of them without replacement (all when fewer remain) with
   ``random.Random`` seeded by sha256 of ``(seed, system, qid)`` (``mining.seed``, default the
   params' ``seed``), then puts them back in the order of step 3. The same inputs and params give
   the same draws and bytes, and a draw never depends on other queries or systems.

Formats (the columns ``mine_hard_negatives`` names for an input dataset with columns ``query``
and ``positive``, sentence-transformers' MS MARCO naming; scores are the CE logits as float64, as
its ``.item()`` / ``.tolist()`` give them; one row per positive of P where it says so):

- ``triplet``: ``query, positive, negative`` (+ ``scores: [CE(pos), CE(neg)]``): per positive,
  per kept negative; a query without a kept negative has no row.
- ``n-tuple``: ``query, positive, negative_1 .. negative_<num_negatives>`` (+ ``scores: [CE(pos),
  CE(neg_1), ...]``): per positive, only when all ``num_negatives`` were found (else dropped).
- ``labeled-pair``: ``query, positive, label`` (or ``score`` in its place): a row per positive
  (label 1), then a row per kept negative once per query (label 0). The ``positive`` column
  holds either (sentence-transformers' naming).
- ``labeled-list``: ``query, positive: [pos, neg...], labels: [1, 0, ...]`` (or ``scores``): per
  positive, when at least one negative was kept.

Differences from ``mine_hard_negatives``, by design: the candidates come from each system's own
ranking (BM25 or a dense model), not from one ``model`` given to the function; the scores that
filter and that ``output_scores`` writes are always the cross-encoder's (we have no system score
for the positives); a query without a positive, or without hits in the system, has no row.

The work streams query by query: the hits files and the CE scores are read in qid order side by
side (merge joins), and each format's rows go to its Parquet writer one row group at a time. In
memory: the qrels (as ``qid -> pids``), the texts of the ids rows can name (one Arrow string
array each for passages and queries), one row group per (system, format). Bad input fails with
one line naming the file (exit 1) and leaves the previous ``paths.datasets`` in place.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from tasks import provenance as prov
from tasks.cli import run_stage, stage_parser
from tasks.config import MINING_FORMATS, Config, Mining, MiningOptions
from tasks.hf_export import ScoreGroup, Shards, Texts, card_header, iter_score_groups, lookup, member
from tasks.io import DataError, atomic_dir, file_digest, write_json, write_text_atomic
from tasks.records import qrels_by_query, read_collection, read_qrels, read_queries, skipped_reason

log = logging.getLogger(__name__)

ANCHOR, POSITIVE = "query", "positive"  # the input columns mine_hard_negatives would be given
ROW_GROUP_CELLS = 150_000  # texts per Parquet row group
SHARD_BYTES = 1 << 30  # uncompressed bytes of rows per train-NNNNN file
TEXT_CHUNK = 100_000
SCORES_STAGE = "mine_scores"  # the stage that writes the scores this one reads
FILTERS = ("absolute_margin", "relative_margin", "max_score", "min_score")


# --------------------------------------------------------------------------- selection
@dataclass
class Counts:
    """One system's metrics: queries, candidates, what each rule dropped, what was kept."""

    queries: int = 0  # queries with a positive and at least one hit
    no_hits: int = 0  # queries with a positive but no hit of this system
    no_positive: int = 0  # hit lists of queries without a positive in the qrels (skipped)
    candidates: int = 0  # window size summed over queries (step 1)
    positives_in_hits: int = 0  # removed in step 1
    dropped: dict[str, int] = field(
        default_factory=lambda: {k: 0 for k in (*FILTERS, "range_min", "not_sampled")}
    )
    negatives_kept: int = 0
    short: int = 0  # queries with fewer than num_negatives kept
    rows: dict[str, int] = field(default_factory=dict)
    rows_dropped: dict[str, int] = field(default_factory=dict)  # (query, positive) rows a format left out


def draw_seed(seed: int, system: str, qid: int) -> int:
    """The random sampling seed of one (system, query): stable across runs, platforms and versions."""
    digest = hashlib.sha256(f"{seed}\0{system}\0{qid}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def select(
    neg_ce: np.ndarray | None,
    pos_ce: np.ndarray | None,
    n_candidates: int,
    opts: MiningOptions,
    rng: random.Random | None,
    counts: Counts,
) -> np.ndarray:
    """Positions (into the rank-ordered window of ``n_candidates``) of the kept negatives, in the
    order of step 3 (module docstring). ``neg_ce`` / ``pos_ce``: CE scores of the window and of the
    query's positives, needed when a filter is on; ``rng`` when sampling is random."""
    order = np.arange(n_candidates)
    if opts.filtered:
        assert neg_ce is not None and pos_ce is not None
        ce = neg_ce.astype(np.float32)
        m = np.float32(pos_ce.astype(np.float32).min())
        alive = np.ones(n_candidates, bool)
        rules = {
            "absolute_margin": lambda v: ce + np.float32(v) > m,
            "relative_margin": lambda v: ce > m - np.abs(m) * np.float32(v),
            "max_score": lambda v: ce > np.float32(v),
            "min_score": lambda v: ce < np.float32(v),
        }
        for name, removes in rules.items():
            value = getattr(opts, name)
            if value is not None:
                out = alive & removes(value)
                counts.dropped[name] += int(out.sum())
                alive &= ~out
        order = order[alive]
        order = order[np.argsort(-ce[order], kind="stable")]
    skipped = min(opts.range_min, len(order))
    counts.dropped["range_min"] += skipped
    order = order[skipped:]
    k = opts.num_negatives
    if len(order) > k:
        counts.dropped["not_sampled"] += len(order) - k
        if opts.sampling_strategy == "top":
            order = order[:k]
        else:
            assert rng is not None
            order = order[sorted(rng.sample(range(len(order)), k))]
    counts.negatives_kept += len(order)
    counts.short += len(order) < k
    return order


# --------------------------------------------------------------------------- formats
def schema(fmt: str, num_negatives: int, output_scores: bool) -> pa.Schema:
    """The columns and dtypes of one format, as ``mine_hard_negatives`` returns them."""
    text, floats, ints = pa.string(), pa.list_(pa.float64()), pa.list_(pa.int64())
    if fmt == "triplet":
        fields = [(ANCHOR, text), (POSITIVE, text), ("negative", text)]
        return pa.schema(fields + ([("scores", floats)] if output_scores else []))
    if fmt == "n-tuple":
        fields = [(ANCHOR, text), (POSITIVE, text)] + [
            (f"negative_{i}", text) for i in range(1, num_negatives + 1)
        ]
        return pa.schema(fields + ([("scores", floats)] if output_scores else []))
    if fmt == "labeled-pair":
        last = ("score", pa.float64()) if output_scores else ("label", pa.int64())
        return pa.schema([(ANCHOR, text), (POSITIVE, text), last])
    if fmt == "labeled-list":
        last = ("scores", floats) if output_scores else ("labels", ints)
        return pa.schema([(ANCHOR, text), (POSITIVE, pa.list_(text)), last])
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(MINING_FORMATS)})")


class Query(NamedTuple):
    """One query's selection: its positives and kept negatives (pids) with their CE scores
    (float64; zeros when no score was needed)."""

    qid: int
    pos: np.ndarray
    pos_ce: np.ndarray
    neg: np.ndarray
    neg_ce: np.ndarray


class FormatRows:
    """The buffered rows of one (system, format): ids, labels and scores, flushed one row group
    at a time to its :class:`~tasks.hf_export.Shards` with the texts resolved."""

    def __init__(
        self, fmt: str, opts: MiningOptions, out: Shards, texts: tuple[Texts, Texts], cells: int
    ) -> None:
        self.fmt, self.opts, self.out, self.texts = fmt, opts, out, texts
        self.group_cells = cells
        self.rows = self.dropped = 0
        self._reset()

    def _reset(self) -> None:
        self.qids: list[int] = []
        self.lengths: list[int] = []
        self.docs: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.cells = 0

    def _row(self, qid: int, docs: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> None:
        self.qids.append(qid)
        self.lengths.append(len(docs))
        self.docs.append(docs)
        self.labels.append(labels)
        self.scores.append(scores)
        self.cells += len(docs) + 1
        self.rows += 1

    def add(self, q: Query) -> None:
        """The rows of one query (module docstring, Formats)."""
        one, zero = np.ones(1, np.int64), np.zeros(len(q.neg), np.int64)
        if self.fmt == "labeled-pair":
            for pid, ce in zip(q.pos, q.pos_ce, strict=True):
                self._row(q.qid, np.asarray([pid]), one, np.asarray([ce]))
            for pid, ce in zip(q.neg, q.neg_ce, strict=True):
                self._row(q.qid, np.asarray([pid]), zero[:1], np.asarray([ce]))
        elif self.fmt == "triplet":
            if not len(q.neg):
                self.dropped += len(q.pos)
            for pid, ce in zip(q.pos, q.pos_ce, strict=True):
                for nid, nce in zip(q.neg, q.neg_ce, strict=True):
                    self._row(q.qid, np.asarray([pid, nid]), one, np.asarray([ce, nce]))
        elif (self.fmt == "n-tuple" and len(q.neg) < self.opts.num_negatives) or (
            self.fmt == "labeled-list" and not len(q.neg)
        ):
            self.dropped += len(q.pos)
        else:  # n-tuple with every negative, labeled-list with at least one
            for pid, ce in zip(q.pos, q.pos_ce, strict=True):
                self._row(q.qid, np.r_[pid, q.neg], np.r_[one, zero], np.r_[ce, q.neg_ce])
        if self.cells >= self.group_cells:
            self.flush()

    def flush(self) -> None:
        if not self.qids:
            return
        queries, passages = self.texts
        names = self.out.schema.names
        q = np.asarray(self.qids, np.int64)
        docs = np.concatenate(self.docs).astype(np.int64)
        offsets = pa.array(np.r_[0, np.cumsum(self.lengths)].astype(np.int32))
        cols: list[pa.Array] = [queries.take(q)]
        if self.fmt == "labeled-list":
            cols.append(pa.ListArray.from_arrays(offsets, passages.take(docs)))
            if self.opts.output_scores:
                cols.append(
                    pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(self.scores), pa.float64()))
                )
            else:
                cols.append(
                    pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(self.labels), pa.int64()))
                )
        else:
            width = self.lengths[0]
            grid = docs.reshape(-1, width)
            cols.extend(passages.take(grid[:, j]) for j in range(width))
            if self.fmt == "labeled-pair":
                values = np.concatenate(self.scores if self.opts.output_scores else self.labels)
                cols.append(pa.array(values, self.out.schema.field(names[-1]).type))
            elif self.opts.output_scores:
                cols.append(
                    pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(self.scores), pa.float64()))
                )
        self.out.write(pa.table(dict(zip(names, cols, strict=True)), schema=self.out.schema))
        self._reset()


# --------------------------------------------------------------------------- inputs
class HitGroup(NamedTuple):
    qid: int
    pids: np.ndarray  # rank order


def iter_hit_groups(path: Path, batch_rows: int = 1 << 20) -> Iterator[HitGroup]:
    """A hits file (``qid, rank, pid, score``, sorted by (qid, rank)) one query at a time."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc}); rerun the mining stage") from None
    missing = {"qid", "rank", "pid"} - set(pf.schema_arrow.names)
    if missing:
        raise DataError(f"{path}: hits file lacks column(s) {sorted(missing)}")
    carry_q = carry_r = carry_p = np.zeros(0, np.int64)
    row = 0
    batches = pf.iter_batches(batch_size=batch_rows, columns=["qid", "rank", "pid"])
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"{path}: damaged Parquet file after row {row} ({exc}); rerun the mining stage"
            ) from None
        if batch is None:
            break
        cols = [batch.column(c).to_numpy().astype(np.int64) for c in ("qid", "rank", "pid")]
        q, r, p = (np.concatenate([c0, c1]) for c0, c1 in zip((carry_q, carry_r, carry_p), cols, strict=True))
        dq = np.diff(q)
        bad = (dq < 0) | ((dq == 0) & (np.diff(r) <= 0))
        if bad.any():
            i = int(np.argmax(bad)) + 1
            raise DataError(
                f"{path}: row {row - len(carry_q) + i + 1} (qid {q[i]}, rank {r[i]}) breaks the (qid, rank) "
                "order of a hits file; rerun the mining stage"
            )
        row += batch.num_rows
        starts = np.r_[0, np.flatnonzero(dq) + 1]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            yield HitGroup(int(q[a]), p[a:b])
        tail = int(starts[-1])
        carry_q, carry_r, carry_p = q[tail:], r[tail:], p[tail:]
    if len(carry_q):
        yield HitGroup(int(carry_q[0]), carry_p)


def window_ids(path: Path, range_max: int) -> tuple[np.ndarray, np.ndarray]:
    """The unique qids of a hits file and pids of its first ``range_max`` hits per query: the
    texts rows may name (two int64 columns read at once: 25M hits are 400 MB)."""
    table = pq.read_table(path, columns=["qid", "rank", "pid"])
    rank = table.column("rank").to_numpy()
    return np.unique(table.column("qid").to_numpy()), np.unique(
        table.column("pid").to_numpy()[rank <= range_max]
    )


def load_texts(path: Path, need: np.ndarray, queries: bool) -> Texts:
    """The texts of the sorted unique ids ``need`` from a collection or queries file, streamed;
    an id missing from the file raises (the inputs come from another collection/query set)."""
    ids: list[np.ndarray] = []
    texts: list[pa.Array] = []
    batch_ids: list[int] = []
    batch_texts: list[str] = []

    def flush() -> None:
        arr = np.asarray(batch_ids, np.int64)
        keep = member(arr, need)
        ids.append(arr[keep])
        texts.append(pa.array(batch_texts, pa.large_string()).filter(pa.array(keep)))
        batch_ids.clear()
        batch_texts.clear()

    records = read_queries(path) if queries else read_collection(path)
    for ident, text in tqdm(records, desc=path.name, unit=" lines", mininterval=5):
        batch_ids.append(ident)
        batch_texts.append(text)
        if len(batch_ids) == TEXT_CHUNK:
            flush()
    flush()
    all_ids = np.concatenate(ids)
    arr = pa.concat_arrays(texts)
    order = np.argsort(all_ids, kind="stable")
    all_ids, arr = all_ids[order], arr.take(pa.array(order))
    missing = need[~member(need, all_ids)]
    if len(missing):
        kind = "qid" if queries else "pid"
        raise DataError(
            f"{path}: {len(missing)} {kind}(s) of the qrels/hits are not in this file, e.g. "
            f"{missing[:5].tolist()}; were the inputs built from another collection/query set?"
        )
    return Texts(all_ids, arr)


# --------------------------------------------------------------------------- stage
@dataclass
class System:
    """One system's open state during the pass: its options, hits stream and writers."""

    name: str
    opts: MiningOptions
    groups: Iterator[HitGroup]
    head: HitGroup | None
    formats: dict[str, FormatRows]
    counts: Counts = field(default_factory=Counts)


def _card(
    system: str, opts: MiningOptions, counts: Counts, outs: dict[str, Shards], inputs: dict[str, str]
) -> str:
    header = card_header(f"MS MARCO hard negatives mined from {system}", outs)
    rows = "".join(
        f"| `{fmt}` | {', '.join(out.schema.names)} | {out.rows} | {counts.rows_dropped.get(fmt, 0)} |\n"
        for fmt, out in outs.items()
    )
    options = "".join(f"- {k}: {'null' if v is None else v}\n" for k, v in opts.model_dump().items())
    empty = [fmt for fmt in opts.formats if fmt not in outs]
    left_out = (
        f"Formats without a row (left out: no empty split loads): {', '.join(empty)}.\n\n" if empty else ""
    )
    dropped = ", ".join(f"{k} {v}" for k, v in counts.dropped.items())
    return (
        f"{header}\n# MS MARCO hard negatives mined from {system}\n\n"
        "Generated by `python -m tasks.mine_export` (hardnegs): sentence-transformers' `mine_hard_negatives` "
        f"options applied to the `{system}` hits (top `mine.top_k`, positives removed) and the cross-encoder "
        "scores; the rules are in the module's docstring.\n\n"
        "| config | columns | rows | (query, positive) rows left out |\n|---|---|---|---|\n"
        f"{rows}\n"
        f"{left_out}"
        f"Queries: {counts.queries} (with a positive and a hit); "
        f"with a positive but no hit: {counts.no_hits}. "
        f"Candidates: {counts.candidates}; dropped: {dropped}; negatives kept: {counts.negatives_kept}; "
        f"queries with fewer than {opts.num_negatives}: {counts.short}.\n\n"
        "```python\nfrom datasets import load_dataset\n"
        f'ds = load_dataset("<this folder or hub id>", "{next(iter(outs))}", split="train")\n```\n\n'
        f"## Options ({system})\n\n{options}\n"
        "## Inputs (md5)\n\n" + "".join(f"- `{name}`: {md5}\n" for name, md5 in inputs.items())
    )


def run(
    cfg_mining: Mining,
    systems: list[str],
    top_k: int,
    seed: int,
    negatives_dir: Path,
    scores_path: Path,
    collection: Path,
    queries_path: Path,
    qrels_path: Path,
    out_dir: Path,
    metrics_path: Path | None = None,
    row_group_cells: int = ROW_GROUP_CELLS,
    shard_bytes: int = SHARD_BYTES,
    provenance: prov.StageRecord | None = None,
) -> dict[str, Counts]:
    """Mine every system of ``systems`` (module docstring) into ``out_dir``; returns the counts.

    ``top_k``, ``seed``: ``mine.top_k`` and the params' ``seed`` (the options' defaults).
    ``row_group_cells`` / ``shard_bytes``: texts per row group and bytes per file (small in tests).
    ``provenance``: the stage's record (the CLI passes one): ``provenance.json`` in each folder.
    """
    opts = {s: cfg_mining.options(s, top_k, seed) for s in systems}
    positives = qrels_by_query(read_qrels(qrels_path))
    if not positives:
        raise DataError(f"{qrels_path}: no judgement with relevance >= 1: nothing to mine")
    live: list[str] = []
    skipped: dict[str, str] = {}
    for s in systems:
        path = negatives_dir / f"{s}.parquet"
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no hits of system {s}; run its mining stage (or drop it from mining.systems)"
            )
        reason = skipped_reason(path)
        if reason is not None:
            log.warning("%s: system %s was skipped by its mining stage (%s): not mined", path, s, reason)
            skipped[s] = reason
        else:
            live.append(s)
    if not live:
        raise DataError(f"{negatives_dir}: every system of {systems} was skipped; nothing to mine")
    ids = [window_ids(negatives_dir / f"{s}.parquet", opts[s].range_max or top_k) for s in live]
    hit_qids = np.unique(np.concatenate([q for q, _ in ids]))
    qids = np.asarray(list(positives), np.int64)
    qids = qids[member(qids, hit_qids)]  # queries with a positive and a hit: the ones with rows
    pos_ids = [np.asarray(positives[q], np.int64) for q in qids.tolist()]
    passages = load_texts(
        collection, np.unique(np.concatenate([*pos_ids, *(p for _, p in ids)])), queries=False
    )
    queries = load_texts(queries_path, qids, queries=True)
    need_ce = any(opts[s].filtered or opts[s].output_scores for s in live)

    writers: list[Shards] = []
    state: dict[str, System] = {}
    counts: dict[str, Counts] = {}
    try:
        with atomic_dir(out_dir) as stage:
            for s in live:
                formats: dict[str, FormatRows] = {}
                for fmt in opts[s].formats:
                    writers.append(
                        Shards(
                            stage / s / fmt,
                            schema(fmt, opts[s].num_negatives, opts[s].output_scores),
                            shard_bytes,
                        )
                    )
                    formats[fmt] = FormatRows(fmt, opts[s], writers[-1], (queries, passages), row_group_cells)
                groups = iter_hit_groups(negatives_dir / f"{s}.parquet")
                state[s] = System(s, opts[s], groups, next(groups, None), formats)
            score_groups = iter_score_groups(scores_path, stage=SCORES_STAGE) if need_ce else iter(())
            group: ScoreGroup | None = next(score_groups, None)
            for qid, pos_list in tqdm(positives.items(), desc="mine_export", unit=" queries", mininterval=5):
                while group is not None and group.qid < qid:
                    group = next(score_groups, None)
                mine = group if group is not None and group.qid == qid else None
                pos = np.asarray(pos_list, np.int64)
                for sys_ in state.values():
                    while sys_.head is not None and sys_.head.qid < qid:
                        sys_.counts.no_positive += 1
                        sys_.head = next(sys_.groups, None)
                    if sys_.head is None or sys_.head.qid != qid:
                        sys_.counts.no_hits += 1
                        continue
                    _mine_query(sys_, qid, pos, sys_.head.pids, mine, scores_path)
                    sys_.head = next(sys_.groups, None)
            for sys_ in state.values():
                while sys_.head is not None:
                    sys_.counts.no_positive += 1
                    sys_.head = next(sys_.groups, None)

            md5 = {p.name: file_digest(p) for p in (scores_path, collection, queries_path, qrels_path)}
            md5.update({f"{s}.parquet": file_digest(negatives_dir / f"{s}.parquet") for s in live})
            written = 0
            for s, sys_ in state.items():
                outs: dict[str, Shards] = {}
                for name, rows in sys_.formats.items():
                    rows.flush()
                    rows.out.close()
                    sys_.counts.rows[name] = rows.rows
                    sys_.counts.rows_dropped[name] = rows.dropped
                    if rows.rows:
                        outs[name] = rows.out
                    else:
                        log.warning("%s: format %s has no row (left out of the card)", s, name)
                if not outs:
                    log.warning("%s: no row in any format: no dataset folder", s)
                    continue
                written += 1
                inputs = {
                    k: md5[k]
                    for k in sorted(md5)
                    if not k.endswith(".parquet") or k in (f"{s}.parquet", scores_path.name)
                }
                card = _card(s, sys_.opts, sys_.counts, outs, inputs)
                if provenance is not None:
                    folder = stage / s
                    files = {out_dir / s / p.relative_to(folder): p for p in prov.files_under(folder)}
                    card += "\n" + prov.card_section(provenance.write(files, folder / prov.DIR_SIDECAR))
                with write_text_atomic(stage / s / "README.md", gz=False) as fh:
                    fh.write(card)
            if not written:
                raise DataError(
                    f"{negatives_dir}: no row in any format of any system {live}; check the mining options "
                    "(filters, range_min, num_negatives) and the hits"
                )
            counts = {s: sys_.counts for s, sys_ in state.items()}
            if metrics_path is not None:
                metrics = {s: asdict(c) for s, c in counts.items()}
                metrics.update({s: {"skipped": reason} for s, reason in skipped.items()})
                write_json(metrics_path, metrics)
    finally:
        for writer in writers:
            writer.abort()
    for s, c in counts.items():
        log.info(
            "%s: %d queries, %d of %d candidates kept, rows %s",
            s,
            c.queries,
            c.negatives_kept,
            c.candidates,
            ", ".join(f"{k} {v}" for k, v in c.rows.items()),
        )
    return counts


def _mine_query(
    sys_: System, qid: int, pos: np.ndarray, hits: np.ndarray, mine: ScoreGroup | None, scores_path: Path
) -> None:
    """Steps 1-5 and the rows of every format, for one query of one system."""
    opts, counts = sys_.opts, sys_.counts
    window = hits[: opts.range_max]
    is_pos = member(window, pos)
    if is_pos.any():
        counts.positives_in_hits += int(is_pos.sum())
        window = window[~is_pos]
    counts.queries += 1
    counts.candidates += len(window)
    scored = opts.filtered or opts.output_scores
    pos_ce = lookup(mine, qid, pos, scores_path, SCORES_STAGE) if scored else np.zeros(len(pos))
    neg_ce = np.zeros(len(window))
    if scored and len(window):
        neg_ce = lookup(mine, qid, window, scores_path, SCORES_STAGE)
    rng = None
    if opts.sampling_strategy == "random":
        assert opts.seed is not None  # resolved by Mining.options
        rng = random.Random(draw_seed(opts.seed, sys_.name, qid))
    kept = select(neg_ce, pos_ce, len(window), opts, rng, counts)
    query = Query(qid, pos, pos_ce, window[kept], neg_ce[kept])
    for rows in sys_.formats.values():
        rows.add(query)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.mine_export",
        "Apply sentence-transformers' mine_hard_negatives options (params section `mining`, overrides per "
        "system under mining.per_system.<system>) to each system's mined hits and the cross-encoder scores, "
        "and write one Hugging Face dataset per system under paths.datasets/<system> (a card and "
        "<format>/train-*.parquet) plus paths.metrics/mine_export.json. Options, in the order they apply: "
        "range_max: candidates are the system's first range_max hits, positives removed (null = mine.top_k); "
        "absolute_margin: drop CE(neg) + margin > m, m = min CE(pos) of the query; relative_margin: drop "
        "CE(neg) > m - |m| * margin; max_score: drop CE(neg) > max_score; "
        "min_score: drop CE(neg) < min_score "
        "(each null = off; with any on, candidates are ordered by CE score, else by the system's rank); "
        "range_min: skip the first range_min remaining candidates; num_negatives: negatives per query; "
        "sampling_strategy: top (the first num_negatives) or random (drawn, seeded per (seed, system, qid); "
        "seed: null = params seed); formats: triplet (query, positive, negative), n-tuple (query, positive, "
        "negative_1..n; only queries with all n), labeled-pair (query, positive, label), labeled-list "
        "(query, positive list, labels list); output_scores: add the CE scores (triplet/n-tuple: a scores "
        "column; labeled-*: score(s) replace label(s)); systems: all or a list.",
        "python -m tasks.mine_export --params params.yaml",
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> dict[str, Counts]:
        return run(
            cfg.mining,
            cfg.mining_systems(),
            cfg.mine.top_k,
            cfg.seed,
            cfg.path("negatives"),
            cfg.path("mine_scores") / "ce-scores.parquet",
            cfg.input_path("collection"),
            cfg.input_path("queries_train"),
            cfg.input_path("qrels_train"),
            cfg.path("datasets"),
            cfg.path("metrics") / "mine_export.json",
            provenance=prov.collect(cfg, "mine_export", prov.stage_models(cfg, True, cross_encoder=True)),
        )

    return run_stage(args.params, work)


if __name__ == "__main__":
    sys.exit(main())
