"""Cross-encoder re-ranking of a BM25 run with the smoke cross-encoder."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

import numpy as np
import pytest

from tasks.config import CrossEncoderCfg
from tasks.io import DataError
from tasks.records import Hit, read_run, write_id_text, write_run
from tasks.rerank import main, run
from tests._model_helpers import tiny_models, tiny_texts


@pytest.fixture(scope="module")
def bm25(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    models = tiny_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("rerank")
    queries = root / "queries.dev.tsv"
    write_id_text(queries, zip((11, 22, 33), tiny_texts(3, seed=5, max_len=6), strict=True))
    rng = np.random.default_rng(0)
    hits = []
    for qid in (11, 22, 33):
        pids = rng.choice(300, size=12, replace=False)
        hits += [Hit(qid, int(p), r + 1, float(20 - r)) for r, p in enumerate(pids)]
    run_path = root / "bm25" / "dev.full.trec"
    write_run(run_path, hits, "bm25")
    return run_path, queries, models.collection, str(models.cross_encoder)


def _cfg() -> CrossEncoderCfg:
    return CrossEncoderCfg(
        name="ce", model="unused", max_length=64, batch_size=4, shard_size=10, device="cpu", dtype="fp32"
    )  # fp32 pinned: test_rerank_top_depth compares with a plain fp32 CrossEncoder.predict


def test_rerank_top_depth(bm25, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder
    from torch.nn import Identity

    run_path, queries, collection, ce = bm25
    out = tmp_path / "cross-encoder" / "dev.rerank.trec"
    assert run(run_path, queries, collection, out, 5, _cfg(), model_path=ce) == 3
    got = list(read_run(out))
    assert out.read_text().split("\n")[0].endswith(" cross-encoder")
    bm25_top = {q: [h.pid for h in hs][:5] for q, hs in groupby(read_run(run_path), key=lambda h: h.qid)}
    qtext = dict(line.split("\t") for line in queries.read_text().splitlines())
    ptext = dict(line.split("\t") for line in collection.read_text().splitlines())
    model = CrossEncoder(ce, device="cpu", max_length=64)
    for qid, hs in groupby(got, key=lambda h: h.qid):
        hs = list(hs)
        assert [h.rank for h in hs] == [1, 2, 3, 4, 5]
        assert sorted(h.pid for h in hs) == sorted(bm25_top[qid])
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
        expected = model.predict([(qtext[str(qid)], ptext[str(h.pid)]) for h in hs], activation_fn=Identity())
        np.testing.assert_allclose([h.score for h in hs], expected, atol=1e-5)
    again = tmp_path / "again.trec"
    run(run_path, queries, collection, again, 5, _cfg(), model_path=ce)
    assert again.read_bytes() == out.read_bytes()


def test_rerank_an_official_top1000_list_in_full(bm25, tmp_path: Path) -> None:
    """The unscored, randomly ordered list: EVERY candidate of each query is re-ranked whatever
    the depth, and the file's order changes nothing (a shuffled list writes the same bytes as
    the same list sorted). The sidecar records what was re-ranked."""
    import json
    import random

    run_path, queries, collection, ce = bm25
    rows = sorted((h.qid, h.pid) for h in read_run(run_path))  # 12 per query
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    outs = {}
    for name, order in (("sorted", rows), ("shuffled", shuffled)):
        top = tmp_path / name / "top1000.dev"
        top.parent.mkdir()
        top.write_text("".join(f"{q}\t{p}\tquery text\tpassage text\n" for q, p in order))
        outs[name] = tmp_path / name / "dev.rerank.trec"
        assert run(top, queries, collection, outs[name], 4, _cfg(), model_path=ce) == 3
    assert outs["shuffled"].read_bytes() == outs["sorted"].read_bytes()
    got = list(read_run(outs["shuffled"]))
    assert {(h.qid, h.pid) for h in got} == set(rows) and len(got) == 36  # depth 4 cut nothing
    assert json.loads(outs["shuffled"].with_suffix(".json").read_text()) == {
        "candidates": "top1000.dev", "ordered": False, "depth": None,
        "queries": 3, "listed": 36, "reranked": 36,
    }  # fmt: skip
    bm25_way = tmp_path / "bm25.rerank.trec"
    run(run_path, queries, collection, bm25_way, 4, _cfg(), model_path=ce)
    assert len(list(read_run(bm25_way))) == 12  # a ranked run IS cut at the depth
    assert json.loads(bm25_way.with_suffix(".json").read_text())["reranked"] == 12


def test_a_candidate_past_the_depth_at_the_end_of_the_list_is_re_ranked(bm25, tmp_path: Path) -> None:
    run_path, queries, collection, ce = bm25
    rows = [(h.qid, h.pid) for h in read_run(run_path) if h.rank <= 2]
    extra = next(p for p in range(300) if (11, p) not in rows)  # qid 11's third, on the last line
    top = tmp_path / "msmarco-passagetest2019-top1000.tsv"
    top.write_text("".join(f"{q}\t{p}\tq\tp\n" for q, p in [*rows, (11, extra)]))
    run(top, queries, collection, tmp_path / "dl19.rerank.trec", 1, _cfg(), model_path=ce)
    got = {(h.qid, h.pid) for h in read_run(tmp_path / "dl19.rerank.trec")}
    assert got == {*rows, (11, extra)}


def test_missing_inputs(bm25, tmp_path: Path) -> None:
    run_path, queries, collection, ce = bm25
    with pytest.raises(FileNotFoundError, match="bm25_mine"):
        run(tmp_path / "nope.trec", queries, collection, tmp_path / "o.trec", 5, _cfg(), model_path=ce)
    write_id_text(tmp_path / "q.tsv", [(11, "only one query")])
    with pytest.raises(DataError, match=r"2 qid\(s\) are not in"):
        run(run_path, tmp_path / "q.tsv", collection, tmp_path / "o.trec", 5, _cfg(), model_path=ce)


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "example: python -m tasks.rerank" in capsys.readouterr().out
