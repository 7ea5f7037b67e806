"""Issue 16 item 7, end to end: ``dvc repro`` of an ``--incremental`` profile, a ~3% change of its
corpus and train queries (``tasks.corpus_change``), ``dvc repro`` again: each stage redoes about the
changed share of its work (``HARDNEGS_WORK_LOG``), and every DVC output is byte-identical to a full
rebuild of the changed data in a second copy of the project with empty caches.

The models (tiny random bi-encoders and cross-encoder of :mod:`tasks.smoke_models`) are built once
from the ORIGINAL corpus, outside both copies: the ``smoke_models`` stage builds its models from the
corpus, which would change every embedding. Helpers come from ``benchmarks/refresh_bench.py``, which
runs the same at benchmark size with all-MiniLM-L6-v2."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tasks.beir_sample import write_beir_sample
from tasks.corpus_change import run as change
from tests._bench_helpers import load_benchmark

pytestmark = pytest.mark.slow  # three small pipeline runs, two of them side by side (~1 min on 2 cores)

ROOT = Path(__file__).resolve().parent.parent
SHARE = 0.03
DOCS, TRAIN, TEST = 300, 60, 20
# fewer pairs for the cross-encoder (the slow part on a CPU): score's per-system top_k and ce_rerank's
# depth; the share of them a refresh redoes stays that of the change
OVERRIDES = {"mine": {"top_k": 10}, "evaluate": {"ce_rerank_depth": 20}}
# publish and what it depends on: every stage with a cache (encode, mine, score, ce_rerank) and the
# published files; the export and report stages after score only read its outputs (no caches)
TARGET = "publish@refresh"


def _bench() -> ModuleType:
    return load_benchmark("refresh_bench")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rb = _bench()
    work = tmp_path_factory.mktemp("refresh")
    beir, changed = work / "beir", work / "changed"
    write_beir_sample(beir, docs=DOCS, train_queries=TRAIN, test_queries=TEST)
    counts = change(beir, changed, SHARE, 1)  # the change depends on the folder alone: made up front
    models = rb.build_models(work / "models", rb.corpus_texts(beir), tiny=True, systems=1)
    refreshed = rb.setup_project(work / "refreshed", beir, models, OVERRIDES)
    rebuilt = rb.setup_project(work / "rebuilt", changed, models, OVERRIDES)
    work_log = work / "work.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        # tiny models, two runs on a shared CPU: one torch thread each is faster (tasks.accel), same bits
        mp.setenv("OMP_NUM_THREADS", "1")
        with ThreadPoolExecutor(2) as pool:  # the first build and the full rebuild: independent copies
            first = pool.submit(rb.repro, refreshed, work / "refreshed.log", None, [TARGET])
            rebuild = pool.submit(rb.repro, rebuilt, work / "rebuilt.log", None, [TARGET])
            first.result()
            rebuild.result()
        folder = refreshed / rb.DATASET
        shutil.rmtree(folder)
        shutil.copytree(changed, folder)
        rb.repro(refreshed, work / "refreshed.log", work_log, [TARGET])  # the refresh
    return {
        "rb": rb, "counts": counts, "records": rb.read_work_log(work_log),
        "refreshed": refreshed, "rebuilt": rebuilt, "models": models,
    }  # fmt: skip


def _by_kind(records: list[dict[str, Any]], prefix: str, unit: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["stage"].split("@")[0] == prefix and r["unit"] == unit:
            out.setdefault(r["stage"], []).append(r)
    return out


def test_profile_is_incremental_and_caches_live_inside_each_copy(runs: dict[str, Any]) -> None:
    params = yaml.safe_load((runs["refreshed"] / "params.yaml").read_text())
    assert params["encode"]["addressing"] == "text" and params["mine"]["incremental"] is True
    assert params["cross_encoder"]["addressing"] == "pair"
    assert set(params["systems"]) == set(runs["models"]["systems"]) and len(params["systems"]) == 1
    assert params["mine"]["top_k"] == OVERRIDES["mine"]["top_k"]
    for key in ("embedding_cache", "score_cache", "mine_cache"):
        assert not Path(params["paths"][key]).is_absolute(), key  # each copy has its own, empty at first


def test_encode_redoes_about_the_changed_texts(runs: dict[str, Any]) -> None:
    changed = runs["rb"].changed_texts(runs["counts"])
    assert changed == 2 * (runs["counts"]["passages_edited"] + runs["counts"]["queries_edited"])
    encodes = _by_kind(runs["records"], "encode", "texts")
    assert set(encodes) == {f"encode@{s}" for s in runs["models"]["systems"]}, runs["records"]
    for stage, recs in encodes.items():
        done, total = sum(r["done"] for r in recs), sum(r["total"] for r in recs)
        assert 0 < done <= 3 * changed + 8, (stage, done, changed)
        assert total >= DOCS + TRAIN, (stage, total)  # every passage and query, looked up


def test_score_computes_only_new_pairs(runs: dict[str, Any]) -> None:
    scored = _by_kind(runs["records"], "score", "pairs") | _by_kind(runs["records"], "ce_rerank", "pairs")
    assert set(scored) == {"score", "ce_rerank"}, runs["records"]  # ce_rerank: BM25's lists moved a little
    for stage, recs in scored.items():
        done, total = sum(r["done"] for r in recs), sum(r["total"] for r in recs)
        assert 0 < done < 0.5 * total, (stage, done, total)


def test_mine_searches_few_queries_again(runs: dict[str, Any]) -> None:
    mines = _by_kind(runs["records"], "mine", "dot products")
    assert set(mines) == {f"mine@{s}" for s in runs["models"]["systems"]}, runs["records"]
    for stage, recs in mines.items():
        for r in recs:
            assert 0 < r["done"] < 0.5 * r["total"], (stage, r)
            assert r["queries_searched"] <= 0.2 * r["queries"], (stage, r)


def test_every_output_is_byte_identical_to_a_full_rebuild(runs: dict[str, Any]) -> None:
    rb = runs["rb"]
    identical, compared, differ = rb.compare_outs(runs["refreshed"], runs["rebuilt"])
    assert identical and not differ, differ
    # the lock also holds the checkout's own stages (the same in both copies): this profile's stages
    lock = yaml.safe_load((runs["refreshed"] / "dvc.lock").read_text())["stages"]
    ours = {s: [o["path"] for o in body.get("outs", [])] for s, body in lock.items()}
    ours = {s: outs for s, outs in ours.items() if any(o.startswith(f"data/{rb.PROFILE}/") for o in outs)}
    assert {s.split("@")[0] for s in ours} >= {"ingest", "encode", "mine", "merge", "score", "ce_rerank",
                                               "denoise", "publish"}, sorted(ours)  # fmt: skip
    assert compared > sum(map(len, ours.values())) >= 15, ours
    assert TARGET == f"publish@{rb.PROFILE}"


def test_bad_system_count_and_override_are_refused(tmp_path: Path) -> None:
    rb = _bench()
    with pytest.raises(ValueError, match="systems: between 1 and 2"):
        rb.build_models(tmp_path / "models", ["a b c"], tiny=True, systems=3)
    assert not (tmp_path / "models").exists()  # refused before building anything
    beir = tmp_path / "beir"
    write_beir_sample(beir, docs=30, train_queries=6, test_queries=3)
    models = {"systems": {"m": {"model": str(tmp_path), "revision": None, "score": "cos"}},
              "cross_encoder": {"name": "ce", "model": str(tmp_path), "revision": None}}  # fmt: skip
    with pytest.raises(RuntimeError, match="top_kk"):  # the composed config names the misspelt key
        rb.setup_project(tmp_path / "project", beir, models, {"mine": {"top_kk": 10}})
