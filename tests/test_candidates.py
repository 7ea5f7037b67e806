"""Re-ranking candidates: an official top-1000 list is re-ranked in full, whatever its order;
only ranked TREC runs are cut at a depth; the DL19 list is what DL19 re-ranks by default.

The official ``top1000.dev`` and ``msmarco-passagetest2019-top1000.tsv`` are "ordered by random",
so the first N lines of a query are a random N: cutting them by file order would re-rank a
random sample. These tests fail if any caller cuts an unordered list again.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest
import yaml

from tasks.config import ROOT, ConfigError, compose, load_config
from tasks.io import DataError
from tasks.records import Hit, read_candidates, read_top1000, write_run
from tasks.sample import DL19_DEPTH, SAMPLE_DIR

ROWS = [(q, p) for q in (3, 8, 21) for p in range(100, 160, 3)]  # 20 candidates per query


def _write_top1000(path: Path, rows: list[tuple[int, int]]) -> Path:
    path.write_text("".join(f"{q}\t{p}\tquery {q}\tpassage {p}\n" for q, p in rows), encoding="utf-8")
    return path


def test_a_shuffled_list_gives_the_same_candidates_as_the_sorted_list(tmp_path: Path) -> None:
    shuffled = ROWS[:]
    random.Random(4).shuffle(shuffled)
    assert shuffled != sorted(shuffled)
    a = read_candidates(_write_top1000(tmp_path / "sorted.tsv", sorted(ROWS)), depth=5)
    b = read_candidates(_write_top1000(tmp_path / "shuffled.tsv", shuffled), depth=5)
    assert a.sets == b.sets == {q: list(range(100, 160, 3)) for q in (3, 8, 21)}
    assert a.kept == b.kept == a.listed == len(ROWS)  # depth 5 cut nothing
    assert b.summary() == {"candidates": "shuffled.tsv", "ordered": False, "depth": None,
                           "queries": 3, "listed": 60, "reranked": 60}  # fmt: skip
    assert "re-ranking 60 of 60 candidates (all of an unordered list) for 3 queries" in b.describe()


def test_a_candidate_deeper_than_the_depth_at_the_end_of_the_file_is_kept(tmp_path: Path) -> None:
    rows = [*ROWS, (3, 999)]  # qid 3's 21st line, after every other query's lines
    cands = read_candidates(_write_top1000(tmp_path / "top1000.dev", rows), depth=1)
    assert 999 in cands.sets[3] and len(cands.sets[3]) == 21


def test_a_ranked_run_is_cut_at_the_depth_by_rank_not_by_line(tmp_path: Path) -> None:
    hits = [Hit(q, p, r, 10.0 - r) for q in (3, 8) for r, p in enumerate(range(100, 110), 1)]
    random.Random(1).shuffle(hits)  # lines out of rank order: the rank column decides
    write_run(tmp_path / "dev.full.trec", hits, "bm25")
    cands = read_candidates(tmp_path / "dev.full.trec", depth=4)
    assert cands.sets == {3: [100, 101, 102, 103], 8: [100, 101, 102, 103]}
    assert cands.ordered and (cands.depth, cands.listed, cands.kept) == (4, 20, 8)
    with pytest.raises(ValueError, match="depth must be positive"):
        read_candidates(tmp_path / "dev.full.trec", depth=0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("3\t100\tq\tp\n3\t101\tq\n",
         r"top1000\.tsv:2: expected 'qid<TAB>pid<TAB>query<TAB>passage', found 3 fields"),
        ("3\t100\tq\tp\n\n3 101 q p\n", r"top1000\.tsv:3: expected .*, found no tab"),
        ("3\tx100\tq\tp\n", r"top1000\.tsv:1: pid 'x100' is not an integer"),
        ("3\t100\tq\tp\nq3\t101\tq\tp\n", r"top1000\.tsv:2: qid 'q3' is not an integer"),
        ("3\t100\tq\tp\n8\t100\tq\tp\n3\t100\tq\tp\n", r"top1000\.tsv:3: pid 100 is listed twice for qid 3"),
        ("\n\n", r"top1000\.tsv: no candidates"),
    ],
)  # fmt: skip
def test_bad_lines_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "top1000.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_top1000(path)
    gz = tmp_path / "top1000.tsv.gz"  # as downloaded: the same errors through gzip
    gz.write_bytes(gzip.compress(content.encode()))
    with pytest.raises(DataError, match=message.replace(r"top1000\.tsv", r"top1000\.tsv\.gz")):
        read_top1000(gz)


def _params(tmp_path: Path, **evaluate: object) -> Path:
    data = yaml.safe_load(compose("sample"))
    data["evaluate"].update(evaluate)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_dl19_re_ranks_the_official_list_by_default_and_bm25_on_request(tmp_path: Path) -> None:
    cfg = load_config(_params(tmp_path))
    assert (cfg.evaluate.dev_candidates, cfg.evaluate.dl19_candidates) == ("bm25", "top1000")
    official = ROOT / "data/sample/raw/dl19_top1000/msmarco-passagetest2019-top1000.tsv"
    assert cfg.candidates("dl19") == official
    assert cfg.candidates("dev") == ROOT / "data/sample/runs/bm25/dev.full.trec"
    assert cfg.candidates_label("dl19") == "official top-1000 (all candidates re-ranked)"
    assert cfg.candidates_label("dev") == "BM25 top-1000 (this run)"
    assert cfg.candidates_label("dev", depth=cfg.evaluate.ce_rerank_depth) == "BM25 top-100 (this run)"
    ours = load_config(_params(tmp_path, dl19_candidates="bm25", dev_candidates="top1000"))
    assert ours.candidates("dl19") == ROOT / "data/sample/runs/bm25/dl19.full.trec"
    assert ours.candidates("dev") == ROOT / "data/sample/raw/top1000_dev/top1000.dev"
    assert ours.candidates_label("dev") == "official top-1000 (all candidates re-ranked)"
    with pytest.raises(ConfigError, match="unknown evaluation set 'train'"):
        cfg.candidates("train")
    with pytest.raises(ConfigError, match=r"evaluate\.dl19_candidates"):
        load_config(_params(tmp_path, dl19_candidates="official"))


def test_the_sample_ships_a_random_order_dl19_list_of_every_dl19_query(sample_inputs) -> None:
    """The bundled DL19 list, read as the download stage unpacks it (gunzip): every DL19 query
    with DL19_DEPTH distinct passages of the collection, its own query text, in random order."""
    path = SAMPLE_DIR / "msmarco-passagetest2019-top1000.tsv.gz"
    queries = dict(line.split("\t") for line in sample_inputs["queries_dl19"].read_text().splitlines())
    passages = dict(line.split("\t", 1) for line in sample_inputs["collection"].read_text().splitlines())
    sets = read_top1000(path)
    assert {str(q) for q in sets} == set(queries) and len(sets) == 50
    assert {len(p) for p in sets.values()} == {DL19_DEPTH}
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert len(lines) == 50 * DL19_DEPTH
    for line in lines:
        qid, pid, query, text = line.split("\t")
        assert queries[qid] == query and passages[pid] == text
    first = [int(line.split("\t")[1]) for line in lines[:DL19_DEPTH]]
    assert first != sorted(first)  # random order within a query, as the official list
    judged = {}
    for line in sample_inputs["qrels_dl19"].read_text().splitlines():
        qid, _, pid, rel = line.split()
        if int(rel) == 3:
            judged[int(qid)] = int(pid)
    assert all(pid in sets[qid] for qid, pid in judged.items())  # the answer is a candidate


def test_the_ce_rerank_stage_re_ranks_the_configured_dl19_list(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Through params.yaml and the stage CLI, as DVC runs it: with the default
    ``dl19_candidates: top1000`` the DL19 re-ranking is every line of the official list (our BM25
    run, also there, is not read); with ``bm25`` it is that run's top ``ce_rerank_depth``."""
    import json

    from tasks import rerank
    from tasks.records import read_run, write_id_text
    from tests._model_helpers import tiny_models, tiny_texts

    models = tiny_models(tmp_path_factory)
    data = yaml.safe_load(compose("sample"))
    data["paths"] = {key: str(tmp_path / key) for key in data["paths"]}
    data["inputs"].update(collection="collection.tsv", queries_dl19="queries.dl19.tsv")
    data["cross_encoder"].update(model=str(models.cross_encoder), shard_size=50, device="cpu", max_length=64)
    data["evaluate"]["ce_rerank_depth"] = 3
    data["orchestration"]["local_workers"] = 1
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "collection.tsv").write_bytes(models.collection.read_bytes())
    write_id_text(raw / "queries.dl19.tsv", zip((7, 9), tiny_texts(2, seed=2, max_len=6), strict=True))
    official = raw / data["inputs"]["top1000_dl19"]
    official.parent.mkdir(parents=True)
    rows = [(q, p) for q in (7, 9) for p in random.Random(q).sample(range(300), 8)]
    _write_top1000(official, rows)
    write_run(tmp_path / "runs" / "bm25" / "dl19.full.trec",
              [Hit(7, p, r, 9.0 - r) for r, p in enumerate((1, 2, 3, 4, 5), 1)], "bm25")  # fmt: skip
    out = tmp_path / "runs" / "cross-encoder" / "dl19.rerank.trec"
    for kind, expected in (("top1000", set(rows)), ("bm25", {(7, 1), (7, 2), (7, 3)})):
        data["evaluate"]["dl19_candidates"] = kind
        params = tmp_path / f"{kind}.yaml"
        params.write_text(yaml.safe_dump(data, sort_keys=False))
        assert rerank.main(["--params", str(params), "--sets", "dl19"]) == 0
        assert {(h.qid, h.pid) for h in read_run(out)} == expected, kind
        record = json.loads(out.with_suffix(".json").read_text())
        assert record["reranked"] == len(expected) and record["ordered"] == (kind == "bm25")
        assert record["candidates"] == (
            "msmarco-passagetest2019-top1000.tsv" if kind == "top1000" else "dl19.full.trec"
        )
