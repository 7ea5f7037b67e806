"""Stage ``mine_scores``: exactly the pairs ``mine_export``'s options need, scored by the real
cross-encoder code (a tiny model built here), resumable, and nothing at all when no option needs
a score (then torch is not even imported)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tasks.config import ROOT, CrossEncoderCfg, Mining
from tasks.io import DataError
from tasks.mine_scores import collect, needing_scores, run
from tests._model_helpers import run_stage_without_torch, tiny_models, tiny_texts
from tests.test_mine_export import SEED, TOP_K, Case, build, rows

HITS = {
    "bm25": {1: [10, 11, 12, 13], 2: [20, 21, 22], 9: [90, 91]},  # qid 9: no positive
    "dense": {1: [13, 14, 15, 16], 3: [30, 31]},
}
POSITIVES = {1: [100], 2: [200, 201], 3: [300], 4: [400]}  # qid 4: no hit in any system


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    return tiny_models(tmp_path_factory)


def _case(root: Path) -> Case:
    pids = {p for lists in HITS.values() for ps in lists.values() for p in ps}
    pids |= {p for ps in POSITIVES.values() for p in ps}
    texts = dict(zip(sorted(pids), tiny_texts(len(pids), seed=5, min_len=6, max_len=20), strict=True))
    queries = dict(
        zip(sorted(POSITIVES), tiny_texts(len(POSITIVES), seed=6, min_len=2, max_len=5), strict=True)
    )
    return build(root, HITS, POSITIVES, {}, texts, queries)


def _ce(models: Any, **kw: Any) -> CrossEncoderCfg:
    return CrossEncoderCfg(
        name="tiny", model=str(models.cross_encoder), max_length=64, batch_size=4, shard_size=5,
        cpu_kernels="native", **kw,
    )  # fmt: skip


def _run(case: Case, mining: Mining, ce: CrossEncoderCfg, out: Path, cache: Path | None) -> dict[str, Any]:
    return run(
        mining, ["bm25", "dense"], TOP_K, SEED, case.negatives, case.collection, case.queries, case.qrels,
        out, ce, metrics_path=out.parent / f"{out.name}.json", cache_dir=cache,
    )  # fmt: skip


def _pairs(path: Path) -> list[tuple[int, int]]:
    table = pq.read_table(path)
    return list(zip(table.column("qid").to_pylist(), table.column("pid").to_pylist(), strict=True))


def test_only_systems_with_a_filter_or_output_scores_need_scores() -> None:
    mining = Mining(per_system={"dense": {"absolute_margin": 0.0}, "bm25": {"range_max": 3}})
    assert needing_scores(mining, ["bm25", "dense"], TOP_K, SEED) == {"dense": TOP_K}
    both = Mining(output_scores=True, per_system={"bm25": {"range_max": 3}})
    assert needing_scores(both, ["bm25", "dense"], TOP_K, SEED) == {"bm25": 3, "dense": TOP_K}
    assert needing_scores(Mining(), ["bm25", "dense"], TOP_K, SEED) == {}


def test_pairs_are_each_window_plus_the_positives(tmp_path: Path) -> None:
    case = _case(tmp_path)
    q, p, skipped = collect({"bm25": 2, "dense": 3}, case.negatives, POSITIVES)
    want = {
        (1, 10), (1, 11), (1, 100), (2, 20), (2, 21), (2, 200), (2, 201),  # bm25: first 2 hits
        (1, 13), (1, 14), (1, 15), (3, 30), (3, 31), (3, 300),  # dense: first 3 hits
    }  # fmt: skip
    got = list(zip(q.tolist(), p.tolist(), strict=True))
    assert got == sorted(want) and not skipped  # distinct, (qid, pid) order; qid 9 and 4 absent


def test_nothing_needed_writes_an_empty_table_without_torch(tmp_path: Path) -> None:
    """The CLI in a fresh process, as DVC runs it: no filter, no output_scores -> zero rows, and
    torch is never imported (the stage then costs well under a second)."""
    case = _case(tmp_path / "in")
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["paths"] = {key: str(tmp_path / key) for key in data["paths"]}
    data["paths"]["negatives"] = str(case.negatives)
    data["paths"]["raw"] = str(tmp_path / "in")
    data["inputs"].update(collection="collection.tsv", queries_train="queries.tsv", qrels_train="qrels.tsv")
    data["mining"]["systems"] = ["bm25"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    run_stage_without_torch("tasks.mine_scores", params)
    out = tmp_path / "mine_scores"
    assert pq.read_table(out / "ce-scores.parquet").num_rows == 0
    assert json.loads((out / "manifest.json").read_text()) == {"format": 1, "systems": [], "pairs": 0}
    assert json.loads((tmp_path / "metrics" / "mine_scores.json").read_text())["pairs"] == 0


@pytest.mark.parametrize("addressing", ["shard", "pair"])
def test_scores_feed_mine_export_and_resume_from_the_cache(
    models: Any, tmp_path: Path, addressing: str, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    case = _case(tmp_path / "in")
    mining = Mining(absolute_margin=0.0, num_negatives=2, output_scores=True)
    ce = _ce(models, addressing=addressing)
    cache = tmp_path / "cache"
    stats = _run(case, mining, ce, tmp_path / "a", cache)
    assert stats["systems"] == ["bm25", "dense"] and stats["scored_pairs"] == stats["pairs"] == 16
    scores = tmp_path / "a" / "ce-scores.parquet"
    q, p, _ = collect({"bm25": TOP_K, "dense": TOP_K}, case.negatives, POSITIVES)
    assert _pairs(scores) == list(zip(q.tolist(), p.tolist(), strict=True))
    # the real model's raw logits for those pairs
    model = CrossEncoder(str(models.cross_encoder), device="cpu", activation_fn=torch.nn.Identity())
    qt = {int(k): v for k, v in (line.split("\t", 1) for line in case.queries.read_text().splitlines())}
    pt = {int(k): v for k, v in (line.split("\t", 1) for line in case.collection.read_text().splitlines())}
    want = model.predict([(qt[a], pt[b]) for a, b in _pairs(scores)], batch_size=1)
    np.testing.assert_allclose(pq.read_table(scores).column("score").to_numpy(), want, atol=1e-5)

    # a second run with an empty output dir reads every score from the cache: same bytes
    with caplog.at_level(logging.INFO):
        again = _run(case, mining, ce, tmp_path / "b", cache)
    assert again["scored_pairs"] == 0
    assert scores.read_bytes() == (tmp_path / "b" / "ce-scores.parquet").read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()

    # mine_export finds a score for every pair it looks up, and writes them
    from tasks.mine_export import run as mine_export

    counts = mine_export(
        mining, ["bm25", "dense"], TOP_K, SEED, case.negatives, scores, case.collection, case.queries,
        case.qrels, tmp_path / "datasets",
    )  # fmt: skip
    assert counts["bm25"].queries == 2 and counts["dense"].queries == 2
    got = rows(tmp_path / "datasets" / "dense" / "triplet")
    table = pq.read_table(scores)
    lookup = dict(zip(_pairs(scores), table.column("score").to_pylist(), strict=True))
    by_text = {(qt[a], pt[b]): s for (a, b), s in lookup.items()}
    for r in got:
        assert r["scores"] == [by_text[(r["query"], r["positive"])], by_text[(r["query"], r["negative"])]]


def test_a_missing_hits_file_names_it(models: Any, tmp_path: Path) -> None:
    case = _case(tmp_path / "in")
    (case.negatives / "dense.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"dense\.parquet: no hits of system dense"):
        _run(case, Mining(), _ce(models), tmp_path / "a", None)
    assert not (tmp_path / "a").exists()


def test_a_damaged_hits_file_names_it_and_keeps_the_previous_output(models: Any, tmp_path: Path) -> None:
    case = _case(tmp_path / "in")
    mining = Mining(max_score=0.0)
    _run(case, mining, _ce(models), tmp_path / "a", tmp_path / "cache")
    before = (tmp_path / "a" / "ce-scores.parquet").read_bytes()
    (case.negatives / "bm25.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"bm25\.parquet: not a readable"):
        _run(case, mining, _ce(models), tmp_path / "a", tmp_path / "cache")
    assert (tmp_path / "a" / "ce-scores.parquet").read_bytes() == before
