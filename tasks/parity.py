"""parity: how close two runs came, or a run and the published files.

Compares two sides, each a hard-negatives file (``msmarco-hard-negatives.jsonl.gz``, ours or
the published one) and/or cross-encoder scores (a score pickle ``*.pkl[.gz]``, ours or the
published ``cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz``; or this project's scores
table, ``ce-scores.parquet`` or the ``paths.scores`` directory holding it):

- queries: in both files, only in one (count and the first qids), positives that differ;
- per system, over the queries where both sides have a non-empty list, on the top ``k``
  (default 50) of each list taken as sets: mean overlap@k = ``|A & B| / min(k, |A|, |B|)``
  (1.0 when the shorter list is inside the longer one), mean Jaccard = ``|A & B| / |A | B|``,
  and how many lists are identical (same pids, same order); queries where only one side has
  a list for that system; per side, negatives that are positives of their own query (the
  published file has some; ``merge`` drops them from ours);
- scores: pairs in both, only in one, Pearson and Spearman correlation (average ranks for
  ties) and max / mean ``|delta|`` over the pairs in both.

Outputs (``out_dir``): ``parity.json`` (the whole report), ``parity.md`` (tables that fit a
100-column window) and ``parity.png``; as a DVC stage also ``paths.metrics/parity.json``, the
figures alone (:func:`metrics_of`), for ``dvc metrics show / diff``. Means are exact
(per-query ratios are counted as integer fractions and summed with ``math.fsum``), so the
same inputs give the same bytes whatever the order of the files.

Memory. Negatives stream: both files are read line by line and joined on qid, in step when
both are in qid order (ours always are; the contract says so); when one is not, both are
first partitioned by ``qid % n`` into gzip buckets in a scratch directory next to the
outputs (disk: about the size of both inputs; memory: one bucket of each side, ~16 MiB of
compressed input each; 370 MB RSS measured). Scores go into numpy arrays (an 8-byte key and
an 8-byte score per pair and side), joined by binary search in chunks; then only the common
scores stay, with ranks and a sort order for Spearman. Measured peak RSS with 13M pairs a
side: 1.2 GB for two Parquet tables (~80 bytes a pair: ~13 GB for 160M), 1.7 GB with one
pickle. A pickle is loaded whole first (``tasks.scores_pickle.load_scores_pickle``, the
restricted unpickler: dicts of Python numbers, ~100 bytes a pair, so ~16-20 GB for the
published 160M-pair pickle, as for any ``pickle.load`` of it), then emptied query by query
into the arrays.

    python -m tasks.parity --a-negatives run1/msmarco-hard-negatives.jsonl.gz \\
        --b-negatives msmarco-hard-negatives.jsonl.gz --a-scores data/msmarco/scores \\
        --b-scores cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz --out parity/ \\
        --label-a "this run" --label-b published
    python -m tasks.parity --params params.yaml   # the DVC stage: parity.reference_* in params
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import io
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from tasks.cli import LOG_FORMAT, ignore_sigxfsz, report_errors, run_stage, stage_parser
from tasks.config import ROOT, Config
from tasks.io import DataError, atomic_dir, file_digest, scratch_dir, write_bytes_atomic, write_json
from tasks.records import HardNegatives, read_hard_negatives, read_scores
from tasks.scores_pickle import load_scores_pickle

log = logging.getLogger(__name__)

NEGATIVES_NAME = "msmarco-hard-negatives.jsonl.gz"
SCORES_TABLE = "ce-scores.parquet"
BUCKET_BYTES = 16 << 20  # compressed input per bucket when a file is not in qid order
EXAMPLES = 5  # qids listed for "only in one side"
_QID_LIMIT = 1 << 31  # (qid, pid) packed into one int64 key: qid < 2^31, pid < 2^32
_PID_LIMIT = 1 << 32
_HIST_BINS = 100
_CHUNK = 1 << 22  # pairs per chunk of the score join and the histogram


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a name for the report and the files it has."""

    label: str
    negatives: Path | None = None
    scores: Path | None = None


# =========================================================================== negatives
class _Unordered(Exception):
    """A hard-negatives file is not in increasing qid order (the in-step join cannot run)."""


def _in_order(path: Path) -> Iterator[HardNegatives]:
    last: int | None = None
    for rec in read_hard_negatives(path):
        if last is not None and rec.qid <= last:
            raise _Unordered(f"{path}: qid {rec.qid} after {last}")
        last = rec.qid
        yield rec


Joined = Iterator[tuple[int, HardNegatives | None, HardNegatives | None]]


def _join_in_step(a: Iterator[HardNegatives], b: Iterator[HardNegatives]) -> Joined:
    """Merge-join two qid-ordered streams: ``(qid, record of a or None, record of b or None)``."""
    ra, rb = next(a, None), next(b, None)
    while ra is not None or rb is not None:
        if rb is None or (ra is not None and ra.qid < rb.qid):
            assert ra is not None
            yield ra.qid, ra, None
            ra = next(a, None)
        elif ra is None or rb.qid < ra.qid:
            yield rb.qid, None, rb
            rb = next(b, None)
        else:
            yield ra.qid, ra, rb
            ra, rb = next(a, None), next(b, None)


def _join_by_buckets(a_path: Path, b_path: Path, scratch: Path, buckets: int) -> Joined:
    """The join for files not in qid order: partition both by ``qid % buckets``, then join
    bucket by bucket (each bucket in qid order). A repeated qid raises, naming the file."""
    for side, path in (("a", a_path), ("b", b_path)):
        outs = [
            gzip.open(scratch / f"{side}-{i}.jsonl.gz", "wt", compresslevel=1, encoding="utf-8")
            for i in range(buckets)
        ]
        try:
            for rec in tqdm(read_hard_negatives(path), desc=f"partition {path.name}", unit="query"):
                outs[rec.qid % buckets].write(json.dumps([rec.qid, rec.pos, rec.neg]) + "\n")
        finally:
            for fh in outs:
                fh.close()
    for i in range(buckets):
        sides = []
        for side, path in (("a", a_path), ("b", b_path)):
            records: dict[int, HardNegatives] = {}
            with gzip.open(scratch / f"{side}-{i}.jsonl.gz", "rt", encoding="utf-8") as fh:
                for line in fh:
                    qid, pos, neg = json.loads(line)
                    if qid in records:
                        raise DataError(f"{path}: qid {qid} has more than one line; a query has one line")
                    records[qid] = HardNegatives(qid, pos, neg)
            sides.append(records)
        da, db = sides
        for qid in sorted(da.keys() | db.keys()):
            yield qid, da.pop(qid, None), db.pop(qid, None)


def _mean(fractions: Counter[tuple[int, int]]) -> float | None:
    """Exact mean of per-query ratios counted as ``(numerator, denominator) -> queries``."""
    total = sum(fractions.values())
    if not total:
        return None
    return math.fsum(c * n / d for (n, d), c in sorted(fractions.items())) / total


SIDE_KEYS = ("lists", "negatives", "positives_in_negatives", "queries_with_positive_in_negatives")


class _SideCounts:
    """Per system on one side: lists, negatives, negatives that are positives of the query
    (counts in the order of :data:`SIDE_KEYS`)."""

    def __init__(self) -> None:
        self.systems: dict[str, list[int]] = {}

    def add(self, rec: HardNegatives) -> None:
        pos = set(rec.pos)
        for system, pids in rec.neg.items():
            c = self.systems.get(system)
            if c is None:
                c = self.systems[system] = [0, 0, 0, 0]
            if not pids:
                continue
            c[0] += 1
            c[1] += len(pids)
            if not pos.isdisjoint(pids):  # rare: count only then
                c[2] += sum(map(pos.__contains__, pids))
                c[3] += 1

    def get(self, system: str) -> dict[str, int]:
        return dict(zip(SIDE_KEYS, self.systems.get(system, [0, 0, 0, 0]), strict=True))


class _SystemPair:
    """One system's comparison: counts, and the per-query ratios as integer fractions."""

    __slots__ = ("compared", "identical", "only_a", "only_b", "overlap", "jaccard")

    def __init__(self) -> None:
        self.compared = self.identical = self.only_a = self.only_b = 0
        self.overlap: Counter[tuple[int, int]] = Counter()
        self.jaccard: Counter[tuple[int, int]] = Counter()


class _NegativesComparison:
    def __init__(self, k: int) -> None:
        self.k = k
        self.sides = (_SideCounts(), _SideCounts())
        self.queries: Counter[str] = Counter()
        self.only: tuple[list[int], list[int]] = ([], [])  # max-heaps (negated) of the smallest qids
        self.per_system: dict[str, _SystemPair] = {}

    def _note_only(self, which: int, qid: int) -> None:
        heap = self.only[which]
        if len(heap) < EXAMPLES:
            heapq.heappush(heap, -qid)
        elif -heap[0] > qid:
            heapq.heapreplace(heap, -qid)

    def add(self, qid: int, ra: HardNegatives | None, rb: HardNegatives | None) -> None:
        for which, rec in enumerate((ra, rb)):
            if rec is not None:
                self.sides[which].add(rec)
        if ra is None or rb is None:
            which = 0 if rb is None else 1
            self.queries[("only_a", "only_b")[which]] += 1
            self._note_only(which, qid)
            return
        self.queries["both"] += 1
        self.queries["positives_differ"] += set(ra.pos) != set(rb.pos)
        k = self.k
        for system in ra.neg.keys() | rb.neg.keys():
            c = self.per_system.get(system)
            if c is None:
                c = self.per_system[system] = _SystemPair()
            la, lb = ra.neg.get(system), rb.neg.get(system)
            if not (la and lb):
                if la:
                    c.only_a += 1
                elif lb:
                    c.only_b += 1
                continue
            ta, tb = la[:k], lb[:k]
            sa, sb = set(ta), set(tb)
            common = len(sa & sb)
            c.overlap[(common, min(len(sa), len(sb)))] += 1
            c.jaccard[(common, len(sa) + len(sb) - common)] += 1
            c.compared += 1
            c.identical += ta == tb

    def result(self) -> dict[str, Any]:
        k = self.k
        names = sorted(self.per_system.keys() | self.sides[0].systems.keys() | self.sides[1].systems.keys())
        systems: dict[str, Any] = {}
        for name in names:
            c = self.per_system.get(name) or _SystemPair()
            overlap, jaccard = _mean(c.overlap), _mean(c.jaccard)
            systems[name] = {
                "queries_compared": c.compared,
                f"mean_overlap@{k}": None if overlap is None else round(overlap, 6),
                f"mean_jaccard@{k}": None if jaccard is None else round(jaccard, 6),
                "identical_lists": c.identical,
                "only_a": c.only_a,
                "only_b": c.only_b,
                "a": self.sides[0].get(name),
                "b": self.sides[1].get(name),
            }
        both = self.queries["both"]
        return {
            "k": k,
            "queries": {
                "a": both + self.queries["only_a"],
                "b": both + self.queries["only_b"],
                "both": both,
                "only_a": self.queries["only_a"],
                "only_b": self.queries["only_b"],
                "only_a_first": sorted(-q for q in self.only[0]),
                "only_b_first": sorted(-q for q in self.only[1]),
                "positives_differ": self.queries["positives_differ"],
            },
            "systems": systems,
        }


def compare_negatives(
    a: Path, b: Path, k: int, scratch_root: Path, bucket_bytes: int = BUCKET_BYTES
) -> dict[str, Any]:
    """The negatives part of the report (see the module docstring)."""

    def consume(joined: Joined) -> dict[str, Any]:
        comparison = _NegativesComparison(k)
        for qid, ra, rb in tqdm(joined, desc="parity: negatives", unit="query", dynamic_ncols=True):
            comparison.add(qid, ra, rb)
        return comparison.result()

    try:
        return consume(_join_in_step(_in_order(a), _in_order(b)))
    except _Unordered as exc:
        buckets = max(1, math.ceil(max(a.stat().st_size, b.stat().st_size) / bucket_bytes))
        log.info("%s: not in qid order; joining through %d qid buckets on disk", exc, buckets)
    with scratch_dir(scratch_root, "parity") as scratch:
        return consume(_join_by_buckets(a, b, scratch, buckets))


# =========================================================================== scores
@dataclass(frozen=True)
class ScorePairs:
    """Scores of one side as arrays sorted by ``key = qid << 32 | pid`` (unique keys)."""

    keys: np.ndarray  # int64
    scores: np.ndarray  # float64

    @property
    def queries(self) -> int:
        return len(_qids_of(self.keys))


def _qids_of(keys: np.ndarray) -> np.ndarray:
    """The distinct qids of sorted keys, chunk by chunk (no full-size temporaries)."""
    parts = [np.unique(keys[at : at + _CHUNK] >> 32) for at in range(0, len(keys), _CHUNK)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _pack(path: Path, qids: np.ndarray, pids: np.ndarray) -> np.ndarray:
    if len(qids) and (
        qids.min() < 0 or qids.max() >= _QID_LIMIT or pids.min() < 0 or pids.max() >= _PID_LIMIT
    ):
        raise DataError(
            f"{path}: ids out of range for the comparison (qid must be in [0, 2^31), pid in [0, 2^32))"
        )
    keys = np.left_shift(qids, 32, dtype=np.int64)
    keys |= pids
    return keys


def _sorted_pairs(path: Path, keys: np.ndarray, scores: np.ndarray) -> ScorePairs:
    if len(keys) > 1 and not bool(np.all(keys[1:] > keys[:-1])):
        order = np.argsort(keys, kind="stable")
        keys, scores = keys[order], scores[order]
        dup = np.flatnonzero(keys[1:] == keys[:-1])
        if len(dup):
            key = int(keys[dup[0]])
            raise DataError(
                f"{path}: the pair (qid {key >> 32}, pid {key & 0xFFFFFFFF}) has more than one score"
            )
    if not bool(np.isfinite(scores).all()):
        raise DataError(f"{path}: {int((~np.isfinite(scores)).sum())} score(s) are not finite")
    return ScorePairs(keys, scores)


def scores_path(path: Path) -> Path:
    """The scores file a side names: a pickle, a ``.parquet`` table, or a scores directory."""
    if path.is_dir():
        table = path / SCORES_TABLE
        if not table.exists():
            raise FileNotFoundError(f"{path}: a directory without {SCORES_TABLE}; name the scores file")
        return table
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such scores file")
    return path


def load_pairs(path: Path) -> ScorePairs:
    """Load one side's scores (pickle or Parquet table) into sorted arrays."""
    path = scores_path(path)
    if path.suffix == ".parquet":
        table = read_scores(path)
        keys = _pack(path, table.column("qid").to_numpy(), table.column("pid").to_numpy())
        scores = table.column("score").to_numpy().astype(np.float64)
        del table
        pa.default_memory_pool().release_unused()  # mimalloc keeps the table's pages otherwise
        return _sorted_pairs(path, keys, scores)
    nested = load_scores_pickle(path)
    n = sum(len(inner) for inner in nested.values())
    keys, scores = np.empty(n, np.int64), np.empty(n, np.float64)
    at = 0
    for qid in tqdm(sorted(nested), desc=f"parity: {path.name}", unit="query", dynamic_ncols=True):
        inner = nested.pop(qid)  # frees the query's Python objects as the arrays fill
        m = len(inner)
        pids = np.fromiter(inner.keys(), np.int64, m)
        order = np.argsort(pids, kind="stable")
        keys[at : at + m] = _pack(path, np.full(m, qid, np.int64), pids[order])
        scores[at : at + m] = np.fromiter(inner.values(), np.float64, m)[order]
        at += m
    return _sorted_pairs(path, keys, scores)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties sharing their average rank (``scipy.stats.rankdata``).

    Memory: the sort order and the result (8 bytes a value each), plus 8 bytes a value for
    the ranks in sorted order and 24 bytes a distinct value while they are built.
    """
    n = len(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.empty(n, bool)
    new[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=new[1:])
    del xs
    starts = np.flatnonzero(new)
    del new
    counts = np.diff(starts, append=n)
    in_order = np.repeat(starts + (counts + 1) / 2.0, counts)  # a group at s of c: s+1 .. s+c
    del starts, counts
    ranks = np.empty(n, np.float64)
    ranks[order] = in_order
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation in float64; None when a side is constant (or under 2 pairs)."""
    if len(x) < 2:
        return None
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy = float(np.dot(xc, xc)), float(np.dot(yc, yc))
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, float(np.dot(xc, yc)) / math.sqrt(sxx * syy)))


def _edges(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    return np.linspace(lo, hi if hi > lo else lo + 1.0, _HIST_BINS + 1)


def _histogram(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D histogram of the common pairs (chunked: bounded extra memory)."""
    edges = _edges(x, y)
    counts = np.zeros((_HIST_BINS, _HIST_BINS), np.int64)
    for at in range(0, len(x), _CHUNK):
        h, _, _ = np.histogram2d(x[at : at + _CHUNK], y[at : at + _CHUNK], bins=(edges, edges))
        counts += h.astype(np.int64)
    return counts, edges


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def _join_pairs(a: ScorePairs, b: ScorePairs) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Counts of the join, and the scores of the common pairs (A's, B's) in key order.

    Chunks of A are looked up in B by binary search: the temporaries stay at ``_CHUNK`` rows.
    """
    xs, ys, qids = [], [], []
    for at in range(0, len(a.keys) if len(b.keys) else 0, _CHUNK):
        keys = a.keys[at : at + _CHUNK]
        idx = np.searchsorted(b.keys, keys)
        np.minimum(idx, len(b.keys) - 1, out=idx)
        hit = b.keys[idx] == keys
        xs.append(a.scores[at : at + _CHUNK][hit])
        ys.append(b.scores[idx[hit]])
        qids.append(np.unique(keys[hit] >> 32))
    x = np.concatenate(xs) if xs else np.zeros(0)
    del xs
    y = np.concatenate(ys) if ys else np.zeros(0)
    del ys
    common = len(x)
    counts = {
        "pairs_a": len(a.keys),
        "pairs_b": len(b.keys),
        "pairs_both": common,
        "pairs_only_a": len(a.keys) - common,
        "pairs_only_b": len(b.keys) - common,
        "queries_a": a.queries,
        "queries_b": b.queries,
        "queries_both": len(np.unique(np.concatenate(qids))) if qids else 0,
    }
    return counts, x, y


def compare_scores(a_path: Path, b_path: Path) -> tuple[dict[str, Any], Any]:
    """The scores part of the report and the figure's histogram (None without common pairs).

    Each side is loaded, then joined; only the two columns of common scores stay for the
    statistics (memory: module docstring).
    """
    a = load_pairs(a_path)
    b = load_pairs(b_path)
    counts, x, y = _join_pairs(a, b)
    out: dict[str, Any] = dict(counts)
    del a, b
    if not len(x):
        out.update(pearson=None, spearman=None, max_abs_delta=None, mean_abs_delta=None, pairs_equal=0)
        return out, None
    delta = np.subtract(x, y)
    np.abs(delta, out=delta)
    out.update(
        max_abs_delta=_sig(float(delta.max())),
        mean_abs_delta=_sig(float(delta.mean())),
        pairs_equal=int(np.count_nonzero(delta == 0)),
    )
    del delta
    p = pearson(x, y)
    hist = _histogram(x, y)
    rx = average_ranks(x)
    del x
    ry = average_ranks(y)
    del y
    s = pearson(rx, ry)
    out.update(pearson=None if p is None else round(p, 6), spearman=None if s is None else round(s, 6))
    return out, hist


# =========================================================================== report
def _table(headers: list[str], rows: Iterable[list[str]], left: int = 1) -> list[str]:
    """A Markdown table padded to aligned columns; the first ``left`` columns left-aligned."""
    body = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i < left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = (
        "|"
        + "|".join(("-" * (w + 2)) if i < left else ("-" * (w + 1) + ":") for i, w in enumerate(widths))
        + "|"
    )
    return [line(headers), rule, *(line(r) for r in body)]


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _num(value: int) -> str:
    return f"{value:,}"


def report_markdown(doc: dict[str, Any]) -> str:
    """The Markdown report of a ``parity.json`` document."""
    a, b = doc["a"]["label"], doc["b"]["label"]
    title = " vs ".join(lab if lab == side else f"{lab} ({side})" for lab, side in ((a, "A"), (b, "B")))
    lines = [f"# Parity: {title}", ""]
    if "skipped" in doc:
        return "\n".join([*lines, f"Skipped: {doc['skipped']}", ""])
    for side in ("a", "b"):
        for kind in ("negatives", "scores"):
            f = doc[side].get(kind)
            if f:
                lines += [
                    f"- {side.upper()} {kind}: `{f['path']}`",
                    f"  ({_num(f['bytes'])} bytes, md5 {f['md5']})",
                ]
    lines.append("")
    neg = doc.get("negatives")
    if neg:
        q, k = neg["queries"], neg["k"]
        lines += ["## Queries", ""]
        lines += _table(
            ["", "Queries"],
            [
                ["A", _num(q["a"])],
                ["B", _num(q["b"])],
                ["in both", _num(q["both"])],
                ["only in A", _num(q["only_a"])],
                ["only in B", _num(q["only_b"])],
                ["in both, positives differ", _num(q["positives_differ"])],
            ],
        )
        for side in ("a", "b"):
            if q[f"only_{side}_first"]:
                first = ", ".join(map(str, q[f"only_{side}_first"]))
                lines += ["", f"First qids only in {side.upper()}: {first}"]
        lines += ["", f"## Negatives (top {k} of each list, as sets)", ""]
        rows, coverage = [], []
        for name, s in neg["systems"].items():
            rows.append(
                [
                    name,
                    _num(s["queries_compared"]),
                    _fmt(s[f"mean_overlap@{k}"], 3),
                    _fmt(s[f"mean_jaccard@{k}"], 3),
                    _num(s["identical_lists"]),
                ]
            )
            coverage.append(
                [
                    name,
                    _num(s["only_a"]),
                    _num(s["only_b"]),
                    _num(s["a"]["positives_in_negatives"]),
                    _num(s["b"]["positives_in_negatives"]),
                ]
            )
        lines += _table(["System", "Queries", f"Overlap@{k}", "Jaccard", "Identical"], rows)
        lines += [
            "",
            f"Overlap@{k} = |A ∩ B| / min(|A|, |B|), Jaccard = |A ∩ B| / |A ∪ B|, means over the queries",
            "where both sides have a list; Identical: same pids in the same order.",
            "",
        ]
        lines += _table(["System", "Only A", "Only B", "Pos in neg A", "Pos in neg B"], coverage)
        lines += [
            "",
            "Only A / Only B: queries of both files where one side has no list for the system.",
            "Pos in neg: negatives that are positives of their own query.",
            "",
        ]
    sc = doc.get("scores")
    if sc:
        lines += ["## Cross-encoder scores", ""]
        delta = [("max \\|Δ\\|", sc["max_abs_delta"]), ("mean \\|Δ\\|", sc["mean_abs_delta"])]
        lines += _table(
            ["", "Value"],
            [
                ["pairs in A", _num(sc["pairs_a"])],
                ["pairs in B", _num(sc["pairs_b"])],
                ["pairs in both", _num(sc["pairs_both"])],
                ["queries in both", _num(sc["queries_both"])],
                ["Pearson", _fmt(sc["pearson"], 4)],
                ["Spearman", _fmt(sc["spearman"], 4)],
                *[[n, "–" if v is None else f"{v:.3g}"] for n, v in delta],
                ["pairs with Δ = 0", _num(sc["pairs_equal"])],
            ],
        )
        lines.append("")
    if doc.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in doc["notes"]], ""]
    if doc.get("figure"):
        lines += [f"![parity]({doc['figure']})", ""]
    return "\n".join(lines)


def _figure(doc: dict[str, Any], hist: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    neg = doc.get("negatives")
    panels = int(bool(neg and neg["systems"])) + int(hist is not None)
    names = list(neg["systems"]) if neg else []
    fig = Figure(figsize=(6.0 * panels, max(3.5, 1.5 + 0.35 * len(names))))
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if neg and names:
        ax = axes.pop(0)
        k, y = neg["k"], np.arange(len(names))
        for off, key, label in (
            (-0.2, f"mean_overlap@{k}", f"overlap@{k}"),
            (0.2, f"mean_jaccard@{k}", "Jaccard"),
        ):
            values = [neg["systems"][n][key] or 0.0 for n in names]
            ax.barh(y + off, values, height=0.4, label=label)
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title("Negatives: A vs B per system", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    if hist is not None:
        ax = axes.pop(0)
        counts, edges = hist
        masked = np.ma.masked_equal(counts.T, 0)
        mesh = ax.pcolormesh(
            edges, edges, masked, norm=LogNorm(vmin=1, vmax=max(1, int(counts.max()))), cmap="viridis"
        )
        ax.plot([edges[0], edges[-1]], [edges[0], edges[-1]], color="tab:red", linewidth=0.6)
        ax.set_xlabel(f"A: {doc['a']['label']}", fontsize=8)
        ax.set_ylabel(f"B: {doc['b']['label']}", fontsize=8)
        ax.set_title("Cross-encoder scores of the common pairs (log count)", fontsize=9)
        fig.colorbar(mesh, ax=ax, fraction=0.046, label="pairs")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(5))
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    with write_bytes_atomic(path, gz=False) as fh:
        fh.write(buf.getvalue())


def _describe(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(path)
    return {"path": shown, "bytes": path.stat().st_size, "md5": file_digest(path)}


def _check_inputs(a: Side, b: Side) -> None:
    for side in (a, b):
        if side.negatives is not None and not side.negatives.is_file():
            raise FileNotFoundError(f"{side.negatives}: no such hard-negatives file ({side.label})")
        if side.scores is not None:
            scores_path(side.scores)
    if (a.negatives is None) != (b.negatives is None) or (a.scores is None) != (b.scores is None):
        raise ValueError("parity: give each kind of file (negatives, scores) for both sides or for neither")
    if a.negatives is None and a.scores is None:
        raise ValueError("parity: nothing to compare: give hard-negatives files and/or scores for both sides")


def write_skipped(
    a: Side, b: Side, out_dir: Path, reason: str, metrics_path: Path | None = None
) -> dict[str, Any]:
    """The outputs of a stage with nothing to compare: a note in place of the figures."""
    doc = {"a": {"label": a.label}, "b": {"label": b.label}, "skipped": reason}
    with atomic_dir(out_dir) as stage:
        (stage / "parity.md").write_text(report_markdown(doc), encoding="utf-8")
        write_json(stage / "parity.json", doc)
    if metrics_path is not None:
        write_json(metrics_path, {"skipped": reason})
    log.info("parity: skipped (%s)", reason)
    return doc


def run(
    a: Side,
    b: Side,
    out_dir: Path,
    k: int = 50,
    metrics_path: Path | None = None,
    bucket_bytes: int = BUCKET_BYTES,
) -> dict[str, Any]:
    """Compare side ``a`` with side ``b``; write ``parity.json``, ``parity.md`` and ``parity.png``
    into ``out_dir`` (and the figures to ``metrics_path``); return the JSON document."""
    if k < 1:
        raise ValueError(f"parity: k must be >= 1, got {k}")
    _check_inputs(a, b)
    out_dir = Path(out_dir)
    doc: dict[str, Any] = {
        side: {
            "label": s.label,
            "negatives": _describe(s.negatives),
            "scores": _describe(scores_path(s.scores) if s.scores else None),
        }
        for side, s in (("a", a), ("b", b))
    }
    notes: list[str] = []
    if a.negatives is not None and b.negatives is not None:
        doc["negatives"] = compare_negatives(a.negatives, b.negatives, k, out_dir.parent, bucket_bytes)
        only = [(s, n) for n, v in doc["negatives"]["systems"].items() for s in "ab" if not v[s]["negatives"]]
        notes += [f"system {n} has no negatives in {s.upper()}" for s, n in only]
    else:
        notes.append("negatives not compared (no hard-negatives files given)")
    hist = None
    if a.scores is not None and b.scores is not None:
        doc["scores"], hist = compare_scores(a.scores, b.scores)
        if hist is None:
            notes.append("the two score files share no (qid, pid) pair")
    else:
        notes.append("scores not compared (no score files given)")
    doc["notes"] = notes
    has_figure = hist is not None or bool(doc.get("negatives", {}).get("systems"))
    doc["figure"] = "parity.png" if has_figure else None
    with atomic_dir(out_dir) as stage:
        if has_figure:
            _figure(doc, hist, stage / "parity.png")
        (stage / "parity.md").write_text(report_markdown(doc), encoding="utf-8")
        write_json(stage / "parity.json", doc)
    if metrics_path is not None:
        write_json(metrics_path, metrics_of(doc))
    _log_summary(doc)
    return doc


def metrics_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The figures of a report for ``dvc metrics`` (no file names, labels, notes or qid lists:
    ``dvc metrics diff`` then shows only what was measured)."""
    out: dict[str, Any] = {}
    if "negatives" in doc:
        neg = doc["negatives"]
        queries = {k: v for k, v in neg["queries"].items() if not isinstance(v, list)}
        out["negatives"] = {"k": neg["k"], "queries": queries, "systems": neg["systems"]}
    if "scores" in doc:
        out["scores"] = doc["scores"]
    return out


def _log_summary(doc: dict[str, Any]) -> None:
    neg = doc.get("negatives")
    if neg:
        k = neg["k"]
        for name, s in neg["systems"].items():
            log.info(
                "parity %s: overlap@%d %s, Jaccard %s over %d queries",
                name,
                k,
                _fmt(s[f"mean_overlap@{k}"], 3),
                _fmt(s[f"mean_jaccard@{k}"], 3),
                s["queries_compared"],
            )
    sc = doc.get("scores")
    if sc:
        log.info(
            "parity scores: %d pairs in both, Pearson %s, Spearman %s, max |delta| %s",
            sc["pairs_both"],
            _fmt(sc["pearson"], 4),
            _fmt(sc["spearman"], 4),
            sc["max_abs_delta"],
        )


# =========================================================================== entry points
def run_from_config(cfg: Config) -> dict[str, Any]:
    """The DVC stage: this run (``paths.out``, ``paths.scores``) beside ``parity.reference_*``."""
    p = cfg.parity
    this = Side(f"this run ({cfg.profile})")
    ref = Side(p.reference_label)
    out_dir, metrics = cfg.path("metrics") / "parity", cfg.path("metrics") / "parity.json"
    if p.reference_negatives is None and p.reference_scores is None:
        return write_skipped(
            this,
            ref,
            out_dir,
            "parity.reference_negatives and parity.reference_scores "
            "are null: set them in params (conf/) to compare this run with another",
            metrics,
        )
    if p.reference_negatives is not None:
        this = Side(this.label, cfg.path("out") / NEGATIVES_NAME, None)
        ref = Side(ref.label, ROOT / p.reference_negatives, None)
    if p.reference_scores is not None:
        this = Side(this.label, this.negatives, cfg.path("scores") / SCORES_TABLE)
        ref = Side(ref.label, ref.negatives, ROOT / p.reference_scores)
    return run(this, ref, out_dir, k=p.k, metrics_path=metrics)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.parity",
        "Compare two runs' hard negatives and cross-encoder scores (or a run with the published "
        "files): per-system overlap@k and Jaccard, missing queries, positives inside negatives, "
        "score correlations and |delta|. With --a-*/--b-*/--out: those files; without: the DVC "
        "stage (this run vs params parity.reference_*, writing paths.metrics/parity.json).",
        "python -m tasks.parity --a-negatives A.jsonl.gz --b-negatives B.jsonl.gz --out parity/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for side in ("a", "b"):
        parser.add_argument(f"--{side}-negatives", type=Path, help=f"side {side.upper()}: {NEGATIVES_NAME}")
        parser.add_argument(
            f"--{side}-scores",
            type=Path,
            help=f"side {side.upper()}: a score pickle (*.pkl.gz), {SCORES_TABLE}, or a scores directory",
        )
        parser.add_argument(f"--label-{side}", default=side.upper(), help="name of the side in the report")
    parser.add_argument("--out", type=Path, help="output directory (parity.json, parity.md, parity.png)")
    parser.add_argument("--k", type=int, default=50, help="list depth of overlap@k and Jaccard (default 50)")
    args = parser.parse_args(argv)
    files = [args.a_negatives, args.b_negatives, args.a_scores, args.b_scores]
    if args.out is None and not any(files):
        return run_stage(args.params, run_from_config)
    if args.out is None:
        parser.error("--out DIR is required with --a-*/--b-* files")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    ignore_sigxfsz()
    a = Side(args.label_a, args.a_negatives, args.a_scores)
    b = Side(args.label_b, args.b_negatives, args.b_scores)
    return report_errors(lambda: run(a, b, args.out, k=args.k))


if __name__ == "__main__":
    sys.exit(main())
