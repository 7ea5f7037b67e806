"""The scale generator: sizes follow MS MARCO's ratios, output is deterministic, and the files go
through the real download, unpack and readers via the profile it writes."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tasks import scale_data
from tasks.config import ROOT, Convert, Download, Source, compose
from tasks.download import run as download
from tasks.records import qrels_by_query, read_collection, read_qrels, read_queries, read_top1000
from tasks.sample import SOURCES
from tasks.scale_data import REAL, REAL_PASSAGES, SCALE_OVERRIDES, Sizes, main, sizes

N, SEED, DEPTH = 5000, 13, 100
FAST = Download(retries=0, backoff_s=0.01, backoff_max_s=0.01, stall_timeout_s=5, chunk_bytes=1 << 16)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """N passages generated once with the profile in a conf/ of its own; downloaded and unpacked
    through that profile, as `python -m tasks.config use scale && dvc repro` would."""
    tmp = tmp_path_factory.mktemp("scale")
    conf = tmp / "conf"
    (conf / "profile").mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "base.yaml", conf / "base.yaml")
    scale_data.run(N, SEED, tmp / "source", conf / "profile" / "scale.yaml", top1000_depth=DEPTH)
    cfg = yaml.safe_load(compose("scale", conf))
    raw = tmp / "raw"
    for name, src in cfg["sources"].items():
        download(name, Source.model_validate(src), raw, tmp / "downloads", FAST, ROOT)
    paths = {key: raw / rel for key, rel in cfg["inputs"].items()}
    return {"tmp": tmp, "source": tmp / "source", "profile": conf / "profile" / "scale.yaml", **paths}


def test_sizes_scale_from_the_real_counts():
    full = sizes(REAL_PASSAGES)
    assert {k: getattr(full, k) for k in REAL} == REAL
    assert (full.dev_qrels, full.top1000_depth) == (7437, 1000)
    assert sizes(1_000_000) == Sizes(
        1_000_000, 91_467, 56_882, 60_255, 789, 841, 50, 43, 91_467, 11_434, 1000
    )
    small = sizes(2000, qa_rows=100, top1000_depth=5000)  # floors for the small evaluation sets
    assert (small.dev_queries, small.dl19_queries, small.dl19_judged) == (50, 50, 43)
    assert (small.train_queries, small.train_judged, small.train_qrels) == (183, 114, 121)
    assert (small.qa_train, small.qa_dev, small.top1000_depth) == (100, 50, 2000)
    for bad, match in (({"passages": 999}, "passages"), ({"passages": 5000, "qa_rows": 0}, "qa_rows")):
        with pytest.raises(ValueError, match=match):
            sizes(**bad)


def test_two_runs_are_byte_identical_and_another_seed_differs(gen, tmp_path):
    scale_data.run(N, SEED, tmp_path / "again", None, top1000_depth=DEPTH)
    scale_data.run(N, SEED + 1, tmp_path / "other", None, top1000_depth=DEPTH)
    for fname in SOURCES:
        first = (gen["source"] / fname).read_bytes()
        assert (tmp_path / "again" / fname).read_bytes() == first, fname
        assert (tmp_path / "other" / fname).read_bytes() != first, fname
    assert not [p.name for p in gen["source"].iterdir() if p.name not in SOURCES]  # no scratch left


def test_profile_points_at_the_files_and_copies_the_sample_sections(gen):
    text = gen["profile"].read_text()
    cmd = f"python -m tasks.scale_data --passages {N} --seed {SEED} --top1000-depth {DEPTH} --out "
    assert f"# Written by: {cmd}{gen['source']}" in text
    prof = yaml.safe_load(text)
    sample = yaml.safe_load((ROOT / "conf/profile/sample.yaml").read_text())
    expected = {k: v for k, v in sample.items() if k != "sources"}
    for section, values in SCALE_OVERRIDES.items():  # msmarco-like batches, a lexicon-sized vocabulary
        expected[section] = {**expected.get(section, {}), **values}
    assert {k: v for k, v in prof.items() if k != "sources"} == expected
    assert prof["smoke_models"]["vocab_size"] == 40_000 and prof["cross_encoder"]["batch_size"] == 256
    assert list(prof["sources"]) == list(sample["sources"])
    for name, src in prof["sources"].items():
        fname = next(f for f, (n, _) in SOURCES.items() if n == name)
        path = gen["source"] / fname
        assert src["url"] == path.as_uri() and src["size"] == path.stat().st_size
        assert src.get("unpack", "none") == SOURCES[fname][1]


def test_collection_and_queries_parse_with_the_project_readers(gen):
    sz = sizes(N, top1000_depth=DEPTH)
    passages = list(read_collection(gen["collection"]))
    assert [p.pid for p in passages] == list(range(N))  # dense pids in file order, as the real one
    for i, start in (
        (0, "The Gobe lemur eats insects, seeds and small fruits"),
        (2500, "Taubem has a population of 5340 inhabitants"),
        (N - 1, "Traiban was founded in the year 1882 by merchants"),
    ):
        assert passages[i].text.startswith(start), i
    words = sum(len(p.text.split()) for p in passages) / N
    chars = sum(len(p.text) for p in passages) / N
    assert 50 < words < 62 and 290 < chars < 370  # MS MARCO: ~56 words, ~330 characters
    train = list(read_queries(gen["queries_train"]))
    dev = list(read_queries(gen["queries_dev"]))
    dl19 = list(read_queries(gen["queries_dl19"]))
    assert (len(train), len(dev), len(dl19)) == (sz.train_queries, sz.dev_queries, sz.dl19_queries)
    assert len({q.qid for q in train + dev + dl19}) == len(train) + len(dev) + len(dl19)
    assert 5 < sum(len(q.text.split()) for q in train) / len(train) < 7  # MS MARCO: ~6 words
    assert [train[0], train[len(train) // 2], train[-1]] == [
        (1336, "average life expectancy of a doabal lemur summary"),
        (716, "who founded Flauba Industries per year"),
        (212, "how many people live in baba"),
    ]
    qrels = list(read_qrels(gen["qrels_train"]))
    judged = qrels_by_query(qrels)
    assert (len(judged), len(qrels)) == (sz.train_judged, sz.train_qrels)
    assert Counter(len(v) for v in judged.values()) == {1: 267, 2: 17}
    assert set(judged) <= {q.qid for q in train}
    dev_judged = qrels_by_query(read_qrels(gen["qrels_dev"]))
    assert set(dev_judged) == {q.qid for q in dev} and sum(map(len, dev_judged.values())) == sz.dev_qrels
    text = {p.pid: p.text for p in passages}
    tokens = {pid: set(re.findall(r"[a-z]+", t.lower())) for pid, t in text.items()}
    df = Counter(tok for toks in tokens.values() for tok in toks)
    for q in train:  # its rarest corpus word is the entity's name: in its positive and <= 2 others
        rarest = min((t for t in re.findall(r"[a-z]+", q.text.lower()) if df[t]), key=df.__getitem__)
        assert df[rarest] <= 3 and all(rarest in tokens[pid] for pid in judged.get(q.qid, [])), q
    dl = list(read_qrels(gen["qrels_dl19"]))
    assert {r.rel for r in dl} == {0, 1, 2, 3} and len({r.qid for r in dl}) == sz.dl19_judged
    assert {r.qid for r in dl} <= {q.qid for q in dl19}
    assert all(r.pid in text for r in qrels + dl)
    assert [dl[0], dl[len(dl) // 2], dl[-1]] == [(31, 20, 1), (709, 1248, 1), (1647, 4989, 0)]


def _lines(path: Path) -> list[tuple[int, int, str, str]]:
    with open(path, encoding="utf-8") as fh:
        return [
            (int(q), int(p), query, text) for q, p, query, text in (ln.rstrip("\n").split("\t") for ln in fh)
        ]


@pytest.mark.parametrize(
    ("key", "queries", "qrels"),
    [("top1000_dev", "queries_dev", "qrels_dev"), ("top1000_dl19", "queries_dl19", "qrels_dl19")],
)
def test_top1000_lists_depth_distinct_candidates_of_existing_ids(gen, key, queries, qrels):
    """top1000.dev and the DL19 list (downloaded and gunzipped through the profile): DEPTH
    distinct candidates of every query of the set, the right texts, in random order."""
    passages = {p.pid: p.text for p in read_collection(gen["collection"])}
    qtext = {q.qid: q.text for q in read_queries(gen[queries])}
    positives = qrels_by_query(read_qrels(gen[qrels]), min_rel=3 if key == "top1000_dl19" else 1)
    sets = read_top1000(gen[key])
    lines = _lines(gen[key])
    assert len(lines) == len(qtext) * DEPTH == sum(map(len, sets.values()))
    assert set(sets) == set(qtext) and {len(p) for p in sets.values()} == {DEPTH}
    for qid, pid, query, text in lines:
        assert qtext[qid] == query and passages[pid] == text
    found = sum(any(p in sets[q] for p in positives[q]) for q in positives)
    assert 0.7 * len(positives) < found <= len(positives)  # the positive is listed for most queries
    first = [pid for qid, pid, _, _ in lines if qid == lines[0][0]]
    assert first != sorted(first)  # random order within a query
    if key == "top1000_dev":
        assert found < len(positives)  # and not for all
        ends = [lines[0][:2], lines[len(lines) // 2][:2], lines[-1][:2]]
        assert ends == [(1433, 1509), (890, 2542), (1557, 129)]  # unchanged by the DL19 list


def test_qa_files_convert_with_the_project_converter(gen, tmp_path):
    from tasks.convert import run as convert

    sz = sizes(N, top1000_depth=DEPTH)
    passages = {p.text: p.pid for p in read_collection(gen["collection"])}
    train = list(read_queries(gen["queries_train"]))
    judged = qrels_by_query(read_qrels(gen["qrels_train"]))
    raw = gzip.open(gen["qa_train"], "rb").read().decode()
    assert "http:\\/\\/" in raw and list(json.loads(raw)) == list(scale_data.COLUMNS)
    doc = convert("train", gen["qa_train"], tmp_path / "train", Convert())
    assert doc["queries"] == sz.qa_train
    rows = [json.loads(line) for line in gzip.open(tmp_path / "train" / "train.jsonl.gz", "rt")]
    assert len(rows) == sz.qa_train
    for row, query in zip(rows, train, strict=True):  # the QA rows are the training queries
        assert (row["query_id"], row["query"]) == (query.qid, query.text)
        selected = sorted(passages[p["passage_text"]] for p in row["passages"] if p["is_selected"])
        assert selected == judged.get(query.qid, [])
        assert len(row["passages"]) == 10 and all(p["passage_text"] in passages for p in row["passages"])
        assert (row["answers"] == ["No Answer Present."]) == (not selected)
    assert [rows[0]["answers"], rows[len(rows) // 2]["answers"], rows[-1]["answers"]] == [
        ["The average lifespan of the Doabal lemur is 63 years in the wild and longer in captivity."],
        [
            "Flauba Industries was founded by Luis Ortega, an engineer who started the company in a small "
            "garage in 1799."
        ],
        ["No Answer Present."],
    ]
    dev = json.loads(gzip.open(gen["qa_dev"], "rb").read())  # the dev rows start with dev.small
    dev_queries = list(read_queries(gen["queries_dev"]))
    assert len(dev["query"]) == sz.qa_dev > len(dev_queries)
    assert [(dev["query_id"][str(i)], dev["query"][str(i)]) for i in range(len(dev_queries))] == dev_queries
    assert len(set(dev["query_id"].values())) == sz.qa_dev
    assert not set(dev["query_id"].values()) & {q.qid for q in train}
    wf = doc["queries_with_well_formed_answers"]
    assert 0.1 * sz.qa_train < wf < 0.3 * sz.qa_train


def test_cli_errors_name_the_parameter(tmp_path, capsys):
    assert main(["--passages", "10", "--out", str(tmp_path), "--profile-out", str(tmp_path / "p.yaml")]) == 2
    assert "passages must be at least 1000" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "python -m tasks.scale_data --passages" in capsys.readouterr().out
