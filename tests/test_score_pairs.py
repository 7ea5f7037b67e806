"""``cross_encoder.addressing: pair``: scores cached per (query text, passage text), each pair
scored alone, so a refresh scores only the pairs it has never seen and still writes the bytes of
a run with an empty cache (``score`` and ``ce_rerank``); shard mode stays as it was.

Work done is read from the ``HARDNEGS_WORK_LOG`` lines of :func:`tasks.io.record_work`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydantic
import pytest

from tasks.config import CrossEncoderCfg
from tasks.io import dumps_json, read_json
from tasks.records import HardNegatives, read_collection, write_hard_negatives, write_id_text
from tasks.rowstore import digest
from tasks.score import (
    CACHE_FORMAT,
    ModelSpec,
    library_versions,
    model_identity,
    pair_store_root,
    run,
    score_by_pair,
    score_resumable,
)
from tests._model_helpers import TinyModels, tiny_models, tiny_texts
from tests._score_helpers import World, make_records, tiny_world

FILES = ("scores/ce-scores.parquet", "scores/manifest.json", "scores/score.json", "ce.pkl.gz")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="module")
def world(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> World:
    return tiny_world(tmp_path_factory.mktemp("pairs-world"), models.collection, n_queries=5, per_system=4)


@pytest.fixture
def work_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "work.jsonl"
    monkeypatch.setenv("HARDNEGS_WORK_LOG", str(path))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _cfg(**kw) -> CrossEncoderCfg:
    settings = {"max_length": 64, "batch_size": 8, "shard_size": 10, "device": "cpu", "dtype": "fp32"}
    return CrossEncoderCfg(name="tiny-ce", model="unused", **{"addressing": "pair", **settings, **kw})


def _run(world: World, out: Path, ce: Path, cache: Path | None, cfg=None, executor=None) -> dict:
    return run(world.negatives, world.collection, world.queries, out / "scores", out / "ce.pkl.gz",
               cfg or _cfg(), model_path=str(ce), executor=executor, cache_dir=cache)  # fmt: skip


def _outputs(out: Path) -> dict[str, bytes]:
    return {f: (out / f).read_bytes() for f in FILES}


def _texts(world: World) -> tuple[dict[int, str], dict[int, str]]:
    queries = {int(k): v for k, v in (line.split("\t", 1) for line in world.queries.read_text().splitlines())}
    return queries, {p.pid: p.text for p in read_collection(world.collection)}


def _text_pairs(world: World) -> set[tuple[str, str]]:
    queries, passages = _texts(world)
    return {
        (queries[r.qid], passages[p])
        for r in world.records
        for p in {*r.pos, *(x for v in r.neg.values() for x in v)}
    }


def test_twice_same_bytes_and_the_second_run_scores_nothing(
    world: World, models: TinyModels, work_log: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = _run(world, tmp_path / "a", models.cross_encoder, cache)
    second = _run(world, tmp_path / "b", models.cross_encoder, cache)
    _run(world, tmp_path / "c", models.cross_encoder, None)  # no cache at all
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b") == _outputs(tmp_path / "c")
    distinct = len(_text_pairs(world))
    assert [(w["stage"], w["unit"], w["done"], w["total"]) for w in _lines(work_log)] == [
        ("score", "pairs", distinct, distinct),
        ("score", "pairs", 0, distinct),
        ("score", "pairs", distinct, distinct),
    ]
    assert first["scored_pairs"] == distinct and second["scored_pairs"] == 0
    assert second["computed_shards"] == [] and len(second["reused_shards"]) == second["shards"]
    # the store of this setting: <cache>/pairs/<settings key>/, one pack per work unit of 10 pairs
    [root] = (cache / "pairs").iterdir()
    assert len(root.name) == 64 and len(list(root.glob("*.json"))) == -(-distinct // 10)
    # DVC outputs carry no reused / computed counts; the manifest says how pairs were addressed
    stats = read_json(tmp_path / "b" / "scores" / "score.json")
    assert not any("reused" in k or "computed" in k or "scored" in k for k in stats)
    manifest = read_json(tmp_path / "b" / "scores" / "manifest.json")
    assert manifest["model"]["addressing"] == "pair" and "batch_size" not in manifest["model"]
    assert sum(s["rows"] for s in manifest["shards"]) == stats["pairs_distinct"]


def _edited_world(base: World, root: Path) -> tuple[World, str]:
    """B = A with pairs removed (a dropped query, trimmed negatives), added (a new query, new
    negatives) and one passage of A's pairs edited; returns it and the edited passage's new text."""
    root.mkdir()
    records = [
        HardNegatives(r.qid, list(r.pos), {s: list(v) for s, v in r.neg.items()}) for r in base.records
    ]
    del records[1]
    records[0].neg["bm25"] = records[0].neg["bm25"][:2]
    rng = random.Random(11)
    records[2].neg["sys-a"] += [p for p in rng.sample(range(300), 4) if p not in records[2].neg["sys-a"]]
    [new] = make_records(1, 300, per_system=3, seed=99)
    records.append(HardNegatives(5555, new.pos, new.neg))
    queries = dict(line.split("\t", 1) for line in base.queries.read_text().splitlines())
    queries["5555"] = tiny_texts(1, seed=77, max_len=6)[0]
    write_id_text(root / "q.tsv", sorted(((int(k), v) for k, v in queries.items())))
    edited_pid = records[3].pos[0]
    passages = {p.pid: p.text for p in read_collection(base.collection)}
    passages[edited_pid] = passages[edited_pid] + " edited"
    write_id_text(root / "c.tsv", sorted(passages.items()))
    write_hard_negatives(root / "hn.jsonl.gz", records)
    return World(root / "c.tsv", root / "q.tsv", root / "hn.jsonl.gz", records), passages[edited_pid]


def test_refresh_after_edits_is_a_full_rebuild_scoring_only_new_pairs(
    world: World, models: TinyModels, work_log: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _run(world, tmp_path / "a", models.cross_encoder, cache)
    b, edited_text = _edited_world(world, tmp_path / "b-world")
    _run(b, tmp_path / "warm", models.cross_encoder, cache)
    _run(b, tmp_path / "cold", models.cross_encoder, tmp_path / "empty-cache")
    assert _outputs(tmp_path / "warm") == _outputs(tmp_path / "cold")
    new_pairs = _text_pairs(b) - _text_pairs(world)
    assert any(p == edited_text for _, p in new_pairs)  # the edited passage is scored again
    [_, warm, cold] = _lines(work_log)
    assert warm["done"] == len(new_pairs) and 0 < warm["done"] < warm["total"] == len(_text_pairs(b))
    assert cold["done"] == cold["total"] == len(_text_pairs(b))


def test_a_score_does_not_depend_on_its_neighbours(models: TinyModels, tmp_path: Path) -> None:
    """The same pair alone, among others, in another work unit: the same bits; and the same
    value as a shard-mode (batched) score up to float rounding."""
    queries = dict(enumerate(tiny_texts(4, seed=3, max_len=8)))
    passages = dict(enumerate(tiny_texts(30, seed=4, max_len=40)))
    spec = ModelSpec(str(models.cross_encoder), max_length=64, batch_size=8, addressing="pair")
    qids = np.repeat(np.arange(4), 30)
    pids = np.tile(np.arange(30), 4)
    crowd = score_by_pair(qids, pids, queries, passages, spec, 7, None).scores
    for shard_size in (1, 13):
        shuffled = np.random.default_rng(shard_size).permutation(len(qids))
        again = score_by_pair(qids[shuffled], pids[shuffled], queries, passages, spec, shard_size, None)
        assert again.scores.tobytes() == crowd[shuffled].tobytes()
    alone = score_by_pair(qids[5:6], pids[5:6], queries, passages, spec, 7, None).scores
    assert alone.tobytes() == crowd[5:6].tobytes()
    shard_spec = ModelSpec(str(models.cross_encoder), max_length=64, batch_size=8)
    batched = score_resumable(qids, pids, queries, passages, shard_spec, 50, None).scores
    np.testing.assert_allclose(batched, crowd, rtol=1e-4, atol=1e-5)


def test_pair_scores_do_not_depend_on_the_thread_count(models: TinyModels) -> None:
    """A batch of one's bits depend on torch's thread count: pair mode scores on CPU with a fixed
    count (recorded in the identity, so in the store's key) and restores the caller's."""
    import torch

    queries = dict(enumerate(tiny_texts(3, seed=6, max_len=8)))
    passages = dict(enumerate(tiny_texts(20, seed=7, max_len=40)))
    spec = ModelSpec(str(models.cross_encoder), max_length=64, addressing="pair")
    qids, pids = np.repeat(np.arange(3), 20), np.tile(np.arange(20), 3)
    score_by_pair(qids[:1], pids[:1], queries, passages, spec, 16, None)  # load: sets torch's threads
    before = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got.append(score_by_pair(qids, pids, queries, passages, spec, 16, None).scores.tobytes())
            assert torch.get_num_threads() == threads  # restored after scoring
    finally:
        torch.set_num_threads(before)
    assert got[0] == got[1]
    assert "cpu_threads" not in model_identity(spec)  # strict MKL CNR: the count changes no bits


def test_a_damaged_pack_is_ignored_and_rescored(
    world: World, models: TinyModels, work_log: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _run(world, tmp_path / "ref", models.cross_encoder, cache)
    [root] = (cache / "pairs").iterdir()
    victim = sorted(root.glob("*.rows.npy"))[0]
    rows = read_json(victim.with_name(victim.name.replace(".rows.npy", ".json")))["rows"]
    victim.write_bytes(victim.read_bytes()[:-4])
    (root / "0123.rows.npy").write_bytes(b"left by a killed writer")  # no JSON: removed too
    _run(world, tmp_path / "again", models.cross_encoder, cache)
    assert _outputs(tmp_path / "again") == _outputs(tmp_path / "ref")
    assert _lines(work_log)[-1]["done"] == rows > 0
    assert not (root / "0123.rows.npy").exists()


@pytest.mark.slow  # a spawned process imports torch
def test_same_bytes_in_a_spawned_worker_process(world: World, models: TinyModels, tmp_path: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    _run(world, tmp_path / "inline", models.cross_encoder, tmp_path / "c1")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        _run(world, tmp_path / "process", models.cross_encoder, tmp_path / "c2", executor=ex)
    assert _outputs(tmp_path / "process") == _outputs(tmp_path / "inline")


def test_settings_key_ignores_batch_size_only(
    world: World, models: TinyModels, work_log: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _run(world, tmp_path / "a", models.cross_encoder, cache)
    _run(world, tmp_path / "b", models.cross_encoder, cache, cfg=_cfg(batch_size=3))
    assert _outputs(tmp_path / "b") == _outputs(tmp_path / "a")  # the batch size changes nothing
    _run(world, tmp_path / "c", models.cross_encoder, cache, cfg=_cfg(max_length=32))
    a, b, c = _lines(work_log)
    assert b["done"] == 0 and c["done"] == c["total"] == a["total"]
    assert len(list((cache / "pairs").iterdir())) == 2


def test_shard_mode_is_unchanged(world: World, models: TinyModels, work_log: Path, tmp_path: Path) -> None:
    """Default addressing: no ``addressing`` in identities or keys (the keys of before), no pair
    store; record_work counts the pairs of the shards scored."""
    cfg = _cfg(addressing="shard")
    spec = ModelSpec.from_cfg(cfg, str(models.cross_encoder))
    ident = model_identity(spec)
    assert "addressing" not in ident and ident["batch_size"] == 8
    cache = tmp_path / "cache"
    first = _run(world, tmp_path / "a", models.cross_encoder, cache, cfg=cfg)
    manifest = read_json(tmp_path / "a" / "scores" / "manifest.json")
    assert manifest["model"] == ident and not (cache / "pairs").exists()
    base = {"format": CACHE_FORMAT, "model": ident, "libraries": library_versions("torch")}
    for shard in manifest["shards"]:  # the shard keys as the code before pair addressing made them
        key = hashlib.sha256(dumps_json({**base, "input_sha256": shard["input_sha256"]}).encode()).hexdigest()
        assert (cache / key[:2] / f"{key}.npy").exists()
    _run(world, tmp_path / "b", models.cross_encoder, cache, cfg=cfg)
    n = first["pairs_distinct"]
    assert [(w["done"], w["total"]) for w in _lines(work_log)] == [(n, n), (0, n)]
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")


def test_pair_store_lives_under_pairs_and_names_its_settings(models: TinyModels, tmp_path: Path) -> None:
    def root(**kw) -> Path:
        return pair_store_root(tmp_path, ModelSpec(str(models.cross_encoder), addressing="pair", **kw))

    assert root().parent == tmp_path / "pairs"
    assert root(batch_size=1) == root() != root(dtype="bf16") != root(max_length=32)
    assert digest("q", "p") != digest("qp", "")  # the key is the two texts, not their concatenation


def test_ce_rerank_pair_mode_warm_equals_cold(models: TinyModels, work_log: Path, tmp_path: Path) -> None:
    from tasks import rerank
    from tasks.records import Hit, write_run

    queries = tmp_path / "queries.tsv"
    write_id_text(queries, zip((11, 22, 33), tiny_texts(3, seed=5, max_len=6), strict=True))
    rng = np.random.default_rng(0)
    picks = {q: rng.choice(300, 10, replace=False) for q in (11, 22, 33)}

    def go(name: str, depth: int, cache: Path) -> bytes:
        hits = [Hit(q, int(p), r + 1, 20.0 - r) for q, ps in picks.items() for r, p in enumerate(ps)]
        write_run(tmp_path / "dev.full.trec", hits, "bm25")
        rerank.run(tmp_path / "dev.full.trec", queries, models.collection, tmp_path / name, depth,
                   _cfg(shard_size=5), model_path=str(models.cross_encoder), cache_dir=cache)  # fmt: skip
        return (tmp_path / name).read_bytes()

    go("a.trec", 6, tmp_path / "cache")
    warm = go("warm.trec", 8, tmp_path / "cache")  # deeper: 2 new candidates per query
    cold = go("cold.trec", 8, tmp_path / "cold-cache")
    assert warm == cold
    assert [(w["stage"], w["done"], w["total"]) for w in _lines(work_log)] == [
        ("ce_rerank", 18, 18), ("ce_rerank", 6, 24), ("ce_rerank", 24, 24),
    ]  # fmt: skip
    assert _lines(work_log)[0]["candidates"] == "dev.full.trec"


def test_bad_addressing_and_spec_are_errors(models: TinyModels) -> None:
    with pytest.raises(pydantic.ValidationError, match="addressing"):
        CrossEncoderCfg(name="x", model="y", addressing="text")
    one = (np.array([1]), np.array([2]), {1: "q"}, {2: "p"})
    with pytest.raises(ValueError, match="addressing='pair'"):
        score_by_pair(*one, ModelSpec(str(models.cross_encoder)), 4, None)


def test_move_the_cache_and_it_is_still_used(
    world: World, models: TinyModels, work_log: Path, tmp_path: Path
) -> None:
    """The store is keyed by texts and settings, not by paths: a copied cache resumes."""
    _run(world, tmp_path / "a", models.cross_encoder, tmp_path / "cache")
    shutil.copytree(tmp_path / "cache", tmp_path / "elsewhere")
    moved = shutil.copytree(models.cross_encoder, tmp_path / "model-copy")
    _run(world, tmp_path / "b", moved, tmp_path / "elsewhere")
    assert _lines(work_log)[-1]["done"] == 0
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")
