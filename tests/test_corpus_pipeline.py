"""A corpus of your own, end to end (issue 16, items 1, 4 and 5): a generated BEIR folder with
string ids, a profile written by ``python -m tasks.profile_init``, and ``dvc repro`` in a copy of
the project, as a user runs it. Checks that every output exists with the user's ids, that the
evaluation is on the user's split, that a second ``dvc repro`` does nothing, and that bad input
fails naming the file, line and id without recording a run."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.beir_sample import write_beir_sample
from tests._deploy_helpers import dvc, project_copy

pytestmark = pytest.mark.slow  # one small pipeline run (~2 min on 2 cores)

NAME = "beirx"


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _py(proj: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=proj, env=_env(), capture_output=True, text=True)


def _jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _beir_qrels(folder: Path, split: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    lines = (folder / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        qid, pid, score = line.split("\t")
        out.setdefault(qid, {})[pid] = int(score)
    return out


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    proj = project_copy(tmp_path_factory.mktemp("corpus") / "p")
    write_beir_sample(proj / "data" / "user" / NAME, docs=600, train_queries=120, test_queries=40)
    init = _py(proj, "-m", "tasks.profile_init", NAME, "--beir", f"data/user/{NAME}", "--smoke")
    assert init.returncode == 0, init.stderr
    dvc(["repro"], proj, _env())
    return proj


def test_init_writes_a_short_profile_and_params(proj: Path) -> None:
    profile = yaml.safe_load((proj / "conf" / "profile" / f"{NAME}.yaml").read_text())
    assert profile["datasets"] == {
        NAME: {"format": "beir", "path": f"data/user/{NAME}", "train_split": "train", "eval_split": "test"}
    }
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["profile"] == NAME and params["sources"] == {} and params["convert"]["splits"] == []
    assert params["inputs"]["collection"] == f"{NAME}/collection.tsv"
    again = _py(proj, "-m", "tasks.profile_init", NAME, "--beir", f"data/user/{NAME}", "--no-use")
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


def test_stage_graph_has_ingest_and_publish_and_no_ms_marco_stage(proj: Path) -> None:
    stages = [line.split()[0] for line in dvc(["stage", "list"], proj, _env()).splitlines()]
    assert f"ingest@{NAME}" in stages and f"publish@{NAME}" in stages
    assert not [s for s in stages if s.startswith(("download@", "qa@"))]


def test_published_outputs_carry_the_users_string_ids(proj: Path) -> None:
    folder = proj / "data" / "user" / NAME
    docs = {json.loads(line)["_id"] for line in (folder / "corpus.jsonl").read_text().splitlines()}
    train = _beir_qrels(folder, "train")
    out = proj / "data" / NAME / "out" / NAME
    records = _jsonl(out / "hard-negatives.jsonl.gz")
    assert records and all(isinstance(r["qid"], str) for r in records)
    systems = set()
    for r in records:
        assert sorted(r["pos"]) == sorted(p for p, s in train[r["qid"]].items() if s > 0)
        for name, negs in r["neg"].items():
            systems.add(name)
            assert set(negs) <= docs and not set(negs) & set(r["pos"])
    assert systems == {"bm25", "smoke-bi-cls-dot", "smoke-bi-mean-cos"}
    with gzip.open(out / "smoke-cross-encoder-scores.pkl.gz", "rb") as fh:
        scores = pickle.load(fh)
    qid, inner = next(iter(scores.items()))
    assert isinstance(qid, str) and all(isinstance(p, str) and p in docs for p in inner)
    assert _jsonl(out / "hard-negatives.denoised.jsonl.gz")
    # the training datasets (mine_export) are text: one folder per system, loadable Parquet
    datasets = proj / "data" / NAME / "datasets"
    assert {p.name for p in datasets.iterdir() if p.is_dir()} >= {"bm25", "smoke-bi-cls-dot"}


def test_evaluation_is_on_the_users_split_with_ndcg(proj: Path) -> None:
    metrics = json.loads((proj / "data" / NAME / "metrics" / "retrieval.json").read_text())
    for system in ("bm25", "smoke-bi-cls-dot", "smoke-bi-mean-cos", "cross-encoder"):
        assert set(metrics[system]) == {"dev"}, system  # no TREC DL 2019 set here
    figures = metrics["bm25"]["dev"]["full"]
    assert {"ndcg@10", "mrr@10", "recall@10"} <= set(figures)
    assert figures["queries"] == 40 and figures["ndcg@10"] > 0.3  # the sample is lexically answerable
    report = (proj / "data" / NAME / "report" / "report.md").read_text()
    assert "| System | test NDCG@10 full | test NDCG@10 re-rank | test MRR@10 full" in report
    assert "DL19" not in report and "MS MARCO" not in report
    assert f"## Recall@k: {NAME} test, full retrieval" in report


def test_a_second_repro_does_nothing(proj: Path) -> None:
    assert "up to date" in dvc(["repro"], proj, _env())
    assert "up to date" in dvc(["status"], proj, _env()).lower()


def test_bad_corpus_fails_naming_file_line_and_id_and_records_nothing(proj: Path) -> None:
    corpus = proj / "data" / "user" / NAME / "corpus.jsonl"
    good, lock = corpus.read_text(encoding="utf-8"), (proj / "dvc.lock").read_text()
    first = json.loads(good.splitlines()[0])
    n = len(good.splitlines())
    corpus.write_text(good + json.dumps({**first, "text": "again"}) + "\n", encoding="utf-8")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", "repro"], cwd=proj, env=_env(), capture_output=True, text=True
        )
        assert proc.returncode != 0
        err = proc.stdout + proc.stderr
        assert f"corpus.jsonl:{n + 1}" in err and first["_id"] in err and "duplicate" in err, err[-2000:]
        assert (proj / "dvc.lock").read_text() == lock
    finally:
        corpus.write_text(good, encoding="utf-8")
    dvc(["checkout"], proj, _env())
    assert "up to date" in dvc(["status"], proj, _env()).lower()


def test_a_score_option_reruns_only_mine_scores_and_mine_export(proj: Path) -> None:
    """``output_scores`` on one system: ``dvc repro mine_export`` scores that system's windows and
    positives in ``mine_scores`` (the real cross-encoder path under DVC), not the score stage."""
    import numpy as np
    import pyarrow.parquet as pq

    profile = proj / "conf" / "profile" / f"{NAME}.yaml"
    data = yaml.safe_load(profile.read_text())
    data.setdefault("mining", {})["per_system"] = {"smoke-bi-cls-dot": {"output_scores": True}}
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    use = _py(proj, "-m", "tasks.config", "use", NAME)
    assert use.returncode == 0, use.stderr
    out = dvc(["repro", "mine_export"], proj, _env())
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}
    assert ran == {"mine_scores", "mine_export"}, out
    metrics = json.loads((proj / "data" / NAME / "metrics" / "mine_scores.json").read_text())
    assert metrics["systems"] == ["smoke-bi-cls-dot"] and metrics["pairs"] > 0
    mine = pq.read_table(proj / "data" / NAME / "mine-scores" / "ce-scores.parquet")
    full = pq.read_table(proj / "data" / NAME / "scores" / "ce-scores.parquet")  # the score stage's

    def by_pair(t: Any) -> dict[tuple[int, int], float]:
        keys = zip(t["qid"].to_pylist(), t["pid"].to_pylist(), strict=True)
        return dict(zip(keys, t["score"].to_pylist(), strict=True))

    ours, all_ = by_pair(mine), by_pair(full)
    assert set(ours) <= set(all_) and len(ours) == metrics["pairs"]  # a subset: that system's top_k
    np.testing.assert_allclose([ours[k] for k in ours], [all_[k] for k in ours], atol=1e-4)
    folder = proj / "data" / NAME / "datasets" / "smoke-bi-cls-dot" / "triplet"
    table = pq.read_table(sorted(folder.glob("*.parquet"))[0])
    assert "scores" in table.column_names and len(table["scores"][0].as_py()) == 2
    assert (
        "scores"
        not in pq.read_table(next((folder.parent.parent / "bm25" / "triplet").glob("*.parquet"))).column_names
    )
