"""The bundled sample: reproducible by its generator, registered in the profile, well-formed."""

from __future__ import annotations

import json

import yaml

from tasks.config import ROOT
from tasks.records import qrels_by_query, read_collection, read_qrels, read_queries
from tasks.sample import SAMPLE_DIR, build, sources_block


def test_generator_reproduces_the_bundled_files_byte_for_byte():
    files = build()
    for name, data in files.items():
        assert (SAMPLE_DIR / name).read_bytes() == data, name


def test_profile_registers_md5_and_size_of_every_sample_file():
    profile = yaml.safe_load((ROOT / "conf/profile/sample.yaml").read_text())
    assert profile["sources"] == sources_block(build())


def test_formats_and_counts(sample_inputs):
    passages = list(read_collection(sample_inputs["collection"]))
    assert len(passages) == 3000
    assert passages[0].pid < passages[-1].pid  # sorted by pid, sparse ids
    assert all(p.text and "\t" not in p.text for p in passages)
    pids = {p.pid for p in passages}
    train = qrels_by_query(read_qrels(sample_inputs["qrels_train"]))
    assert len(train) == 1000 and len(list(read_queries(sample_inputs["queries_train"]))) == 1100
    assert all(pid in pids for plist in train.values() for pid in plist)
    assert any(len(v) > 1 for v in train.values())
    dl = list(read_qrels(sample_inputs["qrels_dl19"]))
    assert {q.rel for q in dl} == {0, 1, 2, 3}
    assert len({q.qid for q in dl}) == 43
    assert len(list(read_queries(sample_inputs["queries_dl19"]))) == 50


def test_qa_files_have_the_official_column_layout(sample_inputs):
    import gzip

    raw = gzip.open(sample_inputs["qa_train"], "rb").read().decode()
    assert "http:\\/\\/" in raw  # '/' escaped as in the official files
    table = json.loads(raw)
    assert list(table) == ["answers", "passages", "query", "query_id", "query_type", "wellFormedAnswers"]
    rows = table["query"].keys()
    assert all(table[col].keys() == rows for col in table)
    answers = list(table["answers"].values())
    assert ["No Answer Present."] in answers
    wf = list(table["wellFormedAnswers"].values())
    assert "[]" in wf and any(isinstance(v, list) for v in wf)
    first = table["passages"]["0"]
    assert len(first) == 10 and set(first[0]) == {"is_selected", "passage_text", "url"}
