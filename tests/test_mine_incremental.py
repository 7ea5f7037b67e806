"""``mine.incremental`` (tasks.mine_refresh): rounds of corpus and query changes, each merged into
the kept lists, against a full exact search of the new data. Ties are frequent (quantised
vectors, duplicated passages), pids are renumbered on insert as an own corpus's file positions are,
and the stage's outputs are compared byte for byte with a non-incremental run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tasks.config import DenseSystem, Mine, Search
from tasks.dense_mine import run as mine_run
from tasks.dense_mine import search_sets
from tasks.encode import Embeddings
from tasks.mine_refresh import STATE, STATE_META, fingerprint, incremental_search, row_keys
from tests._dense_helpers import EncodedSample, encoded_sample, quantised, write_embeddings


def _search(normalize: bool):
    def fn(sets, corpus: Embeddings):
        return search_sets(sets, corpus, normalize, query_chunk=64, threads=1).hits

    return fn


def _change(c: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """Remove, edit and insert about ``share`` of the rows each (inserts anywhere, some duplicates)."""
    n = len(c)
    m = max(1, int(n * share))
    keep = np.ones(n, bool)
    keep[rng.choice(n, m, replace=False)] = False
    out = c[keep].copy()
    edit = rng.choice(len(out), m, replace=False)
    out[edit] = quantised(m, c.shape[1], int(rng.integers(1 << 30)))
    for _ in range(m):
        at = int(rng.integers(len(out) + 1))
        row = (
            out[int(rng.integers(len(out)))]
            if rng.random() < 0.3
            else quantised(1, c.shape[1], int(rng.integers(1 << 30)))[0]
        )
        out = np.insert(out, at, row, axis=0)
    return out


@pytest.mark.parametrize("normalize", [False, True])
def test_rounds_of_changes_equal_a_full_search(tmp_path: Path, normalize: bool) -> None:
    rng = np.random.default_rng(7)
    c = quantised(600, 12, 1)
    c[100:110] = c[3]  # ties across a list's boundary
    q_train, q_eval = quantised(80, 12, 2), quantised(30, 12, 3)
    q_train[0] = c[3]
    state = tmp_path / "state"
    fp = fingerprint(normalize, 12)
    for round_ in range(4):
        ids = np.arange(len(c), dtype=np.int64)  # file positions: an insert renumbers every later row
        corpus = write_embeddings(tmp_path / f"emb{round_}", ids, c, shard_rows=97)
        sets = [("train", q_train.astype(np.float16), 9), ("dev", q_eval.astype(np.float16), 40)]
        got, work = incremental_search(sets, corpus, state, fp, _search(normalize))
        want = _search(normalize)([(v, k) for _, v, k in sets], corpus)
        for (gs, gp), (ws, wp) in zip(got, want, strict=True):
            np.testing.assert_array_equal(gp, wp)
            np.testing.assert_array_equal(gs, ws)
        if round_ == 0:
            assert work.dots == work.total and work.researched == work.queries
        else:
            assert work.dots < 0.35 * work.total, work  # ~3% of the corpus changed
            assert work.merged > 0.8 * work.queries
        c = _change(c, rng, 0.01)
        q_train = q_train.copy()
        q_train[int(rng.integers(len(q_train)))] = quantised(1, 12, round_ + 50)[0]  # an edited query


def test_a_query_whose_list_lost_too_much_is_searched_again(tmp_path: Path) -> None:
    c = quantised(300, 8, 4)
    q = c[:5].astype(np.float16)  # each query's best passages include itself
    fp = fingerprint(False, 8)
    ids = np.arange(300, dtype=np.int64)
    incremental_search(
        [("train", q, 5)], write_embeddings(tmp_path / "a", ids, c, 64), tmp_path / "s", fp, _search(False)
    )
    # remove the whole top list of query 0 (its depth is 21): it must be searched again
    top = _search(False)([(q[:1], 21)], write_embeddings(tmp_path / "b", ids, c, 64))[0][1][0]
    gone = set(top.tolist())
    keep = np.array([i for i in range(300) if i not in gone])
    c2 = c[keep]
    corpus = write_embeddings(tmp_path / "c", np.arange(len(c2), dtype=np.int64), c2, 64)
    got, work = incremental_search([("train", q, 5)], corpus, tmp_path / "s", fp, _search(False))
    want = _search(False)([(q, 5)], corpus)[0]
    np.testing.assert_array_equal(got[0][1], want[1])
    assert work.researched >= 1


def test_state_is_ignored_when_damaged_reordered_or_for_other_settings(tmp_path: Path, caplog) -> None:
    c = quantised(200, 8, 5)
    q = quantised(10, 8, 6).astype(np.float16)
    ids = np.arange(200, dtype=np.int64)
    corpus = write_embeddings(tmp_path / "a", ids, c, 64)
    state = tmp_path / "s"
    incremental_search([("train", q, 5)], corpus, state, fingerprint(False, 8), _search(False))
    _, work = incremental_search([("train", q, 5)], corpus, state, fingerprint(True, 8), _search(True))
    assert work.researched == 10  # another similarity: nothing reused
    _, work = incremental_search([("train", q, 5)], corpus, state, fingerprint(True, 8), _search(True))
    assert work.researched == 0 and work.dots == 0  # nothing changed: nothing computed
    raw = bytearray((state / STATE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (state / STATE).write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="tasks.mine_refresh"):
        got, work = incremental_search([("train", q, 5)], corpus, state, fingerprint(True, 8), _search(True))
    assert "damaged" in caplog.text and work.researched == 10
    np.testing.assert_array_equal(got[0][1], _search(True)([(q, 5)], corpus)[0][1])
    # a reordered corpus (two old passages swap places): ties by pid may change, so a full search
    c2 = c.copy()
    c2[[10, 20]] = c2[[20, 10]]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tasks.mine_refresh"):
        got, work = incremental_search(
            [("train", q, 5)],
            write_embeddings(tmp_path / "b", ids, c2, 64),
            state,
            fingerprint(True, 8),
            _search(True),
        )
    assert "reorders" in caplog.text and work.researched == 10
    assert json.loads((state / STATE_META).read_text())["sets"] == ["train"]


def test_row_keys_tell_duplicates_apart_in_order() -> None:
    v = np.array([[1, 2], [3, 4], [1, 2], [1, 2]], dtype=np.float16)
    keys = row_keys(v)
    assert len(set(keys.tolist())) == 4
    assert keys[0][:16] == keys[2][:16] == keys[3][:16] != keys[1][:16]
    assert row_keys(v[[1, 0, 2]]).tolist() == [keys[1], keys[0], keys[2]]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, sample_inputs: dict[str, Path]) -> EncodedSample:
    return encoded_sample(tmp_path_factory, sample_inputs)


def test_the_stage_writes_the_same_bytes_incremental_or_not(sample: EncodedSample, tmp_path: Path) -> None:
    cands = {name: sample.bm25_runs / f"{name}.full.trec" for name in ("dev", "dl19")}
    outs = {}
    for label, mine in (
        ("full", Mine(top_k=10, eval_depth=50)),
        ("inc", Mine(top_k=10, eval_depth=50, incremental=True)),
    ):
        for attempt in range(2):  # the second incremental run merges into its own state
            d = tmp_path / f"{label}{attempt}"
            mine_run(
                "tiny-cos", sample.system, Search(query_chunk=256), mine, 20, sample.emb_dir,
                sample.inputs["qrels_train"], cands, d / "neg.parquet", d / "runs", d / "summary.json",
                state_dir=tmp_path / "state",
            )  # fmt: skip
            outs[label, attempt] = {
                p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
            }
    assert outs["full", 0] == outs["inc", 0] == outs["inc", 1]
    assert (tmp_path / "state" / STATE).exists()
    assert isinstance(sample.system, DenseSystem)
