"""The CLIs of score -> denoise -> export and rerank, wired through a params.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tasks import denoise, export, rerank, score
from tasks.config import compose, load_config
from tasks.io import file_digest, read_json
from tasks.records import Hit, write_id_text, write_run
from tasks.scores_pickle import load_scores_pickle
from tests._model_helpers import tiny_models, tiny_texts
from tests._score_helpers import tiny_world


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample-profile params.yaml whose paths all point into a temp dir."""
    models = tiny_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("cli")
    data = yaml.safe_load(compose("sample"))
    data["paths"] = {key: str(root / key) for key in data["paths"]}
    raw = root / "raw" / "collectionandqueries"
    world = tiny_world(raw, models.collection)
    shutil.copy(models.collection, raw / "collection.tsv")
    shutil.move(world.queries, raw / "queries.train.tsv")
    (root / "out").mkdir()
    shutil.move(world.negatives, root / "out" / "msmarco-hard-negatives.jsonl.gz")
    data["inputs"].update(
        collection="collectionandqueries/collection.tsv",
        queries_train="collectionandqueries/queries.train.tsv",
        queries_dev="collectionandqueries/queries.dev.tsv",
        queries_dl19="collectionandqueries/queries.dl19.tsv",
    )
    for name, qids in (("dev", (5, 6)), ("dl19", (7,))):
        write_id_text(
            raw / f"queries.{name}.tsv", zip(qids, tiny_texts(len(qids), seed=len(name)), strict=True)
        )
        hits = [Hit(q, p, r + 1, 10.0 - r) for q in qids for r, p in enumerate(range(q, q + 8))]
        write_run(root / "runs" / "bm25" / f"{name}.full.trec", hits, "bm25")
    data["cross_encoder"].update(model=str(models.cross_encoder), shard_size=50, device="cpu", max_length=64)
    data["evaluate"].update(ce_rerank_depth=4, dl19_candidates="bm25")
    data["export"]["negatives_per_system"] = 2
    data["orchestration"]["local_workers"] = 1
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_score_denoise_export_chain(params: Path) -> None:
    cfg = load_config(params)
    assert score.main(["--params", str(params)]) == 0
    pkl = cfg.path("out") / f"{cfg.cross_encoder.name}-scores.pkl.gz"
    table = pq.read_table(cfg.path("scores") / "ce-scores.parquet")
    assert sum(len(v) for v in load_scores_pickle(pkl).values()) == table.num_rows > 0
    assert read_json(cfg.path("metrics") / "score.json")["pairs_distinct"] == table.num_rows
    assert denoise.main(["--params", str(params)]) == 0
    metrics = read_json(cfg.path("metrics") / "denoise.json")
    assert metrics["rule"] == cfg.denoise.rule and metrics["margin"] == cfg.denoise.margin
    assert (cfg.path("out") / "msmarco-hard-negatives.denoised.jsonl.gz").exists()
    assert export.main(["--params", str(params)]) == 0
    assert {p.name for p in cfg.path("exports").iterdir()} == {
        "README.md",
        "triplets.parquet",
        "margin_mse.parquet",
        "provenance.json",
    }
    # provenance records of the score pickle, the denoised file and the exports (tasks.provenance)
    ce_hash = read_json(cfg.path("scores") / "manifest.json")["model"]["revision"]
    denoised = cfg.path("out") / "msmarco-hard-negatives.denoised.jsonl.gz"
    records = {
        "score": read_json(pkl.with_name(pkl.name + ".provenance.json")),
        "denoise": read_json(denoised.with_name(denoised.name + ".provenance.json")),
        "export": read_json(cfg.path("exports") / "provenance.json"),
    }
    for stage, record in records.items():
        assert record["stage"] == stage
        ce = next(m for m in record["models"] if m["role"] == "cross_encoder")
        assert ce["kind"] == "local-dir" and ce["resolved"] == ce_hash  # what scored is what is recorded
        inputs = {e["path"]: e["md5"] for e in record["inputs"]}
        assert inputs["${paths.out}/msmarco-hard-negatives.jsonl.gz"] == file_digest(
            cfg.path("out") / "msmarco-hard-negatives.jsonl.gz"
        )
    assert records["score"]["outputs"] == [
        {"path": f"${{paths.out}}/{pkl.name}", "md5": file_digest(pkl), "size": pkl.stat().st_size}
    ]
    assert records["score"]["params"] == {"cross_encoder": cfg.cross_encoder.model_dump(mode="json")}
    assert records["denoise"]["params"] == {"denoise": cfg.denoise.model_dump(mode="json")}
    assert [e["path"] for e in records["export"]["outputs"]] == [
        "${paths.exports}/margin_mse.parquet",
        "${paths.exports}/triplets.parquet",
    ]
    roles = {m["role"] for m in records["export"]["models"]}
    assert roles == {"cross_encoder", *(f"systems.{s}" for s in cfg.systems)}
    assert "## Provenance" in (cfg.path("exports") / "README.md").read_text()
    # a rerun resumes every shard and rewrites the same bytes
    before = pkl.read_bytes()
    assert score.main(["--params", str(params)]) == 0
    assert pkl.read_bytes() == before


def test_rerank_cli(params: Path) -> None:
    cfg = load_config(params)
    assert rerank.main(["--params", str(params)]) == 0
    for name, n in (("dev", 8), ("dl19", 4)):
        lines = (cfg.path("runs") / "cross-encoder" / f"{name}.rerank.trec").read_text().splitlines()
        assert len(lines) == n and all(line.endswith(" cross-encoder") for line in lines)


def test_missing_input_exits_nonzero(params: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(params.read_text())
    data["paths"]["out"] = str(tmp_path / "nothing-here")
    other = tmp_path / "params.yaml"
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    assert score.main(["--params", str(other)]) == 1
    assert denoise.main(["--params", str(other)]) == 1
