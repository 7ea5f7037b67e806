"""Retrieval measures with the exact semantics of the reference tools, in numpy.

Two reference tools, two rules, both reproduced on purpose:

- ``trec_eval`` (:func:`trec_eval`): ranks each query's documents by score descending and
  breaks ties by docno *descending as a string* (``strcmp``), ignoring the rank column. Binary
  measures (``map``, ``recip_rank``, ``P_k``, ``recall_k``, ``success_k``) count a document as
  relevant when its judgement is ``>= relevance_level`` (``-l``; TREC DL uses 2). ``ndcg`` and
  ``ndcg_cut_k`` use the judgement itself as the gain (graded, linear, negative = 0) whatever
  ``relevance_level`` is, with log2(rank + 1) discounts. The mean is over queries that are in
  both the qrels and the run; ``complete=True`` (``-c``) averages over every qrels query and
  scores the missing ones 0. Duplicate documents for one query are an error, as in trec_eval.
- MS MARCO's ``msmarco_eval.py`` (:func:`msmarco_mrr`): MRR@10 in the order of the run's
  *rank column*; a query with no relevant passage in its first 10 counts 0; the sum is
  divided by the number of queries in the qrels, so a query missing from the run counts 0.

Documents and query ids may be ints (MS MARCO) or strings (trec_eval's own test data).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tasks.io import DataError

MEASURE_RE = re.compile(
    r"^(map|recip_rank|ndcg|num_ret|num_rel|num_rel_ret|num_q)$|^(P|recall|ndcg_cut|success)_(\d+)$"
)
SUMMED = {"num_ret", "num_rel", "num_rel_ret", "num_q"}  # trec_eval prints sums for these


@dataclass(frozen=True)
class Run:
    """A ranking: parallel arrays, one row per retrieved document."""

    qid: np.ndarray
    docno: np.ndarray
    score: np.ndarray
    rank: np.ndarray

    @classmethod
    def from_arrays(cls, qid, docno, score, rank=None) -> Run:  # type: ignore[no-untyped-def]
        qid, docno = np.asarray(qid), np.asarray(docno)
        score = np.asarray(score, dtype=np.float64)
        rank = np.zeros(len(qid), dtype=np.int64) if rank is None else np.asarray(rank, dtype=np.int64)
        if not (len(qid) == len(docno) == len(score) == len(rank)):
            raise ValueError("run: qid, docno, score and rank must have the same length")
        if np.isnan(score).any():
            bad = int(np.flatnonzero(np.isnan(score))[0])
            raise DataError(f"run: score of query {qid[bad]} doc {docno[bad]} is NaN")
        return cls(qid, docno, score, rank)

    @classmethod
    def from_hits(cls, hits) -> Run:  # type: ignore[no-untyped-def]
        """From an iterable of :class:`tasks.records.Hit`."""
        rows = list(hits)
        return cls.from_arrays(
            np.fromiter((h.qid for h in rows), np.int64, len(rows)),
            np.fromiter((h.pid for h in rows), np.int64, len(rows)),
            np.fromiter((h.score for h in rows), np.float64, len(rows)),
            np.fromiter((h.rank for h in rows), np.int64, len(rows)),
        )


@dataclass(frozen=True)
class Qrels:
    """Judgements: parallel arrays ``qid, docno, rel`` (one row per judged document)."""

    qid: np.ndarray
    docno: np.ndarray
    rel: np.ndarray

    @classmethod
    def from_arrays(cls, qid, docno, rel) -> Qrels:  # type: ignore[no-untyped-def]
        qid, docno = np.asarray(qid), np.asarray(docno)
        rel = np.asarray(rel, dtype=np.int64)
        if not (len(qid) == len(docno) == len(rel)):
            raise ValueError("qrels: qid, docno and rel must have the same length")
        return cls(qid, docno, rel)

    @classmethod
    def from_records(cls, qrels) -> Qrels:  # type: ignore[no-untyped-def]
        """From an iterable of :class:`tasks.records.Qrel`."""
        rows = list(qrels)
        return cls.from_arrays(
            np.fromiter((q.qid for q in rows), np.int64, len(rows)),
            np.fromiter((q.pid for q in rows), np.int64, len(rows)),
            np.fromiter((q.rel for q in rows), np.int64, len(rows)),
        )


@dataclass
class Evaluation:
    """Per-query values (aligned with ``qids``) and the summary trec_eval prints as ``all``."""

    qids: np.ndarray
    per_query: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, values in self.per_query.items():
            out[name] = float(values.sum()) if name in SUMMED else float(values.mean())
        return out


def _parse(measures: Sequence[str]) -> list[tuple[str, str, int]]:
    parsed = []
    for m in measures:
        hit = MEASURE_RE.match(m)
        if not hit:
            raise ValueError(
                f"measures: unknown measure {m!r}; known: map, recip_rank, ndcg, num_ret, num_rel, "
                "num_rel_ret, num_q, P_<k>, recall_<k>, ndcg_cut_<k>, success_<k>"
            )
        if hit.group(1):
            parsed.append((m, hit.group(1), 0))
        else:
            k = int(hit.group(3))
            if k <= 0:
                raise ValueError(f"measures: cutoff of {m!r} must be positive")
            parsed.append((m, hit.group(2), k))
    return parsed


def _codes(values: np.ndarray, universe: np.ndarray) -> np.ndarray:
    """Index of each value in the sorted unique ``universe`` (all values must be present)."""
    return np.searchsorted(universe, values)


def _as_key_dtype(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Make two id arrays comparable: both integer, or both strings."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return a.astype(np.int64), b.astype(np.int64)
    if a.dtype.kind in "iuUSO" and b.dtype.kind in "iuUSO":
        return a.astype(str), b.astype(str)
    raise ValueError(f"{what}: unsupported id types {a.dtype} and {b.dtype}")


def _uniq(a: np.ndarray) -> np.ndarray:
    """Sorted unique values (sort + diff: faster than ``np.unique`` on millions of ints)."""
    s = np.sort(a, kind="stable")
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _trec_order(qcode: np.ndarray, score: np.ndarray, docno: np.ndarray) -> np.ndarray:
    """Row order of trec_eval: by query, score descending, then docno descending (strcmp)."""
    dq, ds = np.diff(qcode), np.diff(score)
    if ((dq > 0) | ((dq == 0) & (ds <= 0))).all():  # already sorted (runs usually are): no sort
        order = np.arange(len(qcode))
    else:
        order = np.lexsort((-score, qcode))
    qs, ss = qcode[order], score[order]
    same = (qs[1:] == qs[:-1]) & (ss[1:] == ss[:-1])
    if not same.any():
        return order
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    tpos = np.flatnonzero(tied)  # positions in ``order``; each tie group is contiguous
    group = np.cumsum(np.r_[True, ~same[tpos[:-1]]])  # a new group unless tied to the previous row
    rows = order[tpos]
    # Lexicographic rank of the tied docnos as strings (UTF-8 byte order == code point order).
    lex = np.unique(docno[rows].astype(str), return_inverse=True)[1].astype(np.int64)
    order[tpos] = rows[np.lexsort((-lex, group))]  # larger string first within each group
    return order


def _group_starts(sorted_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each row within its group (0-based) for rows sorted by code."""
    n = len(sorted_codes)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    lengths = np.diff(np.r_[starts, n])
    within = np.arange(n) - np.repeat(starts, lengths)
    return within, starts


def trec_eval(
    run: Run,
    qrels: Qrels,
    measures: Sequence[str],
    relevance_level: int = 1,
    complete: bool = False,
) -> Evaluation:
    """Evaluate ``run`` against ``qrels`` as ``trec_eval -m ... [-l level] [-c]`` would.

    Returns per-query values for the evaluated queries (sorted by qid) and their summary.
    """
    parsed = _parse(measures)
    if len(qrels.qid) == 0:
        raise DataError("qrels: no judgements")
    r_qid, q_qid = _as_key_dtype(run.qid, qrels.qid, "qid")
    r_doc, q_doc = _as_key_dtype(run.docno, qrels.docno, "docno")

    judged_q = _uniq(q_qid)
    run_q = _uniq(r_qid)
    eval_q = judged_q if complete else np.intersect1d(judged_q, run_q, assume_unique=True)
    if len(eval_q) == 0:
        raise DataError("no queries with both results and relevance judgements (do the qids match?)")
    nq = len(eval_q)

    # Rows of evaluated queries, keyed by (query, doc): ints directly, strings via a shared universe.
    keep_q = np.isin(q_qid, eval_q)
    keep_r = np.isin(r_qid, eval_q)
    qd, rd = q_doc[keep_q], r_doc[keep_r]
    if qd.dtype.kind == "i" and (len(qd) == 0 or qd.min() >= 0) and (len(rd) == 0 or rd.min() >= 0):
        nd = np.int64(max(qd.max(initial=0), rd.max(initial=0)) + 1)
        qdoc_code, rdoc_code = qd, rd
    else:
        docs = _uniq(np.concatenate([qd, rd]))
        nd = np.int64(len(docs) + 1)
        qdoc_code, rdoc_code = _codes(qd, docs), _codes(rd, docs)
    if nq * float(nd) >= 2.0**62:
        raise ValueError("too many queries x documents to key as int64")
    qq = _codes(q_qid[keep_q], eval_q)
    qkey = qq * nd + qdoc_code
    qrel = qrels.rel[keep_q]
    korder = np.argsort(qkey, kind="stable")
    qkey, qrel, qq_sorted = qkey[korder], qrel[korder], qq[korder]
    dup = np.flatnonzero(qkey[1:] == qkey[:-1])
    if len(dup):
        i = korder[dup[0]]
        raise DataError(f"qrels: duplicate judgement for query {q_qid[keep_q][i]} doc {qd[i]}")

    # Run rows of evaluated queries, in trec_eval order.
    rq = _codes(r_qid[keep_r], eval_q)
    order = _trec_order(rq, run.score[keep_r], rd)
    rq, rdoc = rq[order], rd[order]
    rkey = rq * nd + rdoc_code[order]
    if len(rkey) > 1:
        srt = np.sort(rkey)
        dupk = srt[1:][srt[1:] == srt[:-1]]
        if len(dupk):
            i = int(np.flatnonzero(rkey == dupk[0])[0])
            raise DataError(
                f"run: duplicate document {rdoc[i]} for query {eval_q[rq[i]]} (trec_eval refuses)"
            )
    pos0, _ = _group_starts(rq)  # 0-based rank after trec_eval's sort
    idx = np.minimum(np.searchsorted(qkey, rkey), len(qkey) - 1)
    found = qkey[idx] == rkey
    rel = np.where(found, qrel[idx], -1)  # -1: not in the pool

    relevant = rel >= relevance_level
    num_rel = np.bincount(qq_sorted[qrel >= relevance_level], minlength=nq).astype(np.float64)
    num_ret = np.bincount(rq, minlength=nq).astype(np.float64)

    # Ideal gains: judged docs with rel > 0, per query in descending order.
    pos_mask = qrel > 0
    g_q, g_rel = qq_sorted[pos_mask], qrel[pos_mask]
    g_order = np.lexsort((-g_rel, g_q))
    g_q, g_rel = g_q[g_order], g_rel[g_order].astype(np.float64)
    g_pos0, _ = _group_starts(g_q)
    ideal_disc = g_rel / np.log2(g_pos0 + 2.0)
    gain = np.where(rel > 0, rel, 0).astype(np.float64)
    disc = gain / np.log2(pos0 + 2.0)

    def per_query_sum(mask: np.ndarray, codes: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights[mask]
        return np.bincount(codes[mask], weights=w, minlength=nq).astype(np.float64)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(nq), where=den > 0)

    out = Evaluation(qids=eval_q)
    for name, kind, k in parsed:
        if kind == "num_q":
            value = np.ones(nq)
        elif kind == "num_ret":
            value = num_ret
        elif kind == "num_rel":
            value = num_rel
        elif kind == "num_rel_ret":
            value = per_query_sum(relevant, rq)
        elif kind == "map":
            rel_rows = np.flatnonzero(relevant)
            cum, _ = _group_starts(rq[rel_rows])
            prec = (cum + 1.0) / (pos0[rel_rows] + 1.0)
            value = ratio(np.bincount(rq[rel_rows], weights=prec, minlength=nq), num_rel)
        elif kind in ("recip_rank", "success"):
            first = np.full(nq, np.inf)
            rel_rows = np.flatnonzero(relevant)
            np.minimum.at(first, rq[rel_rows], pos0[rel_rows] + 1.0)
            value = (1.0 / first) if kind == "recip_rank" else (first <= k).astype(np.float64)
        elif kind == "P":
            value = per_query_sum(relevant & (pos0 < k), rq) / k
        elif kind == "recall":
            value = ratio(per_query_sum(relevant & (pos0 < k), rq), num_rel)
        else:  # ndcg, ndcg_cut
            cut = np.iinfo(np.int64).max if kind == "ndcg" else k
            dcg = per_query_sum(pos0 < cut, rq, disc)
            idcg = per_query_sum(g_pos0 < cut, g_q, ideal_disc)
            value = ratio(dcg, idcg)
        out.per_query[name] = value
    return out


@dataclass
class MrrResult:
    mrr: float
    per_query: dict[int, float]  # every qrels query; 0.0 when missing or nothing relevant in top k
    queries_ranked: int  # queries in the run (as msmarco_eval.py's QueriesRanked)
    queries_judged: int  # the divisor


def msmarco_mrr(run: Run, qrels: Qrels, k: int = 10, min_rel: int = 1) -> MrrResult:
    """MRR@k exactly as MS MARCO's ``msmarco_eval.py``: the run's rank column gives the order.

    A judgement counts as relevant when ``rel >= min_rel`` (MS MARCO dev qrels are all 1;
    TREC DL binary measures use 2). The sum of 1/rank over queries is divided by the number
    of distinct queries in ``qrels``. Unlike the official script, a passage ranked twice for
    one query, two passages at the same rank, or a rank below 1 raise :class:`DataError`
    (the script prints a warning and goes on, or silently keeps the last one).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    r_qid, q_qid = _as_key_dtype(run.qid, qrels.qid, "qid")
    r_doc, q_doc = _as_key_dtype(run.docno, qrels.docno, "docno")
    judged_q = _uniq(q_qid)
    if len(judged_q) == 0:
        raise DataError("qrels: no judgements")
    if len(run.rank) and run.rank.min() < 1:
        i = int(np.argmin(run.rank))
        raise DataError(f"run: rank {run.rank[i]} of query {r_qid[i]} doc {r_doc[i]} is below 1")
    in_run = _uniq(r_qid)
    qcode = np.searchsorted(in_run, r_qid).astype(np.int64)
    for col, what in ((run.rank, "rank"), (r_doc, "document")):
        if col.dtype.kind == "i" and (len(col) == 0 or col.min() >= 0):
            width = np.int64(col.max(initial=0) + 1)
            key = qcode * width + col
        else:
            key = qcode * np.int64(len(col) + 1) + np.unique(col, return_inverse=True)[1]
        srt = np.sort(key)
        dupk = srt[1:][srt[1:] == srt[:-1]]
        if len(dupk):
            i = int(np.flatnonzero(key == dupk[0])[0])
            raise DataError(
                f"run: query {r_qid[i]} has {what} {col[i]} twice "
                "(a passage may be ranked once per query, one passage per rank)"
            )
    if not np.isin(in_run, judged_q).any():
        raise DataError("no query of the run is in the qrels. Are you scoring the right query set?")

    top = (run.rank <= k) & np.isin(r_qid, judged_q)
    rel_mask = qrels.rel >= min_rel
    pairs = {(q, d) for q, d in zip(q_qid[rel_mask].tolist(), q_doc[rel_mask].tolist(), strict=True)}
    best: dict = {}
    for q, d, r in zip(r_qid[top].tolist(), r_doc[top].tolist(), run.rank[top].tolist(), strict=True):
        if (q, d) in pairs and r < best.get(q, k + 1):
            best[q] = r
    per_query = {q: (1.0 / best[q] if q in best else 0.0) for q in judged_q.tolist()}
    return MrrResult(
        mrr=sum(per_query.values()) / len(judged_q),
        per_query=per_query,
        queries_ranked=len(in_run),
        queries_judged=len(judged_q),
    )
