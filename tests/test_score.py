"""The score stage on a tiny world with the real smoke cross-encoder."""

from __future__ import annotations

import shutil
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.config import CrossEncoderCfg
from tasks.io import DataError, read_json
from tasks.records import HardNegatives, write_hard_negatives, write_id_text
from tasks.score import ModelSpec, ShardSpec, length_order, main, run, score_shard
from tasks.scores_pickle import load_scores_pickle
from tests._model_helpers import tiny_models
from tests._score_helpers import World, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    models = tiny_models(tmp_path_factory)
    return tiny_world(tmp_path_factory.mktemp("score-world"), models.collection)


@pytest.fixture(scope="module")
def ce_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_models(tmp_path_factory).cross_encoder)


def _cfg(shard_size: int = 40, **kw) -> CrossEncoderCfg:
    # fp32 pinned: the tests compare against a plain fp32 CrossEncoder.predict
    settings = {"max_length": 64, "batch_size": 8, "device": "cpu", "dtype": "fp32", **kw}
    return CrossEncoderCfg(name="tiny-ce", model="unused", shard_size=shard_size, **settings)


def _run(
    world: World, out: Path, ce: str, cfg: CrossEncoderCfg | None = None, executor: Executor | None = None
):
    return run(
        world.negatives,
        world.collection,
        world.queries,
        out / "scores",
        out / "tiny-ce-scores.pkl.gz",
        cfg or _cfg(),
        model_path=ce,
        executor=executor,
    )


@pytest.fixture(scope="module")
def reference(world: World, ce_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("score-ref")
    return out, _run(world, out, ce_path)


def _outputs(out: Path) -> tuple[bytes, bytes]:
    return (out / "scores" / "ce-scores.parquet").read_bytes(), (out / "tiny-ce-scores.pkl.gz").read_bytes()


def test_scores_cover_distinct_pairs_and_match_plain_predict(world: World, ce_path: str, reference) -> None:
    from sentence_transformers import CrossEncoder
    from torch.nn import Identity

    out, stats = reference
    pairs = sorted(
        {(r.qid, p) for r in world.records for p in [*r.pos, *(x for v in r.neg.values() for x in v)]}
    )
    named = sum(len(r.pos) + sum(len(v) for v in r.neg.values()) for r in world.records)
    assert stats["pairs_distinct"] == len(pairs) and stats["pairs_named"] == named
    assert stats["dedup_saved_share"] == pytest.approx(1 - len(pairs) / named, abs=1e-6) and named > len(
        pairs
    )
    table = pq.read_table(out / "scores" / "ce-scores.parquet")
    assert str(table.schema) == "qid: int64\npid: int64\nscore: float"
    assert list(zip(table.column("qid").to_pylist(), table.column("pid").to_pylist(), strict=True)) == pairs
    # same numbers as a plain CrossEncoder.predict over the pairs in natural order (logits)
    queries = dict(line.split("\t") for line in world.queries.read_text().splitlines())
    passages = dict(line.split("\t") for line in world.collection.read_text().splitlines())
    model = CrossEncoder(ce_path, device="cpu", max_length=64)
    plain = model.predict([(queries[str(q)], passages[str(p)]) for q, p in pairs], activation_fn=Identity())
    np.testing.assert_allclose(table.column("score").to_numpy(), plain, rtol=1e-4, atol=1e-5)
    loaded = load_scores_pickle(out / "tiny-ce-scores.pkl.gz")
    assert sum(len(v) for v in loaded.values()) == len(pairs)
    assert all(
        loaded[q][p] == float(s)
        for q, p, s in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
    )
    assert read_json(out / "scores" / "score.json")["pairs_distinct"] == len(pairs)


def test_length_order_is_stable_longest_first() -> None:
    order = length_order(["a", "bb", "a", "ccc"], ["x", "x", "x", ""])
    assert order.tolist() == [1, 3, 0, 2]


def test_changed_model_settings_start_over(world: World, ce_path: str, reference, tmp_path: Path) -> None:
    shutil.copytree(reference[0] / "scores", tmp_path / "scores")
    stats = _run(world, tmp_path, ce_path, cfg=_cfg(max_length=32))
    assert stats["reused_shards"] == [] and len(stats["computed_shards"]) == stats["shards"]


def test_same_bytes_with_a_thread_pool(world: World, ce_path: str, reference, tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as ex:
        _run(world, tmp_path, ce_path, executor=ex)
    assert _outputs(tmp_path) == _outputs(reference[0])


def test_same_bytes_wherever_the_model_directory_lives(
    world: World, ce_path: str, reference, tmp_path: Path
) -> None:
    """Another checkout (another absolute path) writes the same files, shard manifest included."""
    moved = shutil.copytree(ce_path, tmp_path / "elsewhere" / "smoke-cross-encoder")
    _run(world, tmp_path, str(moved))
    files = ("scores/ce-scores.parquet", "scores/manifest.json", "tiny-ce-scores.pkl.gz")
    assert all((tmp_path / f).read_bytes() == (reference[0] / f).read_bytes() for f in files)
    assert str(tmp_path) not in (tmp_path / "scores/manifest.json").read_text()


def _small_world(tmp_path: Path, collection: list[str], records: list[HardNegatives]) -> World:
    coll, queries, negs = tmp_path / "c.tsv", tmp_path / "q.tsv", tmp_path / "hn.jsonl.gz"
    write_id_text(coll, enumerate(collection))
    write_id_text(queries, [(r.qid, f"query {r.qid}") for r in records])
    write_hard_negatives(negs, records)
    return World(coll, queries, negs, records)


def test_missing_pid_or_qid_is_an_error(ce_path: str, tmp_path: Path) -> None:
    w = _small_world(tmp_path, ["cat", "dog"], [HardNegatives(1, [0], {"bm25": [1, 7, 9]})])
    with pytest.raises(DataError, match=r"2 pid\(s\) are not in .*c.tsv, e.g. \[7, 9\]"):
        _run(w, tmp_path, ce_path)
    write_id_text(w.queries, [(2, "another query")])
    write_hard_negatives(w.negatives, [HardNegatives(1, [0], {"bm25": [1]})])
    with pytest.raises(DataError, match=r"1 qid\(s\) are not in .*q.tsv, e.g. \[1\]"):
        _run(w, tmp_path, ce_path)


def test_empty_passage_is_scored_and_counted(ce_path: str, tmp_path: Path) -> None:
    w = _small_world(tmp_path, ["cat", "", "dog"], [HardNegatives(1, [0], {"bm25": [1, 2]})])
    stats = _run(w, tmp_path, ce_path)
    assert stats["empty_passages"] == 1 and stats["pairs_distinct"] == 3
    assert set(load_scores_pickle(tmp_path / "tiny-ce-scores.pkl.gz")[1]) == {0, 1, 2}


def test_nan_from_the_model_is_an_error(ce_path: str, tmp_path: Path) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    broken = CrossEncoder(ce_path, device="cpu")
    with torch.no_grad():
        next(p for n, p in broken.named_parameters() if "classifier.bias" in n).fill_(float("nan"))
    broken.save(str(tmp_path / "broken"))
    spec = ShardSpec(
        4, ModelSpec(str(tmp_path / "broken"), device="cpu"), np.array([1]), np.array([2]), ["q"], ["p"]
    )
    with pytest.raises(DataError, match=r"shard 4: .* 1 non-finite score\(s\), e.g. \(qid 1, pid 2\)"):
        score_shard(spec)


def test_backend_without_its_packages_says_what_to_install(ce_path: str) -> None:
    import importlib.util

    if importlib.util.find_spec("optimum") is not None:
        pytest.skip("optimum is installed here")
    spec = ShardSpec(
        0,
        replace(ModelSpec(ce_path, device="cpu"), backend="onnx"),
        np.array([1]),
        np.array([2]),
        ["q"],
        ["p"],
    )
    with pytest.raises(ValueError, match=r"sentence-transformers\[onnx\]"):
        score_shard(spec)


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "example: python -m tasks.score" in capsys.readouterr().out


def test_other_shard_size_rescores(world: World, ce_path: str, reference, tmp_path: Path) -> None:
    shutil.copytree(reference[0] / "scores", tmp_path / "scores")
    stats = _run(world, tmp_path, ce_path, cfg=_cfg(shard_size=100))
    assert stats["reused_shards"] == [] and stats["shards"] == 2
    # other shards => other batches: the same scores up to float rounding, not necessarily the same bits
    new = pq.read_table(tmp_path / "scores" / "ce-scores.parquet")
    ref = pq.read_table(reference[0] / "scores" / "ce-scores.parquet")
    assert new.select(["qid", "pid"]).equals(ref.select(["qid", "pid"]))
    np.testing.assert_allclose(new.column("score").to_numpy(), ref.column("score").to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_same_bytes_in_a_spawned_worker_process(
    world: World, ce_path: str, reference, tmp_path: Path
) -> None:
    """Shards pickle to another process (as to a Dask worker) and come back identical."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        _run(world, tmp_path, ce_path, executor=ex)
    assert _outputs(tmp_path) == _outputs(reference[0])
