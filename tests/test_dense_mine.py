"""mine@<system>: exact search vs brute force, ANN recall, mining + runs on the sample, skips."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.config import DenseSystem, Encode, Mine, Search
from tasks.dense_mine import Searcher, exact_search, run
from tasks.encode import load_part
from tasks.records import qrels_by_query, read_hits, read_qrels, read_run
from tests._dense_helpers import EncodedSample, brute_force, encoded_sample, write_embeddings

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory, sample_inputs: dict[str, Path]) -> EncodedSample:
    return encoded_sample(tmp_path_factory, sample_inputs)


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    # float16-representable values so the reference and the search see the same numbers
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("normalize", [False, True])
def test_exact_search_equals_brute_force_with_ties(tmp_path: Path, normalize: bool) -> None:
    c = _vectors(500, 16, 1)
    c[300:310] = c[5]  # ten exact duplicates of passage 5: score ties, broken by pid
    ids = np.random.default_rng(2).permutation(np.arange(10_000, 10_500)).astype(np.int64)
    corpus = write_embeddings(tmp_path, ids, c, shard_rows=128)
    q = _vectors(37, 16, 3)
    q[0] = c[5]  # a query whose top hits are the tied duplicates
    s, p = exact_search(q, corpus, 20, normalize, query_chunk=8)
    ref_q = q / np.linalg.norm(q, axis=1, keepdims=True) if normalize else q
    ref_c = c / np.linalg.norm(c, axis=1, keepdims=True) if normalize else c
    rs, rp = brute_force(ref_q, ref_c, ids, 20)
    np.testing.assert_array_equal(p, rp)
    np.testing.assert_allclose(s, rs, rtol=1e-5, atol=1e-5)
    tied = sorted(int(i) for i in ids[[5, *range(300, 310)]])
    assert p[0, :11].tolist() == tied  # ties by pid ascending


@pytest.mark.slow  # trains an IVF-PQ index (~5 s of CPU)
def test_ann_recall_at_50_against_exact(sample: EncodedSample) -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # the shared test machine is oversubscribed; OpenMP spinning hurts
    corpus = load_part(sample.emb_dir, "corpus")
    queries = load_part(sample.emb_dir, "train").load()[:200]
    _, exact = Searcher(corpus, Search(index="flat"), True, "cpu").search(queries, 50)
    recalls = {}
    for index in ("hnsw", "ivfpq"):
        _, approx = Searcher(corpus, Search(index=index), True, "cpu").search(queries, 50)
        recalls[index] = float(
            np.mean([len(set(a) & set(e)) / 50 for a, e in zip(approx, exact, strict=True)])
        )
    log.warning("ANN recall@50 vs exact on the sample (3000 passages, 200 queries): %s", recalls)
    assert recalls["hnsw"] >= 0.9
    assert recalls["ivfpq"] >= 0.3  # PQ on 64-dim random-init embeddings: coarse by design


def test_mine_on_the_sample(sample: EncodedSample, tmp_path: Path) -> None:
    mine = Mine(top_k=10, eval_depth=100)
    summary = run(
        "tiny-cos", sample.system, Search(query_chunk=256), mine, 20, sample.emb_dir,
        sample.inputs["qrels_train"], bm25_candidates(sample), tmp_path / "neg.parquet",
        tmp_path / "runs", tmp_path / "summary.json",
    )  # fmt: skip
    positives = qrels_by_query(read_qrels(sample.inputs["qrels_train"]))
    hits = read_hits(tmp_path / "neg.parquet").to_pandas()
    assert summary["train_queries"] == hits.qid.nunique() > 0
    assert set(hits.qid) <= set(positives)
    assert (hits.groupby("qid").size() == 10).all()
    assert hits.equals(hits.sort_values(["qid", "rank"]).reset_index(drop=True))
    assert not any(pid in positives[qid] for qid, pid in zip(hits.qid, hits.pid, strict=True))
    for _, grp in hits.groupby("qid"):
        assert grp.pid.is_unique and (np.diff(grp.score.to_numpy()) <= 0).all()
    for name in ("dev", "dl19"):
        full = list(read_run(tmp_path / "runs" / f"{name}.full.trec"))
        assert full and max(h.rank for h in full) == 100
        rr = list(read_run(tmp_path / "runs" / f"{name}.rerank.trec"))
        bm25 = {(h.qid, h.pid) for h in read_run(sample.bm25_runs / f"{name}.full.trec") if h.rank <= 20}
        assert {(h.qid, h.pid) for h in rr} == bm25


def bm25_candidates(sample: EncodedSample) -> dict[str, Path]:
    return {name: sample.bm25_runs / f"{name}.full.trec" for name in ("dev", "dl19")}


def test_rerank_the_official_top1000(sample: EncodedSample, tmp_path: Path) -> None:
    """dev re-ranks the unscored top1000 list: its first ``depth`` rows per query, in file order."""
    top = sample.inputs["top1000_dev"]
    listed: dict[int, list[int]] = {}
    for line in top.read_text(encoding="utf-8").splitlines():
        qid, pid, _ = line.split("\t", 2)
        listed.setdefault(int(qid), []).append(int(pid))
    candidates = {**bm25_candidates(sample), "dev": top}
    run("tiny-cos", sample.system, Search(query_chunk=256), Mine(top_k=5, eval_depth=10), 30,
        sample.emb_dir, sample.inputs["qrels_train"], candidates, tmp_path / "neg.parquet",
        tmp_path / "runs")  # fmt: skip
    rr = list(read_run(tmp_path / "runs" / "dev.rerank.trec"))
    assert {(h.qid, h.pid) for h in rr} == {(q, p) for q, pids in listed.items() for p in pids[:30]}
    assert {h.qid for h in rr} == set(listed) and len(set(listed)) == 200
    for qid in listed:  # sorted by the model's score, not the list's order
        scores = [h.score for h in rr if h.qid == qid]
        assert scores == sorted(scores, reverse=True)


def test_missing_bm25_run_and_skipped_system(sample: EncodedSample, tmp_path: Path) -> None:
    gone = {name: tmp_path / "no-bm25" / f"{name}.full.trec" for name in ("dev", "dl19")}
    with pytest.raises(FileNotFoundError, match="bm25_mine"):
        run("tiny-cos", sample.system, Search(), Mine(top_k=5, eval_depth=10), 5, sample.emb_dir,
            sample.inputs["qrels_train"], gone, tmp_path / "n.parquet",
            tmp_path / "runs")  # fmt: skip
    with pytest.raises(FileNotFoundError, match="download stage"):
        run("tiny-cos", sample.system, Search(), Mine(top_k=5, eval_depth=10), 5, sample.emb_dir,
            sample.inputs["qrels_train"], {**bm25_candidates(sample), "dev": tmp_path / "top1000.dev"},
            tmp_path / "n.parquet", tmp_path / "runs")  # fmt: skip
    assert not (tmp_path / "n.parquet").exists()  # checked before any work
    from tasks.encode import run as encode_run

    skipped = DenseSystem(model=None, score="dot")
    encode_run("gone", skipped, Encode(), {}, tmp_path / "emb",
               tmp_path / "cache")  # fmt: skip
    out = tmp_path / "gone.parquet"
    summary = run("gone", skipped, Search(), Mine(), 5, tmp_path / "emb", sample.inputs["qrels_train"],
                  bm25_candidates(sample), out, tmp_path / "runs-gone")  # fmt: skip
    assert summary == {"skipped": "no public weights"}
    assert pq.read_metadata(out).num_rows == 0
    assert pq.read_metadata(out).metadata[b"skipped"] == b"no public weights"
    assert [f.name for f in (tmp_path / "runs-gone").iterdir()] == ["SKIPPED.txt"]
