"""encode@<system> with ``encode.addressing: text``: per-text cache, batch invariance, refresh = rebuild."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tasks.config import DenseSystem, Encode
from tasks.encode import ShardSpec, encode_shard, load_part, read_manifest, run
from tasks.io import DataError
from tasks.records import write_id_text
from tests._model_helpers import TinyModels, tiny_models, tiny_texts

TEXT = Encode(batch_size=16, shard_size=40, device="cpu", dtype="fp32", addressing="text")
SHARD = Encode(batch_size=16, shard_size=40, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory)


@pytest.fixture()
def system(models: TinyModels) -> DenseSystem:
    return DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=32)


@pytest.fixture()
def work_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "work.jsonl"
    monkeypatch.setenv("HARDNEGS_WORK_LOG", str(path))
    return path


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _last_work(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


def _write(tmp_path: Path, name: str, rows: list[tuple[int, str]]) -> Path:
    path = tmp_path / f"{name}.tsv"
    write_id_text(path, rows)
    return path


def _corpus_a(n: int = 150) -> list[tuple[int, str]]:
    return [(1000 + 3 * i, t) for i, t in enumerate(tiny_texts(n, seed=11))]


def _queries() -> list[tuple[int, str]]:
    return [(50 + i, t) for i, t in enumerate(tiny_texts(20, seed=12, max_len=8))]


def _parts(tmp_path: Path, corpus: list[tuple[int, str]], tag: str = "a") -> dict[str, Path]:
    return {
        "corpus": _write(tmp_path, f"corpus-{tag}", corpus),
        "train": _write(tmp_path, "queries", _queries()),
    }


def _edit(corpus: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], int]:
    """B = A with ~5 % of rows edited, rows inserted at the start and in the middle, some removed.
    Returns B and the number of distinct texts of B that A lacks."""
    rng = random.Random(5)
    rows = list(corpus)
    fresh = iter(tiny_texts(40, seed=99, min_len=2, max_len=30))
    for i in rng.sample(range(len(rows)), k=len(rows) // 20):  # edits
        rows[i] = (rows[i][0], next(fresh))
    for i in sorted(rng.sample(range(len(rows)), k=4), reverse=True):  # removals
        del rows[i]
    rows[0:0] = [(10 + j, next(fresh)) for j in range(3)]  # at the start
    mid = len(rows) // 2
    rows[mid:mid] = [(20 + j, next(fresh)) for j in range(3)]  # in the middle
    old = {t for _, t in corpus}
    return rows, len({t for _, t in rows} - old)


def test_text_mode_twice_is_identical_and_encodes_nothing(
    system: DenseSystem, tmp_path: Path, work_log: Path
) -> None:
    parts = _parts(tmp_path, _corpus_a())
    first = run("s", system, TEXT, parts, tmp_path / "a", tmp_path / "cache")
    assert first["computed"] == 170 and _last_work(work_log) == {
        "stage": "encode@s", "unit": "texts", "done": 170, "total": 170,
    }  # fmt: skip
    second = run("s", system, TEXT, parts, tmp_path / "b", tmp_path / "cache")
    assert second["computed"] == 0 and _last_work(work_log)["done"] == 0
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    # the layout readers expect: the files of shard mode, a manifest that says text addressing
    run("s", system, SHARD, parts, tmp_path / "shard", tmp_path / "cache-shard")
    assert _last_work(work_log)["done"] == 170  # shard mode: the rows of the shards it computed
    assert set(_tree(tmp_path / "a")) == set(_tree(tmp_path / "shard"))
    text_m, shard_m = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "shard")
    assert text_m["addressing"] == "text" and "addressing" not in shard_m and "batch_size" not in text_m
    assert {k for k in shard_m if k != "batch_size"} | {"addressing"} == set(text_m)
    for part in ("corpus", "train"):
        t, s = text_m["parts"][part], shard_m["parts"][part]
        assert t["text_sha256"] == s["text_sha256"] and t["rows"] == s["rows"]
        for te, se in zip(t["shards"], s["shards"], strict=True):
            assert {k: te[k] for k in ("file", "rows", "first_id", "last_id", "text_sha256")} == {
                k: se[k] for k in ("file", "rows", "first_id", "last_id", "text_sha256")
            }
            assert te["sha256"] == hashlib.sha256((tmp_path / "a" / te["file"]).read_bytes()).hexdigest()
        text_e, shard_e = load_part(tmp_path / "a", part), load_part(tmp_path / "shard", part)
        assert text_e.ids.tolist() == shard_e.ids.tolist()
        np.testing.assert_allclose(
            text_e.load().astype(np.float32), shard_e.load().astype(np.float32), atol=2e-3
        )


def test_refresh_of_an_edited_corpus_equals_a_rebuild(
    system: DenseSystem, tmp_path: Path, work_log: Path
) -> None:
    a = _corpus_a(200)
    b, new_texts = _edit(a)
    assert 10 <= new_texts <= 16 and b[0][0] == 10
    run("s", system, TEXT, _parts(tmp_path, a, "a"), tmp_path / "out-a", tmp_path / "warm")
    parts_b = _parts(tmp_path, b, "b")
    warm = run("s", system, TEXT, parts_b, tmp_path / "warm-b", tmp_path / "warm")
    assert _last_work(work_log) == {
        "stage": "encode@s",
        "unit": "texts",
        "done": new_texts,
        "total": len(b) + 20,
    }
    cold = run("s", system, TEXT, parts_b, tmp_path / "cold-b", tmp_path / "empty")
    assert warm["computed"] == new_texts and cold["computed"] == len({t for _, t in b}) + 20
    assert _tree(tmp_path / "warm-b") == _tree(tmp_path / "cold-b")
    # shard mode, for contrast: the insertion at the top invalidates every corpus shard
    run("s", system, SHARD, _parts(tmp_path, a, "a"), tmp_path / "sa", tmp_path / "shard-cache")
    stats = run("s", system, SHARD, parts_b, tmp_path / "sb", tmp_path / "shard-cache")
    assert stats["reused"] == 1  # only the queries' shard


def test_embedding_is_the_text_alone_whatever_its_neighbours(
    system: DenseSystem, models: TinyModels, tmp_path: Path
) -> None:
    a = _corpus_a(120)
    b, _ = _edit(a)
    run("s", system, TEXT, _parts(tmp_path, a, "a"), tmp_path / "a", tmp_path / "cache-a")
    run("s", system, TEXT, _parts(tmp_path, b, "b"), tmp_path / "b", tmp_path / "cache-b")  # own cache
    emb_a, emb_b = load_part(tmp_path / "a", "corpus"), load_part(tmp_path / "b", "corpus")
    vec_a, vec_b = emb_a.load(), emb_b.load()
    row_b = {int(i): r for r, i in enumerate(emb_b.ids)}
    kept = [(r, pid, t) for r, (pid, t) in enumerate(a) if (pid, t) in set(b)]
    assert len(kept) > 90 and any(row_b[pid] != r for r, pid, _ in kept)  # rows moved
    for r, pid, _text in kept:
        assert np.array_equal(vec_a[r], vec_b[row_b[pid]]), pid
    for r, _, text in kept[:5] + kept[-5:]:  # each equals the text encoded alone with the model
        alone = encode_shard(ShardSpec("k", str(models.bi_cls_dot), None, 32, "cpu", "fp32", 1, (text,)))
        assert np.array_equal(vec_a[r], alone.embeddings[0])
    # and a batch of neighbours differs from it only in the last bits (the reason for this mode)
    batched = encode_shard(
        ShardSpec("k", str(models.bi_cls_dot), None, 32, "cpu", "fp32", 16, tuple(t for _, t in a[:40]))
    ).embeddings
    np.testing.assert_allclose(batched.astype(np.float32), vec_a[:40].astype(np.float32), atol=2e-3)


def test_damaged_pack_is_ignored_and_recomputed(system: DenseSystem, tmp_path: Path, work_log: Path) -> None:
    parts = _parts(tmp_path, _corpus_a())
    run("s", system, TEXT, parts, tmp_path / "a", tmp_path / "cache")
    before = _tree(tmp_path / "a")
    packs = sorted((tmp_path / "cache" / "texts").rglob("*.rows.npy"))
    assert len(packs) == 5  # 170 texts in units of 40: one pack per unit
    victim = packs[2]
    rows = int(np.load(victim).shape[0])
    victim.write_bytes(b"garbage")
    (victim.parent / "deadbeef.rows.npy").write_bytes(b"half-written")  # a writer killed mid-pack
    stats = run("s", system, TEXT, parts, tmp_path / "b", tmp_path / "cache")
    assert stats["computed"] == rows == _last_work(work_log)["done"]
    assert _tree(tmp_path / "b") == before
    assert not (victim.parent / "deadbeef.rows.npy").exists()


def test_worker_processes_give_identical_bytes(system: DenseSystem, tmp_path: Path) -> None:
    from tasks.scaleout import process_pool

    parts = _parts(tmp_path, _corpus_a())
    run("s", system, TEXT, parts, tmp_path / "inline", tmp_path / "cache-inline")
    with process_pool(2, threads=1) as pool:
        stats = run("s", system, TEXT, parts, tmp_path / "pool", tmp_path / "cache-pool", executor=pool)
    assert stats["computed"] == 170
    assert _tree(tmp_path / "pool") == _tree(tmp_path / "inline")


def test_duplicates_and_shared_texts_are_encoded_once(system: DenseSystem, tmp_path: Path) -> None:
    corpus = [(i, "river cat dog" if i % 3 == 0 else f"book {i} tree") for i in range(60)]
    queries = [(900, "river cat dog"), (901, "book 1 tree"), (902, "a new query")]
    parts = {"corpus": _write(tmp_path, "c", corpus), "train": _write(tmp_path, "q", queries)}
    stats = run("s", system, TEXT, parts, tmp_path / "o", tmp_path / "cache")
    assert stats["computed"] == 1 + 40 + 1  # plain encode: corpus and queries share one store
    vec = load_part(tmp_path / "o", "corpus").load()
    assert np.array_equal(vec[0], vec[3]) and np.array_equal(
        load_part(tmp_path / "o", "train").load()[0], vec[0]
    )


def test_bad_input(system: DenseSystem, tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="no passages|no rows to encode"):
        run("s", system, TEXT, {"corpus": empty}, tmp_path / "o", tmp_path / "cache")
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\tok text\nnot-an-id\tbroken\n")
    with pytest.raises(DataError, match="bad.tsv"):
        run("s", system, TEXT, {"corpus": bad}, tmp_path / "o", tmp_path / "cache")
    with pytest.raises(ValueError, match="addressing"):
        Encode(addressing="row")  # type: ignore[arg-type]
