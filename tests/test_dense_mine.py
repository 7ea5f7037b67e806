"""mine@<system>: exact search vs the previous search and float64 brute force (ties, blocks, devices),
ANN recall, mining + runs on the sample, skips."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.config import DenseSystem, Encode, Mine, Search
from tasks.dense_mine import Searcher, exact_search, gather_rows, run, search_sets
from tasks.encode import Embeddings, load_part
from tasks.records import qrels_by_query, read_hits, read_qrels, read_run
from tests._dense_helpers import (
    EncodedSample,
    brute_force,
    encoded_sample,
    previous_exact_search,
    quantised,
    write_embeddings,
)

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory, sample_inputs: dict[str, Path]) -> EncodedSample:
    return encoded_sample(tmp_path_factory, sample_inputs)


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    # float16-representable values so the reference and the search see the same numbers
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float16).astype(np.float32)


def _tied_corpus(root: Path) -> tuple[np.ndarray, np.ndarray, Embeddings, np.ndarray]:
    """700 quantised passages in 64-row shards, 30 copies of passage 5, pids not in row order."""
    c = quantised(700, 16, 1)
    c[300:330] = c[5]
    ids = np.random.default_rng(2).permutation(np.arange(10_000, 10_700)).astype(np.int64)
    q = quantised(97, 16, 3)
    q[0] = c[5]  # a query whose top hits are the 31 tied copies
    return c, ids, write_embeddings(root, ids, c, shard_rows=64), q


SETTINGS = [  # device, memory_mb (0.02: 5 shards per block, 3 blocks), tile rows, threads
    ("cpu", 64, None, 2),
    ("cpu", 0.02, 48, 2),
    ("cpu", 0.02, 48, 1),
    ("torch-cpu", 64, None, 1),
    ("torch-cpu", 0.02, 48, 1),
]


@pytest.mark.parametrize("k", [7, 100, 1000])  # 100: larger than a shard; 1000: than the corpus
@pytest.mark.parametrize(("device", "memory_mb", "tile", "threads"), SETTINGS)
def test_exact_search_equals_previous_search_on_ties(
    tmp_path: Path, k: int, device: str, memory_mb: float, tile: int | None, threads: int
) -> None:
    """Dot products of quantised vectors are exact in any order: the ids and scores must be the
    previous implementation's (FAISS per shard) and float64 brute force's, ties by pid."""
    c, ids, corpus, q = _tied_corpus(tmp_path)
    result = search_sets(
        [(q, k), (q[:5], 3)], corpus, False, query_chunk=16, device=device, memory_mb=memory_mb,
        threads=threads, tile_rows=tile,
    )  # fmt: skip
    (s, p), (s3, p3) = result.hits
    ps, pp = previous_exact_search(q, corpus, k, False, 16)
    rs, rp = brute_force(q, c, ids, k)
    np.testing.assert_array_equal(p, pp)
    np.testing.assert_array_equal(s, ps)
    np.testing.assert_array_equal(p, rp)
    np.testing.assert_array_equal(s, rs)
    np.testing.assert_array_equal(p3, rp[:5, :3])  # a second query set in the same pass
    assert p.shape == (97, min(k, 700))
    tie = s[:, 1:] == s[:, :-1]
    assert tie.sum() > 50 and (p[:, 1:][tie] > p[:, :-1][tie]).all()  # many ties, by pid ascending
    copies = set(ids[[5, *range(300, 330)]].tolist())
    assert [x for x in p[0].tolist() if x in copies] == sorted(copies)[: len(set(p[0]) & copies)]
    assert result.blocks == (1 if memory_mb == 64 else 3)
    if k < 700:  # ties across the margin: those queries were settled by the second pass
        assert result.settled > 0


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_cos_equals_float64_brute_force(tmp_path: Path, device: str) -> None:
    c, ids, corpus, q = _tied_corpus(tmp_path)
    s, p = exact_search(q, corpus, 100, True, 16, device, memory_mb=0.02)
    qn, cn = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, c))
    rs, rp = brute_force(qn.astype(np.float32), cn.astype(np.float32), ids, 100)
    np.testing.assert_array_equal(p, rp)
    np.testing.assert_array_equal(s, rs)


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_exact_where_float32_is_not(tmp_path: Path, device: str) -> None:
    """Scores ~8e7 (float32 spacing 8) that differ by 8: a float32 matmul, rounding its partial
    sums, ties or misorders them; float64 is exact. Per query the corpus holds the query itself
    with 0..4 in the coordinate the query weighs 8: the top-5 is S+32, S+24, ..., S."""
    rng = np.random.default_rng(7)
    q = rng.integers(-2000, 2001, size=(40, 64)).astype(np.float32)
    q[:, 0] = 8
    near = np.repeat(q, 5, axis=0)
    near[:, 0] = np.tile(np.arange(5), 40)
    c = np.concatenate([near, rng.integers(-2000, 2001, size=(200, 64)).astype(np.float32)])
    ids = np.arange(len(c), dtype=np.int64) * 2  # S+8t at a larger pid: float32 ties go the wrong way
    corpus = write_embeddings(tmp_path, ids, c, shard_rows=100)
    s, p = exact_search(q, corpus, 12, False, 8, device, memory_mb=0.1)
    rs, rp = brute_force(q, c, ids, 12)
    np.testing.assert_array_equal(p, rp)
    np.testing.assert_array_equal(s, rs)
    _, fp = previous_exact_search(q, corpus, 12, False, 8)
    assert (fp != rp).any(axis=1).sum() > 5  # the data does defeat a float32 ranking


def test_results_do_not_depend_on_blocks_tiles_threads_or_device(tmp_path: Path) -> None:
    c = _vectors(900, 32, 11)
    ids = np.random.default_rng(12).permutation(900).astype(np.int64) * 3
    corpus = write_embeddings(tmp_path, ids, c, shard_rows=128)
    q = _vectors(150, 32, 13)
    for normalize in (False, True):
        ref = exact_search(q, corpus, 30, normalize, 1024)
        qn, cn = (x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x for x in (q, c))
        np.testing.assert_array_equal(ref[1], brute_force(qn, cn, ids, 30)[1])
        for device, memory_mb, tile, threads in SETTINGS[1:]:
            for chunk in (7, 64):
                got = search_sets(
                    [(q, 30)], corpus, normalize, query_chunk=chunk, device=device, memory_mb=memory_mb,
                    threads=threads, tile_rows=tile,
                ).hits[0]  # fmt: skip
                np.testing.assert_array_equal(got[1], ref[1])
                np.testing.assert_array_equal(got[0], ref[0])


def test_gathered_rows_are_the_prepared_rows(tmp_path: Path) -> None:
    c = _vectors(300, 8, 21)
    corpus = write_embeddings(tmp_path, np.arange(300, dtype=np.int64), c, shard_rows=64)
    rows = np.array([0, 5, 63, 64, 200, 299], dtype=np.int64)
    for normalize in (False, True):
        result = search_sets([], corpus, normalize, query_chunk=8, memory_mb=0.005, gather=rows)
        assert result.gathered is not None and result.blocks > 1
        np.testing.assert_array_equal(result.gathered, gather_rows(corpus, rows, normalize))
        one = [gather_rows(corpus, rows[i : i + 1], normalize)[0] for i in range(len(rows))]
        np.testing.assert_array_equal(result.gathered, np.stack(one))  # row by row, batch-free


def test_bad_device(tmp_path: Path) -> None:
    corpus = write_embeddings(tmp_path, np.arange(10, dtype=np.int64), _vectors(10, 4, 1), shard_rows=5)
    with pytest.raises(ValueError, match="expected one of cpu, cuda, torch-cpu"):
        exact_search(_vectors(2, 4, 2), corpus, 3, False, 8, "gpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            exact_search(_vectors(2, 4, 2), corpus, 3, False, 8, "cuda")


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
        assert {(h.qid, h.pid) for h in rr} == bm25  # a ranked run: cut at rerank_depth 20
        assert summary[name]["rerank"]["ordered"] and summary[name]["rerank"]["reranked"] == len(rr)
        scored = {(h.qid, h.pid): h.score for h in full}
        both = [(scored[h.qid, h.pid], h.score) for h in rr if (h.qid, h.pid) in scored]
        assert both and all(a == b for a, b in both)  # one score per pair: full run = re-ranking


def bm25_candidates(sample: EncodedSample) -> dict[str, Path]:
    return {name: sample.bm25_runs / f"{name}.full.trec" for name in ("dev", "dl19")}


def _official_dl19(dest: Path) -> Path:
    """The sample's official DL19 list, gunzipped as the download stage does."""
    import gzip

    from tasks.sample import SAMPLE_DIR

    path = dest / "msmarco-passagetest2019-top1000.tsv"
    path.write_bytes(gzip.decompress((SAMPLE_DIR / f"{path.name}.gz").read_bytes()))
    return path


def test_rerank_the_official_lists_in_full(sample: EncodedSample, tmp_path: Path) -> None:
    """dev's top1000.dev (50 per query) and DL19's official list (100 per query) are re-ranked
    in FULL with rerank_depth 30, and a shuffled copy of the list writes the same bytes."""
    import random

    top = sample.inputs["top1000_dev"]
    dl19 = _official_dl19(tmp_path)
    listed: dict[str, dict[int, set[int]]] = {}
    for name, path in (("dev", top), ("dl19", dl19)):
        for line in path.read_text(encoding="utf-8").splitlines():
            qid, pid, _ = line.split("\t", 2)
            listed.setdefault(name, {}).setdefault(int(qid), set()).add(int(pid))
    lines = top.read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(7).shuffle(lines)
    (tmp_path / "shuffled").mkdir()
    shuffled = tmp_path / "shuffled" / "top1000.dev"
    shuffled.write_text("".join(lines), encoding="utf-8")
    summaries = {}
    for label, dev in (("file", top), ("shuffled", shuffled)):
        summaries[label] = run(
            "tiny-cos", sample.system, Search(query_chunk=256), Mine(top_k=5, eval_depth=10), 30,
            sample.emb_dir, sample.inputs["qrels_train"], {"dev": dev, "dl19": dl19},
            tmp_path / label / "neg.parquet", tmp_path / label / "runs",
        )  # fmt: skip
    for name, per_query in (("dev", 50), ("dl19", 100)):
        rr = list(read_run(tmp_path / "file" / "runs" / f"{name}.rerank.trec"))
        assert {(h.qid, h.pid) for h in rr} == {(q, p) for q, pids in listed[name].items() for p in pids}
        assert {len(p) for p in listed[name].values()} == {per_query}  # deeper than rerank_depth 30
        for qid in listed[name]:  # sorted by the model's score, not the list's order
            scores = [h.score for h in rr if h.qid == qid]
            assert scores == sorted(scores, reverse=True)
        assert summaries["file"][name]["rerank"] == {
            "candidates": (top if name == "dev" else dl19).name, "ordered": False, "depth": None,
            "queries": len(listed[name]), "listed": len(rr), "reranked": len(rr),
        }  # fmt: skip
    assert len(listed["dev"]) == 200 and len(listed["dl19"]) == 50
    for name in ("dev.rerank.trec", "dl19.rerank.trec"):
        runs = (tmp_path / label / "runs" / name for label in ("file", "shuffled"))
        assert next(runs).read_bytes() == next(runs).read_bytes()


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


def test_cpu_mining_never_imports_torch_and_writes_the_same_bytes(
    sample: EncodedSample, tmp_path: Path
) -> None:
    """Without a GPU device node, the mine stage searches with numpy and never imports torch (its
    ~3 s import was most of a small corpus's mining); the outputs equal an in-process run's."""
    import json
    import subprocess
    import sys

    from tasks.accel import cuda_possible
    from tasks.config import ROOT

    assert not cuda_possible([str(tmp_path / "no-such-node")])
    (tmp_path / "node").write_text("")
    assert cuda_possible([str(tmp_path / "node")])
    if cuda_possible():
        pytest.skip("this machine has a GPU device node: the stage asks torch whether CUDA works")
    args = {
        "system": sample.system.model_dump_json(), "emb": str(sample.emb_dir),
        "qrels": str(sample.inputs["qrels_train"]),
        "cands": {k: str(v) for k, v in bm25_candidates(sample).items()}, "out": str(tmp_path / "a"),
    }  # fmt: skip
    code = """
import json, sys
from pathlib import Path
from tasks.config import DenseSystem, Mine, Search
from tasks.dense_mine import run
a = json.loads(sys.argv[1]); out = Path(a["out"])
run("tiny-cos", DenseSystem.model_validate_json(a["system"]), Search(query_chunk=256), Mine(top_k=10),
    20, Path(a["emb"]), Path(a["qrels"]), {k: Path(v) for k, v in a["cands"].items()},
    out / "neg.parquet", out / "runs", out / "summary.json")
assert "torch" not in sys.modules, "torch imported"
"""
    subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=ROOT, check=True)
    b = tmp_path / "b"
    run(
        "tiny-cos", sample.system, Search(query_chunk=256), Mine(top_k=10), 20, sample.emb_dir,
        sample.inputs["qrels_train"], bm25_candidates(sample), b / "neg.parquet", b / "runs",
        b / "summary.json",
    )  # fmt: skip
    for rel in ("neg.parquet", "runs/dev.full.trec", "runs/dev.rerank.trec", "summary.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (b / rel).read_bytes(), rel
