"""ingest: BEIR folders, hf pairs and ir_datasets exports into the layout the stages read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tasks.beir_sample import build, write_beir_sample, write_hf_pairs_sample
from tasks.config import CORPUS_IDS, DATASET_INPUTS, DATASET_MANIFEST, QUERY_IDS, ROOT, Dataset, compose
from tasks.ingest import fetch, run
from tasks.io import DataError
from tasks.records import read_collection, read_qrels, read_queries

SMALL = {"docs": 150, "train_queries": 40, "test_queries": 12}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _beir_rows(path: Path) -> set[tuple[str, str, int]]:
    return {(q, d, int(s)) for q, d, s in (line.split("\t") for line in _lines(path)[1:])}


def _mapped_qrels(dest: Path, key: str) -> set[tuple[str, str, int]]:
    pids, qids = _lines(dest / CORPUS_IDS), _lines(dest / QUERY_IDS)
    return {(qids[q.qid], pids[q.pid], q.rel) for q in read_qrels(dest / DATASET_INPUTS[key])}


# --------------------------------------------------------------------------- beir
def test_beir_sample_into_the_layout(tmp_path: Path):
    src = tmp_path / "beir"
    write_beir_sample(src, **SMALL)
    dest = tmp_path / "raw" / "x"
    manifest = run(Dataset(format="beir", path=str(src)), "x", dest)

    corpus = _jsonl(src / "corpus.jsonl")
    passages = list(read_collection(dest / "collection.tsv"))
    assert [p.pid for p in passages] == list(range(len(corpus))) == list(range(SMALL["docs"]))
    for i in (0, len(corpus) // 2, len(corpus) - 1):  # first, middle, last
        assert passages[i].text == f"{corpus[i]['title']} {corpus[i]['text']}"
    assert _lines(dest / CORPUS_IDS) == [d["_id"] for d in corpus]

    queries = {q["_id"]: q["text"] for q in _jsonl(src / "queries.jsonl")}
    qids = _lines(dest / QUERY_IDS)
    assert qids == list(queries)  # every sample query is judged: one id space, file order
    train = list(read_queries(dest / DATASET_INPUTS["queries_train"]))
    evals = list(read_queries(dest / DATASET_INPUTS["queries_dev"]))
    assert len(train) == SMALL["train_queries"] and len(evals) == SMALL["test_queries"]
    for q in (train[0], train[len(train) // 2], train[-1], evals[0], evals[-1]):
        assert queries[qids[q.qid]] == q.text
    assert [q.qid for q in train] == sorted(q.qid for q in train)
    assert not {q.qid for q in train} & {q.qid for q in evals}

    assert _mapped_qrels(dest, "qrels_train") == _beir_rows(src / "qrels" / "train.tsv")
    eval_rows = _beir_rows(src / "qrels" / "test.tsv")
    assert _mapped_qrels(dest, "qrels_dev") == eval_rows
    assert {r for _, _, r in eval_rows} == {0, 1, 2}  # graded, rel 0 kept
    assert (dest / DATASET_INPUTS["qrels_dev"]).read_text().splitlines()[0].count("\t") == 3

    assert json.loads((dest / DATASET_MANIFEST).read_text()) == manifest
    counts = manifest["counts"]
    assert counts["passages"] == SMALL["docs"]
    assert (counts["train_queries"], counts["eval_queries"]) == (
        SMALL["train_queries"],
        SMALL["test_queries"],
    )
    assert counts["qrels_train"] == len(_lines(src / "qrels" / "train.tsv")) - 1
    assert counts["qrels_eval"] == len(eval_rows)
    assert set(manifest["sources"]) == {"corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"}
    assert manifest["sources"]["corpus.jsonl"]["size"] == (src / "corpus.jsonl").stat().st_size
    assert str(tmp_path) not in (dest / DATASET_MANIFEST).read_text()  # no absolute paths
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]  # no staging or cache left


def test_generator_and_ingest_are_byte_identical(tmp_path: Path):
    write_beir_sample(tmp_path / "a", **SMALL)
    write_beir_sample(tmp_path / "b", **SMALL)
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")
    write_beir_sample(tmp_path / "c", **SMALL, seed=14)
    assert _snapshot(tmp_path / "c") != _snapshot(tmp_path / "a")
    for name in ("a", "b"):
        run(Dataset(format="beir", path=str(tmp_path / name)), "x", tmp_path / "out" / name)
    run(Dataset(format="beir", path=str(tmp_path / "a")), "x", tmp_path / "out" / "a")  # rerun in place
    assert _snapshot(tmp_path / "out" / "a") == _snapshot(tmp_path / "out" / "b")


def test_sample_queries_are_answerable_lexically():
    sample = build(**SMALL)
    tokens = {
        d: set(f"{t} {x}".lower().replace(".", " ").replace(",", " ").split()) for d, t, x in sample.docs
    }
    target = {q: d for q, d, s in sample.qrels["test"] if s == 2}
    hits = 0
    for qid, text in sample.queries:
        if qid in target:
            words = set(text.lower().split())
            ranked = sorted(tokens, key=lambda d: (-len(words & tokens[d]), d))
            hits += target[qid] in ranked[:10]
    assert hits >= 0.8 * len(target)


def _write_beir(folder: Path, corpus: list, queries: list, qrels: dict[str, list[str]]) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (folder / name).write_text(
            "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
            encoding="utf-8",
        )
    for split, lines in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text(
            "".join(f"{line}\n" for line in lines), encoding="utf-8"
        )
    return folder


HEADER = "query-id\tcorpus-id\tscore"


def _tiny() -> tuple[list, list, dict[str, list[str]]]:
    corpus = [
        {"_id": "dóc 1", "title": "Ünïcode", "text": "first\tpassage\r\nwith  breaks"},
        {"_id": "文档-2", "title": "", "text": "second passage"},
        {"_id": 7, "text": "third passage, no title field"},
        {"_id": "d4", "title": "Title only", "text": ""},
    ]
    queries = [
        {"_id": "unused", "text": "nobody judges me"},
        {"_id": "q é", "text": "where is\nthe first"},
        {"_id": "q2", "text": "second?"},
        {"_id": "zero-only", "text": "judged but never relevant"},
        {"_id": "e1", "text": "eval query"},
    ]
    qrels = {
        "train": [HEADER, "q é\tdóc 1\t1", "q2\t文档-2\t1", "q2\t7\t0", "zero-only\td4\t0"],
        "test": [HEADER, "e1\t7\t2", "e1\tdóc 1\t0"],
    }
    return corpus, queries, qrels


def test_string_ids_unicode_and_text_rules(tmp_path: Path):
    src = _write_beir(tmp_path / "src", *_tiny())
    dest = tmp_path / "raw" / "t"
    manifest = run(Dataset(format="beir", path=str(src)), "t", dest)
    assert _lines(dest / CORPUS_IDS) == ["dóc 1", "文档-2", "7", "d4"]
    assert [p.text for p in read_collection(dest / "collection.tsv")] == [
        "Ünïcode first passage with  breaks",  # breaks and the whitespace around them: one space
        "second passage",
        "third passage, no title field",
        "Title only",
    ]
    # one id space over both splits, queries-file order; unjudged and zero-only queries get none
    assert _lines(dest / QUERY_IDS) == ["q é", "q2", "e1"]
    assert list(read_queries(dest / DATASET_INPUTS["queries_train"])) == [
        (0, "where is the first"),
        (1, "second?"),
    ]
    assert list(read_queries(dest / DATASET_INPUTS["queries_dev"])) == [(2, "eval query")]
    assert (dest / DATASET_INPUTS["qrels_train"]).read_text() == "0\t0\t0\t1\n1\t0\t1\t1\n"
    assert (dest / DATASET_INPUTS["qrels_dev"]).read_text() == "2\t0\t0\t0\n2\t0\t2\t2\n"
    c = manifest["counts"]
    assert (c["queries_unused"], c["qrels_train_dropped_not_positive"], c["qrels_eval_positive"]) == (2, 2, 1)

    with pytest.raises(DataError, match=r"corpus\.jsonl:4: document 'd4' has an empty text \(title: drop\)"):
        run(Dataset(format="beir", path=str(src), title="drop"), "t", tmp_path / "raw" / "d")
    dropped = run(
        Dataset(format="beir", path=str(src), title="drop", empty_passages="keep"),
        "t",
        tmp_path / "raw" / "d",
    )
    assert (
        next(read_collection(tmp_path / "raw" / "d" / "collection.tsv")).text == "first passage with  breaks"
    )
    assert "title: drop" in dropped["text"]


def test_gzipped_beir_files_are_read(tmp_path: Path):
    import gzip

    src = _write_beir(tmp_path / "src", *_tiny())
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        path = src / name
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), mtime=0))
        path.unlink()
    manifest = run(Dataset(format="beir", path=str(src)), "t", tmp_path / "raw" / "t")
    assert "corpus.jsonl.gz" in manifest["sources"] and manifest["counts"]["passages"] == 4


# --------------------------------------------------------------------------- validation
def _mutate(case: str) -> tuple[tuple[list, list, dict[str, list[str]]], str]:
    """A broken copy of the tiny dataset and the message it must raise (regex)."""
    corpus, queries, qrels = _tiny()
    if case == "missing text":
        del corpus[1]["text"]
        return (corpus, queries, qrels), r"corpus\.jsonl:2: record '文档-2' has no field 'text'"
    if case == "missing _id":
        del queries[2]["_id"]
        return (corpus, queries, qrels), r"queries\.jsonl:3: record has no field '_id'"
    if case == "duplicate doc":
        corpus[2]["_id"] = "dóc 1"
        return (corpus, queries, qrels), r"corpus\.jsonl:3: duplicate document id 'dóc 1'"
    if case == "duplicate query":
        queries[4]["_id"] = "q2"
        return (
            corpus,
            queries,
            qrels,
        ), r"queries\.jsonl:5: duplicate query _id 'q2' \(first on .*queries\.jsonl:3\)"
    if case == "id with tab":
        corpus[3]["_id"] = "d\t4"
        return (corpus, queries, qrels), r"corpus\.jsonl:4: _id 'd\\t4' is empty or holds a tab"
    if case == "empty id":
        corpus[0]["_id"] = ""
        return (corpus, queries, qrels), r"corpus\.jsonl:1: _id '' is empty"
    if case == "invalid json":
        corpus[1] = '{"_id": "x", '
        return (corpus, queries, qrels), r"corpus\.jsonl:2: invalid JSON"
    if case == "unknown doc":
        qrels["test"].append("e1\tnope\t1")
        return (
            corpus,
            queries,
            qrels,
        ), r"qrels/test\.tsv:4: corpus-id 'nope' \(query 'e1'\) is not in the corpus"
    if case == "unknown query":
        qrels["train"].append("ghost\t7\t1")
        return (corpus, queries, qrels), r"qrels/train\.tsv:6: query-id 'ghost' is not in the queries file"
    if case == "empty query":
        queries[1]["text"] = " \n "
        return (corpus, queries, qrels), r"queries\.jsonl:2: query 'q é' has an empty text"
    if case == "empty passage":
        corpus[2]["text"], corpus[2]["title"] = "  ", ""
        return (
            corpus,
            queries,
            qrels,
        ), r"corpus\.jsonl:3: document '.*' has an empty text .*empty_passages: keep"
    if case == "bad score":
        qrels["train"][2] = "q2\t文档-2\thigh"
        return (
            corpus,
            queries,
            qrels,
        ), r"qrels/train\.tsv:3: score 'high' of \('q2', '文档-2'\) is not an integer"
    if case == "judged twice":
        qrels["test"].append("e1\t7\t1")
        return (corpus, queries, qrels), r"qrels/test\.tsv:4: \('e1', '7'\) is judged twice .*test\.tsv:2"
    if case == "missing split":
        del qrels["test"]
        return (
            corpus,
            queries,
            qrels,
        ), r"qrels/test\.tsv: no qrels file for split 'test' \(found: train\.tsv\)"
    if case == "bad header":
        qrels["train"][0] = "qid\tdocid\trel"
        return (corpus, queries, qrels), r"qrels/train\.tsv:1: expected the header"
    if case == "no positives":
        qrels["train"] = [HEADER, "q2\t7\t0"]
        return (corpus, queries, qrels), r"qrels/train\.tsv: split 'train' has no positive judgement"
    if case == "wrong field count":
        qrels["train"][1] = "q é\tdóc 1"
        return (corpus, queries, qrels), r"qrels/train\.tsv:2: expected 3 tab-separated fields"
    raise AssertionError(case)


CASES = [
    "missing text", "missing _id", "duplicate doc", "duplicate query", "id with tab", "empty id",
    "invalid json", "unknown doc", "unknown query", "empty query", "empty passage", "bad score",
    "judged twice", "missing split", "bad header", "no positives", "wrong field count",
]  # fmt: skip


@pytest.fixture
def good_dest(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    dest = tmp_path / "raw" / "t"
    run(Dataset(format="beir", path=str(_write_beir(tmp_path / "good", *_tiny()))), "t", dest)
    return dest, _snapshot(dest)


@pytest.mark.parametrize("case", CASES)
def test_bad_beir_input_names_file_line_and_id_and_keeps_dest(case: str, tmp_path: Path, good_dest):
    dest, before = good_dest
    data, message = _mutate(case)
    src = _write_beir(tmp_path / "bad", *data)
    with pytest.raises(DataError, match=message):
        run(Dataset(format="beir", path=str(src)), "t", dest)
    assert _snapshot(dest) == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["t"]


def test_empty_passages_keep_is_counted(tmp_path: Path):
    corpus, queries, qrels = _tiny()
    corpus[2]["text"] = ""
    src = _write_beir(tmp_path / "src", corpus, queries, qrels)
    manifest = run(Dataset(format="beir", path=str(src), empty_passages="keep"), "t", tmp_path / "raw" / "t")
    assert manifest["counts"]["empty_passages"] == 1


def test_missing_folder_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match=r"no such folder"):
        run(Dataset(format="beir", path=str(tmp_path / "nope")), "t", tmp_path / "raw" / "t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no corpus\.jsonl"):
        run(Dataset(format="beir", path=str(tmp_path / "empty")), "t", tmp_path / "raw" / "t")


# --------------------------------------------------------------------------- hf
def _check_hf(dest: Path, src: Path) -> None:
    train = _jsonl(src / "train.jsonl")
    pids, qids = _lines(dest / CORPUS_IDS), _lines(dest / QUERY_IDS)
    assert pids == [f"d{i}" for i in range(len(pids))] and qids == [f"q{i}" for i in range(len(qids))]
    texts = [p.text for p in read_collection(dest / "collection.tsv")]
    assert texts[0] == train[0]["positive"]  # positives first, in first-appearance order
    assert sorted(texts) == sorted({d["text"] for d in _jsonl(src / "corpus.jsonl")})  # deduplicated
    queries = dict(read_queries(dest / DATASET_INPUTS["queries_train"]))
    pairs = {(queries[q.qid], texts[q.pid]) for q in read_qrels(dest / DATASET_INPUTS["qrels_train"])}
    assert pairs == {(r["query"], r["positive"]) for r in train}
    test = _jsonl(src / "test.jsonl")
    eval_q = dict(read_queries(dest / DATASET_INPUTS["queries_dev"]))
    rows = list(read_qrels(dest / DATASET_INPUTS["qrels_dev"]))
    assert {(eval_q[q.qid], texts[q.pid], q.rel) for q in rows} == {
        (r["query"], r["positive"], 1) for r in test
    }


def test_hf_pairs_from_data_files(tmp_path: Path):
    src = tmp_path / "hf"
    write_hf_pairs_sample(src, **SMALL)
    dest = tmp_path / "raw" / "h"
    manifest = run(Dataset(format="hf", path=str(src), corpus="corpus.jsonl"), "h", dest)
    _check_hf(dest, src)
    assert manifest["counts"]["passages"] == SMALL["docs"]
    assert manifest["counts"]["train_queries"] == SMALL["train_queries"]
    assert set(manifest["sources"]) == {"train.jsonl", "test.jsonl", "corpus.jsonl"}
    again = tmp_path / "raw" / "h2"
    run(Dataset(format="hf", path=str(src), corpus="corpus.jsonl"), "h", again)
    assert _snapshot(dest) == _snapshot(again)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["h", "h2"]  # the datasets cache is gone


def test_hf_save_to_disk_and_fetch_from_a_hub_id(tmp_path: Path):
    pairs = tmp_path / "pairs"
    write_hf_pairs_sample(pairs, **SMALL)
    corpus = tmp_path / "corpus.jsonl"
    shutil.move(pairs / "corpus.jsonl", corpus)
    saved = tmp_path / "saved"
    # a hub id may be a local folder: load_dataset infers the train / test splits by file name
    ds = Dataset(format="hf", path=str(saved), hub_id=str(pairs), corpus="../corpus.jsonl")
    fetch(ds, saved)
    assert (saved / "dataset_dict.json").is_file()
    dest = tmp_path / "raw" / "h"
    manifest = run(ds, "h", dest)
    shutil.copy(corpus, pairs / "corpus.jsonl")
    _check_hf(dest, pairs)
    assert "dataset_dict.json" in manifest["sources"]
    assert any(k.endswith("corpus.jsonl") for k in manifest["sources"]), sorted(manifest["sources"])
    files = run(Dataset(format="hf", path=str(pairs), corpus="corpus.jsonl"), "h", tmp_path / "raw" / "f")
    assert _snapshot(dest)["collection.tsv"] == _snapshot(tmp_path / "raw" / "f")["collection.tsv"]
    assert files["counts"] == manifest["counts"]


def test_hf_query_with_several_positives(tmp_path: Path):
    src = tmp_path / "hf"
    src.mkdir()
    rows = [("a?", "pa1"), ("b?", "pb"), ("a?", "pa2"), ("a?", "pa1")]  # a repeated pair is one qrel
    (src / "train.jsonl").write_text("".join(json.dumps({"anchor": q, "pos": p}) + "\n" for q, p in rows))
    (src / "test.jsonl").write_text(json.dumps({"anchor": "c?", "pos": "pb"}) + "\n")
    dest = tmp_path / "raw" / "h"
    run(Dataset(format="hf", path=str(src), query_column="anchor", positive_column="pos"), "h", dest)
    assert _lines(dest / CORPUS_IDS) == ["d0", "d1", "d2"] and _lines(dest / QUERY_IDS) == ["q0", "q1", "q2"]
    assert (dest / DATASET_INPUTS["qrels_train"]).read_text() == "0\t0\t0\t1\n0\t0\t2\t1\n1\t0\t1\t1\n"
    assert (dest / DATASET_INPUTS["qrels_dev"]).read_text() == "2\t0\t1\t1\n"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"query": "a", "text": "p"}], r"train\.jsonl: no column 'positive' \(datasets\.\*\.positive_column\)"),  # noqa: E501
        ([{"query": "a", "positive": "p"}, {"query": "b", "positive": " "}], r"train\.jsonl: row 2: positive is empty"),  # noqa: E501
        ([{"query": "a", "positive": ["p", "q"]}], r"train\.jsonl: row 1: positive is list, not a string"),
    ],
)  # fmt: skip
def test_bad_hf_input(rows: list[dict], message: str, tmp_path: Path):
    src = tmp_path / "hf"
    src.mkdir()
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (src / "test.jsonl").write_text(json.dumps({"query": "t", "positive": "p"}) + "\n")
    with pytest.raises(DataError, match=message):
        run(Dataset(format="hf", path=str(src)), "h", tmp_path / "raw" / "h")
    (src / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"no data file for split 'test'"):
        run(Dataset(format="hf", path=str(src)), "h", tmp_path / "raw" / "h")


# --------------------------------------------------------------------------- ir_datasets
class TitledDoc(NamedTuple):
    doc_id: str
    title: str
    text: str

    def default_text(self) -> str:
        return f"{self.title} {self.text}"


def _register_ir(tmp_path: Path) -> tuple[str, str]:
    import ir_datasets
    from ir_datasets.datasets.base import Dataset as IrDataset
    from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
    from ir_datasets.util import LocalDownload

    files = {
        "docs.tsv": "D1\tAlpha\talpha passage\nD2\t\tbeta passage\nD3\tGamma\tgamma passage\n",
        "train-queries.tsv": "Q1\tfind alpha\nQ2\tfind beta\n",
        "train-qrels": "Q1 0 D1 1\nQ2 0 D2 1\nQ2 0 D3 0\n",
        "eval-queries.tsv": "E1\tfind gamma\n",
        "eval-qrels": "E1 0 D3 2\nE1 0 D1 0\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    defs = {0: "not relevant", 1: "relevant", 2: "highly relevant"}
    base = f"local-{os.getpid()}-{tmp_path.name}"
    train = IrDataset(
        TsvDocs(LocalDownload(tmp_path / "docs.tsv"), doc_cls=TitledDoc),
        TsvQueries(LocalDownload(tmp_path / "train-queries.tsv")),
        TrecQrels(LocalDownload(tmp_path / "train-qrels"), defs),
    )
    evals = IrDataset(
        TsvQueries(LocalDownload(tmp_path / "eval-queries.tsv")),
        TrecQrels(LocalDownload(tmp_path / "eval-qrels"), defs),
    )
    ir_datasets.registry.register(f"{base}/train", train)
    ir_datasets.registry.register(f"{base}/eval", evals)
    return f"{base}/train", f"{base}/eval"


def test_ir_datasets_fetch_then_ingest(tmp_path: Path):
    ir_id, ir_eval_id = _register_ir(tmp_path)
    export = tmp_path / "export"
    ds = Dataset(format="ir_datasets", path=str(export), ir_id=ir_id, ir_eval_id=ir_eval_id, eval_split="dev")
    counts = fetch(ds, export)
    assert counts == {"docs": 3, "queries": 3, "qrels_train": 3, "qrels_dev": 2}
    assert _jsonl(export / "corpus.jsonl")[1] == {"_id": "D2", "title": "", "text": "beta passage"}
    assert _lines(export / "qrels" / "dev.tsv") == [HEADER, "E1\tD3\t2", "E1\tD1\t0"]
    dest = tmp_path / "raw" / "ir"
    manifest = run(ds, "ir", dest)
    assert [p.text for p in read_collection(dest / "collection.tsv")] == [
        "Alpha alpha passage", "beta passage", "Gamma gamma passage"
    ]  # fmt: skip
    assert _lines(dest / QUERY_IDS) == ["Q1", "Q2", "E1"]
    assert _mapped_qrels(dest, "qrels_train") == {("Q1", "D1", 1), ("Q2", "D2", 1)}
    assert _mapped_qrels(dest, "qrels_dev") == {("E1", "D3", 2), ("E1", "D1", 0)}
    assert (manifest["ir_id"], manifest["format"]) == (ir_id, "ir_datasets")


# --------------------------------------------------------------------------- CLI
def _params(tmp_path: Path, src: Path) -> Path:
    conf = tmp_path / "conf"
    (conf / "profile").mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "base.yaml", conf / "base.yaml")
    sample = yaml.safe_load((ROOT / "conf" / "profile" / "sample.yaml").read_text())
    profile = {
        "paths": {"raw": str(tmp_path / "raw")},  # absolute: ROOT / an absolute path is that path
        "datasets": {"x": {"format": "beir", "path": str(src)}},
        "systems": sample["systems"],
        "cross_encoder": sample["cross_encoder"],
    }
    (conf / "profile" / "x.yaml").write_text(yaml.safe_dump(profile))
    params = tmp_path / "params.yaml"
    params.write_text(compose("x", conf))
    return params


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.ingest", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_stage_and_exit_codes(tmp_path: Path):
    src = tmp_path / "beir"
    write_beir_sample(src, **SMALL)
    params = _params(tmp_path, src)
    done = _cli("--dataset", "x", "--params", str(params))
    assert done.returncode == 0, done.stderr
    dest = tmp_path / "raw" / "x"
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [*DATASET_INPUTS.values(), CORPUS_IDS, QUERY_IDS, DATASET_MANIFEST]
    )
    before = _snapshot(dest)
    (src / "qrels" / "test.tsv").unlink()
    bad = _cli("--dataset", "x", "--params", str(params))
    assert bad.returncode == 1 and "no qrels file for split 'test'" in bad.stderr
    assert _snapshot(dest) == before
    unknown = _cli("--dataset", "nope", "--params", str(params))
    assert unknown.returncode == 2 and "no dataset 'nope'" in unknown.stderr
    beir_fetch = _cli("fetch", "x", "--params", str(params))
    assert beir_fetch.returncode == 2 and "nothing to fetch" in beir_fetch.stderr
    assert "fetch NAME" in _cli("--help").stdout and "ir_datasets" in _cli("fetch", "--help").stdout
