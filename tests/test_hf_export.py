"""Hugging Face exports: the published layouts load offline, rows follow the published rules,
bytes repeat, bad input names its file and keeps the previous output, and a bi-encoder trains."""

from __future__ import annotations

import gzip
import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tasks.config import HfExport, compose
from tasks.hf_export import CORPUS, hub_name, main, run, scores_dataset, system_dataset
from tasks.io import DataError, file_digest
from tasks.records import (
    HardNegatives,
    read_collection,
    read_queries,
    write_hard_negatives,
    write_id_text,
)
from tests._model_helpers import tiny_models, tiny_texts
from tests._score_helpers import make_records, synthetic_scores

SYSTEMS = ("bm25", "sys-a", "sys-b")
CE_NAME = "cross-encoder-ms-marco-MiniLM-L-6-v2"
SCORES = "msmarco-scores-ms-marco-MiniLM-L6-v2"
WIDTH = 50
PARAMS = HfExport(shard_mb=0.05)  # ~50 kB of rows per file: several shards from tiny data
CELLS = 400  # values per row group: many row groups


@dataclass(frozen=True)
class Inputs:
    collection: Path
    queries: Path
    negatives: Path
    scores: Path
    records: list[HardNegatives]
    ce: dict[tuple[int, int], float]

    def run(self, out: Path, **kwargs: object) -> dict[str, dict[str, int]]:
        args: dict[str, object] = {"params": PARAMS, "row_group_cells": CELLS, **kwargs}
        return run(self.negatives, self.scores, self.collection, self.queries, out, CE_NAME, **args)  # type: ignore[arg-type]


def build_inputs(root: Path, collection: Path) -> Inputs:
    """16 training queries x 3 systems x 52 negatives over the 300 tiny passages, with the cases
    the rules must handle: a query without a positive, a system without negatives for a query,
    a list shorter than 50, a positive inside a negative list (the published file has some)."""
    root.mkdir(parents=True, exist_ok=True)
    records = make_records(16, 300, per_system=52, seed=5)
    rng = random.Random(7)
    records[2] = records[2]._replace(neg={**records[2].neg, "sys-a": records[2].neg["sys-a"][:10]})
    records[4] = records[4]._replace(neg={**records[4].neg, "sys-b": []})
    records[6] = records[6]._replace(pos=[])
    rec = records[8]
    records[8] = rec._replace(neg={**rec.neg, "bm25": [rec.pos[0], *rec.neg["bm25"][:50]]})
    rng.shuffle(records)  # queries in another order than their qids ...
    records.sort(key=lambda r: r.qid)  # ... and back: the file is in qid order, as merge writes it
    queries = root / "queries.train.tsv"
    qids = [r.qid for r in records] + [99_001, 99_002]  # training queries without hard negatives too
    write_id_text(queries, zip(reversed(qids), tiny_texts(len(qids), seed=9, max_len=8), strict=True))
    negatives = root / "msmarco-hard-negatives.jsonl.gz"
    write_hard_negatives(negatives, records)
    scores = root / "ce-scores.parquet"
    ce = synthetic_scores(scores, records)
    return Inputs(collection, queries, negatives, scores, records, ce)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("hf-in")
    collection = root / "collection.tsv"  # the texts the tiny models' vocabulary is trained on
    write_id_text(collection, enumerate(tiny_texts(300, seed=1)))
    return build_inputs(root, collection)


@pytest.fixture(scope="module")
def exported(
    inputs: Inputs, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, dict[str, int]]]:
    out = tmp_path_factory.mktemp("hf-out") / "hf"
    return out, inputs.run(out)


def _ids(folder: Path) -> pa.Table:
    files = sorted(folder.glob("train-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_published_dataset_names() -> None:
    assert system_dataset("bm25") == "msmarco-bm25"
    assert system_dataset("msmarco-distilbert-base-tas-b") == "msmarco-msmarco-distilbert-base-tas-b"
    assert system_dataset("msmarco-MiniLM-L-6-v3") == "msmarco-msmarco-MiniLM-L6-v3"
    assert system_dataset("distilbert-margin_mse-cls-dot-v2") == "msmarco-distilbert-margin-mse-cls-dot-v2"
    assert (
        system_dataset("co-condenser-margin_mse-sym_mnrl-mean-v1")
        == "msmarco-co-condenser-margin-mse-sym-mnrl-mean-v1"
    )
    assert system_dataset("smoke-bi-cls-dot") == "msmarco-smoke-bi-cls-dot"
    assert scores_dataset(CE_NAME) == SCORES
    assert scores_dataset("smoke-cross-encoder") == "msmarco-scores-smoke-cross-encoder"
    assert hub_name("a_b-L-12") == "a-b-L12"


TEXT = {"query": "string", "positive": "string", "negative": "string"}
IDS = {"query": "int64", "positive": "int64", "negative": "int64"}
TEXT_50 = {"query": "string", "positive": "string", **{f"negative_{i}": "string" for i in range(1, 51)}}
IDS_50 = {"query": "int64", "positive": "int64", **{f"negative_{i}": "int64" for i in range(1, 51)}}
PUBLISHED = {
    **{
        f"msmarco-{system}": {
            "triplet": TEXT, "triplet-ids": IDS, "triplet-50": TEXT_50, "triplet-50-ids": IDS_50,
            "triplet-all": TEXT, "triplet-all-ids": IDS, "triplet-hard": TEXT, "triplet-hard-ids": IDS,
        }
        for system in SYSTEMS
    },
    CORPUS: {"passage": {"pid": "int64", "text": "string"}, "query": {"qid": "int64", "text": "string"}},
    SCORES: {"list": {"query_id": "int64", "corpus_id": "list<int64>", "score": "list<float64>"}},
}  # fmt: skip


def _dtype(feature: object) -> str:
    from datasets import List, Value

    if isinstance(feature, List):
        return f"list<{_dtype(feature.feature)}>"
    assert isinstance(feature, Value), feature
    return feature.dtype


def test_every_config_loads_offline_with_the_published_columns_and_dtypes(
    exported: tuple[Path, dict[str, dict[str, int]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, counts = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(PUBLISHED)
    assert {name: sorted(configs) for name, configs in counts.items()} == {
        name: sorted(configs) for name, configs in PUBLISHED.items()
    }
    for name, configs in PUBLISHED.items():
        card = (out / name / "README.md").read_text()
        for config, columns in configs.items():
            assert f"config_name: {config}\n" in card
            ds = datasets.load_dataset(str(out / name), config, split="train", cache_dir=str(tmp_path / "hf"))
            assert {c: _dtype(f) for c, f in ds.features.items()} == columns, (name, config)
            assert list(ds.features) == list(columns), (name, config)  # column order too
            assert ds.num_rows == counts[name][config] > 0, (name, config)


def test_rows_follow_the_published_rules(
    inputs: Inputs, exported: tuple[Path, dict[str, dict[str, int]]]
) -> None:
    out, _ = exported
    ce = inputs.ce
    for system in SYSTEMS:
        expect: dict[str, list[tuple[int, ...]]] = {"triplet": [], "triplet-50": [], "all": [], "hard": []}
        for rec in inputs.records:
            if not rec.pos:
                continue
            pos = rec.pos[0]
            negs = [p for p in rec.neg[system] if p not in rec.pos]
            if negs:
                expect["triplet"].append((rec.qid, pos, negs[0]))
            if len(negs) >= WIDTH:
                expect["triplet-50"].append((rec.qid, pos, *negs[:WIDTH]))
            expect["all"] += [(rec.qid, pos, n) for n in negs]
            expect["hard"] += [(rec.qid, pos, n) for n in negs if ce[(rec.qid, pos)] - ce[(rec.qid, n)] > 3.0]
        folder = out / f"msmarco-{system}"
        for config, key in (("triplet", "triplet"), ("triplet-50", "triplet-50"), ("triplet-all", "all"),
                            ("triplet-hard", "hard")):  # fmt: skip
            got = [tuple(row.values()) for row in _ids(folder / f"{config}-ids").to_pylist()]
            assert got == expect[key], (system, config)
            assert 0 < len(got)
    # the special cases did happen: sys-a's short list, sys-b's empty one, bm25's positive as negative
    short = next(r for r in inputs.records if len(r.neg["sys-a"]) == 10)
    assert short.qid in _ids(out / "msmarco-sys-a/triplet-all-ids").column("query").to_pylist()
    assert short.qid not in _ids(out / "msmarco-sys-a/triplet-50-ids").column("query").to_pylist()
    hard = _ids(out / "msmarco-bm25/triplet-all-ids").to_pylist()
    assert all(row["negative"] != row["positive"] for row in hard)
    nopos = next(r for r in inputs.records if not r.pos)
    assert nopos.qid not in _ids(out / "msmarco-bm25/triplet-ids").column("query").to_pylist()
    assert "without a negative of this system: 1" in (out / "msmarco-sys-b/README.md").read_text()


def test_texts_match_ids_and_the_corpus_and_scores_datasets(
    inputs: Inputs, exported: tuple[Path, dict[str, dict[str, int]]]
) -> None:
    out, _ = exported
    passages = {p.pid: p.text for p in read_collection(inputs.collection)}
    queries = {q.qid: q.text for q in read_queries(inputs.queries)}
    for system in SYSTEMS:
        for config in ("triplet", "triplet-50", "triplet-all", "triplet-hard"):
            ids = _ids(out / f"msmarco-{system}" / f"{config}-ids").to_pylist()
            texts = _ids(out / f"msmarco-{system}" / config).to_pylist()
            assert len(ids) == len(texts)
            for i, t in zip(ids, texts, strict=True):
                assert t["query"] == queries[i["query"]]
                assert all(t[c] == passages[i[c]] for c in i if c != "query")
    corpus = _ids(out / CORPUS / "passage")
    assert corpus.column("pid").to_pylist() == list(passages)  # collection file order
    assert corpus.column("text").to_pylist() == list(passages.values())
    assert _ids(out / CORPUS / "queries").to_pylist() == [
        {"qid": q, "text": queries[q]} for q in sorted(queries)
    ]
    by_query: dict[int, list[tuple[int, float]]] = {}
    for (qid, pid), score in sorted(inputs.ce.items()):
        by_query.setdefault(qid, []).append((pid, score))
    rows = _ids(out / SCORES / "list").to_pylist()
    assert [r["query_id"] for r in rows] == sorted(by_query)
    for row in rows:
        assert list(zip(row["corpus_id"], row["score"], strict=True)) == by_query[row["query_id"]]


def test_shards_are_numbered_and_the_card_counts_rows(
    exported: tuple[Path, dict[str, dict[str, int]]],
) -> None:
    out, counts = exported
    folder = out / "msmarco-bm25" / "triplet-all"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) > 1
    assert files == [f"train-{i:05d}-of-{len(files):05d}.parquet" for i in range(len(files))]
    assert sum(pq.read_metadata(folder / f).num_row_groups for f in files) > len(files)
    card = yaml.safe_load((out / "msmarco-bm25" / "README.md").read_text().split("---\n")[1])
    info = {c["config_name"]: c for c in card["dataset_info"]}
    assert info["triplet-all"]["splits"][0]["num_examples"] == counts["msmarco-bm25"]["triplet-all"]
    paths = {c["config_name"]: c["data_files"][0]["path"] for c in card["configs"]}
    assert paths["triplet-50-ids"] == "triplet-50-ids/train-*"
    assert {c["config_name"]: c["data_files"][0]["path"] for c in yaml.safe_load(
        (out / CORPUS / "README.md").read_text().split("---\n")[1])["configs"]} == {
        "passage": "passage/train-*", "query": "queries/train-*"}  # fmt: skip


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_inputs_give_byte_identical_files(
    inputs: Inputs, exported: tuple[Path, dict[str, dict[str, int]]], tmp_path: Path
) -> None:
    out, _ = exported
    inputs.run(tmp_path / "again")
    assert _tree(tmp_path / "again") == _tree(out)


def test_empty_configs_are_left_out(inputs: Inputs, tmp_path: Path) -> None:
    counts = inputs.run(tmp_path / "hf", params=HfExport(margin=100.0))
    assert "triplet-hard" not in counts["msmarco-bm25"]
    assert not (tmp_path / "hf" / "msmarco-bm25" / "triplet-hard").exists()
    assert "config_name: triplet-hard" not in (tmp_path / "hf" / "msmarco-bm25" / "README.md").read_text()


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _drop_pid(inputs: Inputs, dst: Path) -> Path:
    needed = inputs.records[0].neg["sys-b"][3]
    write_id_text(dst, ((p.pid, p.text) for p in read_collection(inputs.collection) if p.pid != needed))
    return dst


def _out_of_order(inputs: Inputs, dst: Path) -> Path:
    recs = list(inputs.records)
    recs[3], recs[4] = recs[4], recs[3]
    with gzip.open(dst, "wt") as fh:  # write_hard_negatives refuses the order: write the lines by hand
        import json

        for r in recs:
            fh.write(json.dumps({"qid": r.qid, "pos": r.pos, "neg": r.neg}) + "\n")
    return dst


def _drop_score(inputs: Inputs, dst: Path) -> Path:
    table = pq.read_table(inputs.scores)
    rec = inputs.records[5]
    keep = ~(
        (table.column("qid").to_numpy() == rec.qid) & (table.column("pid").to_numpy() == rec.neg["bm25"][7])
    )
    pq.write_table(table.filter(pa.array(keep)), dst)
    return dst


BAD = {
    "truncated hard negatives": ("negatives", lambda i, d: _truncate(i.negatives, d / "neg.jsonl.gz"),
                                 r"neg\.jsonl\.gz: compressed stream ends early"),
    "pid missing from the collection": ("collection", lambda i, d: _drop_pid(i, d / "collection.tsv"),
                                        r"1 pid\(s\) are not in .*collection\.tsv"),
    "hard negatives out of qid order": ("negatives", lambda i, d: _out_of_order(i, d / "neg.jsonl.gz"),
                                        r"neg\.jsonl\.gz: qid \d+ comes after qid"),
    "a pair without a CE score": ("scores", lambda i, d: _drop_score(i, d / "scores.parquet"),
                                  r"scores\.parquet: no cross-encoder score for qid"),
    "truncated scores": ("scores", lambda i, d: _truncate(i.scores, d / "scores.parquet"),
                         r"scores\.parquet: not a readable Parquet file"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_file_and_keeps_the_previous_output(
    case: str, inputs: Inputs, exported: tuple[Path, dict[str, dict[str, int]]], tmp_path: Path
) -> None:
    out = tmp_path / "hf"
    shutil.copytree(exported[0], out)
    before = _tree(out)
    field, make, message = BAD[case]
    bad = {"negatives": inputs.negatives, "scores": inputs.scores, "collection": inputs.collection}
    bad[field] = make(inputs, tmp_path)
    with pytest.raises(DataError, match=message):
        run(bad["negatives"], bad["scores"], bad["collection"], inputs.queries, out, CE_NAME, PARAMS, CELLS)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def _params(tmp_path: Path, inputs: Inputs) -> Path:
    data = yaml.safe_load(compose("sample"))
    raw = tmp_path / "raw"
    for key, src in (("collection", inputs.collection), ("queries_train", inputs.queries)):
        dst = raw / data["inputs"][key]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    (tmp_path / "out").mkdir()
    shutil.copy(inputs.negatives, tmp_path / "out" / "msmarco-hard-negatives.jsonl.gz")
    (tmp_path / "scores").mkdir()
    shutil.copy(inputs.scores, tmp_path / "scores" / "ce-scores.parquet")
    data["paths"].update(
        raw=str(raw), out=str(tmp_path / "out"), scores=str(tmp_path / "scores"), hf=str(tmp_path / "hf")
    )
    data["hf_export"] = {"negatives": 5}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return params


def test_cli_writes_paths_hf_and_exits_1_on_bad_input(
    inputs: Inputs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    params = _params(tmp_path, inputs)
    assert main(["--params", str(params)]) == 0
    hf = tmp_path / "hf"  # paths.hf as _params sets it
    assert sorted(p.name for p in hf.iterdir()) == sorted(
        [CORPUS, "msmarco-scores-smoke-cross-encoder", *(f"msmarco-{s}" for s in SYSTEMS)]
    )
    assert (hf / "msmarco-bm25" / "triplet-5-ids").is_dir()
    # every folder: provenance.json naming its Parquet files, and the card's Provenance section
    for folder in hf.iterdir():
        record = json.loads((folder / "provenance.json").read_text())
        data_files = sorted(folder.rglob("*.parquet"), key=lambda p: p.as_posix())  # as the record sorts
        assert [e["path"] for e in record["outputs"]] == [
            f"${{paths.hf}}/{p.relative_to(hf).as_posix()}" for p in data_files
        ]
        assert [e["md5"] for e in record["outputs"]] == [file_digest(p) for p in data_files]
        assert record["stage"] == "hf_export" and "hf_export" in record["params"]
        md5 = {e["path"]: e["md5"] for e in record["inputs"]}
        assert md5["${paths.out}/msmarco-hard-negatives.jsonl.gz"] == file_digest(inputs.negatives)
        card = (folder / "README.md").read_text()
        assert "## Provenance" in card and "`cross_encoder`:" in card
    datasets = pytest.importorskip("datasets")  # the record is no data file: the configs still load
    ds = datasets.load_dataset(
        str(hf / "msmarco-bm25"), "triplet-5", split="train", cache_dir=str(tmp_path / "c")
    )
    assert ds.num_rows > 0 and "negative_5" in ds.column_names
    before = _tree(hf)
    _truncate(inputs.negatives, tmp_path / "out" / "msmarco-hard-negatives.jsonl.gz")
    with caplog.at_level(logging.ERROR):
        assert main(["--params", str(params)]) == 1
    assert "msmarco-hard-negatives.jsonl.gz: compressed stream ends early" in caplog.text
    assert _tree(hf) == before


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "example: python -m tasks.hf_export" in capsys.readouterr().out


@pytest.mark.parametrize("config", ["triplet-hard", "triplet-50"])
def test_a_tiny_bi_encoder_trains_from(
    config: str,
    exported: tuple[Path, dict[str, dict[str, int]]],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    datasets = pytest.importorskip("datasets")
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, _ = exported
    ds = datasets.load_dataset(
        str(out / "msmarco-bm25"), config, split="train", cache_dir=str(tmp_path / "hf")
    )
    model = SentenceTransformer(str(tiny_models(tmp_path_factory).bi_mean_cos), device="cpu")
    before = [p.detach().clone() for p in model.parameters()]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=13,
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=ds, loss=MultipleNegativesRankingLoss(model)
    )
    result = trainer.train()
    assert result.global_step == 1
    assert np.isfinite(result.training_loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))
