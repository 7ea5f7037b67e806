"""``mine.incremental``: a refresh of dense mining that searches only what changed, exactly.

A full flat search ranks each query's passages by (the float64 score rounded to float32 desc,
pid asc), a ranking that depends only on the two vectors and the pids (:mod:`tasks.dense_mine`).
So when the corpus changes, a query's new ranking can be assembled from its old one:

- **Identity.** A passage is identified by the 16-byte hash of its float16 embedding row and its
  occurrence among equal rows, never by its pid: an insertion renumbers every later passage of
  your own corpus (ids are file positions) without changing what it is. A passage whose text was
  edited has a new embedding: it is removed and added. A query is identified the same way by its
  own embedding, so a query whose text is unchanged keeps its list whatever its id.
- **State.** After each run ``paths.mine_cache/<system>/`` keeps every query's top ``depth`` (twice
  the depth the stage needs, at least 16 more) as corpus rows and scores, with the corpus's keys and
  pids: ``state.npz`` plus ``state.json`` (its sha256; written last, so a kill leaves the old
  state or none, never a torn one). It is not a DVC output: DVC deletes outputs before a stage runs.
- **Merge.** For a query whose embedding is unchanged: drop the removed passages from its old list,
  search the added passages only (an exact :func:`tasks.dense_mine.search_sets` over them), and
  merge. The merged list is exact down to the first added passage that does not score above the
  old list's last entry (an unseen old passage may rank anywhere below that entry), and down to the
  last added passage the search returned. Survivors keep their relative order (checked: if the new
  corpus reorders old passages, the run falls back to a full search), so ties by pid agree.
- **Re-search.** A new or edited query, a query whose exact list became shorter than the depth
  the stage needs, every query when there is no valid state (first run, another similarity or
  dimension, a damaged file): a full search of the new corpus, to ``depth``.

The stage's outputs are cut from these lists, so they are byte-identical to a full search on the
new data (``tests/test_mine_incremental.py`` checks it against one). The work, dot products
computed against ``queries x passages``, goes to :func:`tasks.io.record_work`. The flat index
only: an approximate index gives no exact ranking to merge into.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.encode import Embeddings
from tasks.io import DataError, file_digest, read_json, scratch_dir, write_bytes_atomic, write_json

log = logging.getLogger(__name__)

KEY = np.dtype("S20")  # 16 bytes of the row's hash + its occurrence (uint32) among equal rows
FORMAT = 1
STATE, STATE_META = "state.npz", "state.json"

# (sets of (prepared-later float16 vectors, k), corpus) -> per set (scores float32, pids int64)
SearchFn = Callable[[Sequence[tuple[np.ndarray, int]], Embeddings], list[tuple[np.ndarray, np.ndarray]]]


def depth_for(k: int) -> int:
    """How deep each query's list is kept for a stage that needs ``k``: room for removals."""
    return max(2 * k, k + 16)


def row_keys(vectors: np.ndarray) -> np.ndarray:
    """Per row: blake2b-128 of its bytes + its occurrence among identical rows (row order)."""
    rows = np.ascontiguousarray(vectors)
    dig = np.array([hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows], dtype="S16")
    order = np.argsort(dig, kind="stable")
    sdig = dig[order]
    start = np.ones(len(sdig), dtype=bool)
    start[1:] = sdig[1:] != sdig[:-1]
    group = np.maximum.accumulate(np.where(start, np.arange(len(sdig)), 0))
    occ = np.empty(len(rows), dtype="<u4")
    occ[order] = np.arange(len(sdig)) - group
    packed = np.zeros(len(rows), dtype=[("d", "S16"), ("o", "<u4")])
    packed["d"], packed["o"] = dig, occ
    return packed.view(KEY)


def corpus_keys(corpus: Embeddings) -> np.ndarray:
    return (
        np.concatenate([row_keys(v) for _, v in corpus.iter_shards()]) if corpus.shards else np.zeros(0, KEY)
    )


def _match(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Per key of ``old``, its index in ``new`` (keys are unique on each side), or -1."""
    if not len(new) or not len(old):
        return np.full(len(old), -1, dtype=np.int64)
    order = np.argsort(new, kind="stable")
    pos = np.minimum(np.searchsorted(new[order], old), len(new) - 1)
    return np.where(new[order][pos] == old, order[pos], -1).astype(np.int64)


def _in_order(old_to_new: np.ndarray, old_pids: np.ndarray, new_pids: np.ndarray) -> bool:
    kept = np.flatnonzero(old_to_new >= 0)
    by_old_pid = kept[np.argsort(old_pids[kept], kind="stable")]
    return not (np.diff(new_pids[old_to_new[by_old_pid]]) <= 0).any()


def survivors(
    old_keys: np.ndarray, old_pids: np.ndarray, new_keys: np.ndarray, new_pids: np.ndarray
) -> np.ndarray | None:
    """Per old corpus row its new row (-1: removed or edited), keeping the survivors' pid order.

    Ties are broken by pid, so a merge is exact only if every passage kept keeps its place among
    the others. Identical passages (the same embedding) are matched by occurrence; where a copy was
    inserted or removed that can cross another passage, so the copies of such a group are then
    taken as removed and added again. None: the corpus itself was reordered (search in full).
    """
    old_to_new = _match(old_keys, new_keys)
    if _in_order(old_to_new, old_pids, new_pids):
        return old_to_new
    dig_old, dig_new = old_keys.view("S20").astype("S16"), new_keys.view("S20").astype("S16")
    for changed_only in (True, False):
        u_old, c_old = np.unique(dig_old, return_counts=True)
        u_new, c_new = np.unique(dig_new, return_counts=True)
        count_new = dict(zip(u_new.tolist(), c_new.tolist(), strict=True))
        if changed_only:  # first only the groups whose number of copies changed
            groups = [
                d for d, c in zip(u_old.tolist(), c_old.tolist(), strict=True) if count_new.get(d, 0) != c
            ]
        else:
            groups = [
                d
                for d, c in zip(u_old.tolist(), c_old.tolist(), strict=True)
                if max(c, count_new.get(d, 0)) > 1
            ]
        demoted = np.where(np.isin(dig_old, np.array(groups, dtype="S16")), -1, old_to_new)
        if _in_order(demoted, old_pids, new_pids):
            return demoted
    return None


@dataclass
class Lists:
    """One query set's ranked lists: per query, ``rows`` into the state's corpus and scores."""

    qkeys: np.ndarray  # KEY
    offsets: np.ndarray  # int64, len(qkeys) + 1
    rows: np.ndarray  # int64
    scores: np.ndarray  # float32
    complete: np.ndarray  # bool: the list holds the whole corpus

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.rows[a:b], self.scores[a:b]


@dataclass
class State:
    fingerprint: dict[str, Any]
    corpus_keys: np.ndarray
    corpus_pids: np.ndarray
    sets: dict[str, Lists]


def save_state(root: Path, state: State) -> None:
    arrays: dict[str, np.ndarray] = {"corpus_keys": state.corpus_keys, "corpus_pids": state.corpus_pids}
    for name, lists in state.sets.items():
        for field in ("qkeys", "offsets", "rows", "scores", "complete"):
            arrays[f"{name}/{field}"] = getattr(lists, field)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    (root / STATE_META).unlink(missing_ok=True)  # no sidecar while the state is being replaced
    with write_bytes_atomic(root / STATE, gz=False) as fh:
        fh.write(buf.getvalue())
    meta = {"format": FORMAT, "fingerprint": state.fingerprint, "sets": sorted(state.sets)}
    write_json(root / STATE_META, {**meta, "sha256": file_digest(root / STATE, "sha256")})


def load_state(root: Path, fingerprint: dict[str, Any]) -> State | None:
    """The last run's state if it is intact and made under ``fingerprint``, else None (logged)."""
    meta_path, path = root / STATE_META, root / STATE
    if not meta_path.exists() or not path.exists():
        log.info("mine refresh: no state in %s; searching every query", root)
        return None
    try:
        meta = read_json(meta_path)
        if meta.get("format") != FORMAT or meta.get("sha256") != file_digest(path, "sha256"):
            raise DataError(f"{path}: hash or format differs from {meta_path}")
        if meta.get("fingerprint") != fingerprint:
            log.info("mine refresh: state in %s is for other settings; searching every query", root)
            return None
        with np.load(path, allow_pickle=False) as z:
            sets = {
                name: Lists(*(z[f"{name}/{f}"] for f in ("qkeys", "offsets", "rows", "scores", "complete")))
                for name in meta["sets"]
            }
            return State(meta["fingerprint"], z["corpus_keys"], z["corpus_pids"], sets)
    except (DataError, OSError, ValueError, KeyError) as exc:
        log.warning("mine refresh: state in %s is damaged (%s); searching every query", root, exc)
        return None


@dataclass
class Work:
    dots: int = 0  # query x passage scores computed
    total: int = 0  # what a full search computes
    researched: int = 0  # queries searched over the whole corpus
    merged: int = 0  # queries whose old list was merged with the added passages
    queries: int = 0


def _merge(
    srows: np.ndarray,
    sscores: np.ndarray,
    boundary: np.float32 | None,
    t_scores: np.ndarray,
    t_rows: np.ndarray,
    t_truncated: bool,
    pids: np.ndarray,
    depth: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact prefix of survivors ``srows`` (new corpus rows) merged with the added hits.

    ``boundary``: the old list's last score, before removals (None when it held the whole corpus):
    an old passage it did not hold ranks after that entry, so an added passage scoring no higher
    may have such a passage before it."""
    rows = np.concatenate([srows, t_rows])
    scores = np.concatenate([sscores, t_scores])
    is_added = np.concatenate([np.zeros(len(srows), bool), np.ones(len(t_rows), bool)])
    order = np.lexsort((pids[rows], -scores))
    rows, scores, is_added = rows[order], scores[order], is_added[order]
    exact = len(rows)
    if boundary is not None:
        below = np.flatnonzero(is_added & (scores <= boundary))
        if len(below):
            exact = min(exact, int(below[0]))
    if t_truncated and len(t_rows):
        last = np.flatnonzero(is_added)[-1]  # an added passage not returned ranks after this one
        exact = min(exact, int(last) + 1)
    exact = min(exact, depth)
    return rows[:exact], scores[:exact]


def incremental_search(
    sets: Sequence[tuple[str, np.ndarray, int]],
    corpus: Embeddings,
    state_dir: Path,
    fingerprint: dict[str, Any],
    search: SearchFn,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], Work]:
    """Per set ``(name, float16 query vectors, k)``: the exact top-``k`` (scores, pids), as a full
    search gives them, reusing and then replacing the state in ``state_dir``."""
    n = len(corpus.ids)
    ckeys = corpus_keys(corpus)
    old = load_state(state_dir, {**fingerprint, "format": FORMAT})
    old_to_new = np.zeros(0, dtype=np.int64)
    added = np.arange(n)
    if old is not None:
        matched = survivors(old.corpus_keys, old.corpus_pids, ckeys, corpus.ids)
        if matched is None:
            log.warning("mine refresh: the new corpus reorders old passages; searching every query")
            old = None
        else:
            old_to_new = matched
            kept = np.flatnonzero(old_to_new >= 0)
            hit = np.zeros(n, dtype=bool)
            hit[old_to_new[kept]] = True
            added = np.flatnonzero(~hit)
            log.info(
                "mine refresh: %d passages kept, %d removed or edited, %d added or edited",
                len(kept), len(old_to_new) - len(kept), len(added),
            )  # fmt: skip
    work = Work()
    plans = []
    for name, vectors, k in sets:
        k, depth = min(k, n), min(depth_for(k), n)
        qkeys = row_keys(vectors)
        prev = old.sets.get(name) if old is not None else None
        at = _match(qkeys, prev.qkeys) if prev is not None else np.full(len(qkeys), -1, dtype=np.int64)
        plans.append((name, vectors, k, depth, qkeys, prev, at))
        work.queries += len(qkeys)
        work.total += len(qkeys) * n

    # 1. the reused queries against the added passages only
    t_hits: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(plans)
    if len(added) and old is not None:
        with scratch_dir(state_dir, "added") as tmp:
            sub = _subset(corpus, added, tmp)
            jobs = [(i, p) for i, p in enumerate(plans) if (p[6] >= 0).any()]
            found = search([(p[1][p[6] >= 0], p[3]) for _, p in jobs], sub) if jobs else []
            for (i, p), hits in zip(jobs, found, strict=True):
                t_hits[i] = hits
                work.dots += int((p[6] >= 0).sum()) * len(added)

    # 2. merge; collect the queries to search in full
    rows_of_pid = _row_lookup(corpus.ids)
    lists: list[list[tuple[np.ndarray, np.ndarray] | None]] = []
    redo: list[np.ndarray] = []
    for i, (_, vectors, k, depth, _, prev, at) in enumerate(plans):
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(vectors)
        again = []
        reused = np.flatnonzero(at >= 0)
        hits_i = t_hits[i]
        t_scores, t_pids = hits_i if hits_i is not None else (None, None)
        t_truncated = len(added) > depth
        for j, qi in enumerate(reused.tolist()):
            assert prev is not None
            rows, scores = prev.get(int(at[qi]))
            new_rows = old_to_new[rows]
            keep = new_rows >= 0
            if t_scores is not None and t_pids is not None:
                valid = np.isfinite(t_scores[j])
                tr, ts = rows_of_pid(t_pids[j][valid]), t_scores[j][valid]
            else:
                tr, ts = np.zeros(0, np.int64), np.zeros(0, np.float32)
            boundary = None if prev.complete[at[qi]] or not len(scores) else scores[-1]
            m_rows, m_scores = _merge(
                new_rows[keep], scores[keep], boundary, ts, tr, t_truncated,
                corpus.ids, depth,
            )  # fmt: skip
            if len(m_rows) >= k or len(m_rows) == n:
                out[qi] = (m_rows, m_scores)
                work.merged += 1
            else:
                again.append(qi)
        fresh = np.flatnonzero(at < 0)
        redo.append(np.sort(np.concatenate([fresh, np.array(again, dtype=np.int64)])).astype(np.int64))
        lists.append(out)

    # 3. a full search for the new, edited and exhausted queries
    full = [i for i, r in enumerate(redo) if len(r)]
    if full:
        found = search([(plans[i][1][redo[i]], plans[i][3]) for i in full], corpus)
        for i, (scores, pids) in zip(full, found, strict=True):
            for j, qi in enumerate(redo[i].tolist()):
                valid = np.isfinite(scores[j])
                lists[i][qi] = (rows_of_pid(pids[j][valid]), scores[j][valid])
            work.dots += len(redo[i]) * n
            work.researched += len(redo[i])

    results, new_sets = [], {}
    for (name, _, k, _, qkeys, _, _), out in zip(plans, lists, strict=True):
        top_s = np.full((len(out), k), -np.inf, dtype=np.float32)
        top_p = np.full((len(out), k), np.iinfo(np.int64).max, dtype=np.int64)
        for qi, entry in enumerate(out):
            assert entry is not None
            rows, scores = entry
            top_s[qi, : min(k, len(rows))] = scores[:k]
            top_p[qi, : min(k, len(rows))] = corpus.ids[rows[:k]]
        new_sets[name] = _pack(qkeys, out, n)
        results.append((top_s, top_p))
    state_dir.mkdir(parents=True, exist_ok=True)
    save_state(
        state_dir, State({**fingerprint, "format": FORMAT}, ckeys, corpus.ids.astype(np.int64), new_sets)
    )
    log.info(
        "mine refresh: %d queries, %d merged, %d searched in full; %.2f%% of a full search's dot products",
        work.queries, work.merged, work.researched, 100 * work.dots / max(work.total, 1),
    )  # fmt: skip
    return results, work


def _pack(qkeys: np.ndarray, out: list[tuple[np.ndarray, np.ndarray] | None], n: int) -> Lists:
    entries = [e for e in out if e is not None]
    sizes = np.array([len(rows) for rows, _ in entries], dtype=np.int64)
    return Lists(
        qkeys,
        np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        np.concatenate([rows for rows, _ in entries] or [np.zeros(0)]).astype(np.int64),
        np.concatenate([scores for _, scores in entries] or [np.zeros(0)]).astype(np.float32),
        sizes == n,
    )


def _row_lookup(ids: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def rows(pids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_ids, pids)
        if len(pids) and (
            (pos >= len(ids)).any() or (sorted_ids[np.minimum(pos, len(ids) - 1)] != pids).any()
        ):
            raise DataError("mine refresh: a search returned a pid that is not in the corpus")
        return order[pos].astype(np.int64)

    return rows


def _subset(corpus: Embeddings, rows: np.ndarray, tmp: Path) -> Embeddings:
    """The corpus rows ``rows`` (float16, as stored) as an Embeddings of one shard under ``tmp``."""
    vec = np.empty((len(rows), corpus.dim), dtype=np.float16)
    start = 0
    for _, v in corpus.iter_shards():
        end = start + len(v)
        sel = np.flatnonzero((rows >= start) & (rows < end))
        vec[sel] = v[rows[sel] - start]
        start = end
    np.save(tmp / "added.npy", vec, allow_pickle=False)
    entry = {"file": "added.npy", "rows": len(rows)}
    return Embeddings(tmp, "corpus", corpus.ids[rows], (entry,), corpus.dim)


def fingerprint(normalize: bool, dim: int) -> dict[str, Any]:
    """What a state is only valid under (the embeddings themselves are in the keys)."""
    return {"normalize": bool(normalize), "dim": int(dim), "ranking": "f32(f64 score) desc, pid asc"}
