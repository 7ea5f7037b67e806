"""BM25: exact Lucene scores, deterministic ranking, mining output, bad input, sample quality."""

from __future__ import annotations

import random
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest

from tasks.bm25_backends import lucene_length, make_analyzer, open_backend
from tasks.bm25_index import run as build
from tasks.bm25_mine import run as mine_run
from tasks.config import Bm25, Mine
from tasks.io import DataError, file_digest, read_json
from tasks.records import read_hits, read_qrels, read_queries, read_run
from tests._bm25_helpers import FILLER, STABLE, lucene_bm25, synthetic, write_tsv

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample" / "collectionandqueries.tar.gz"


def _params(**kw) -> Bm25:
    return Bm25(threads=1, **kw)


@pytest.fixture(scope="module")
def formula_corpus(tmp_path_factory) -> tuple[Path, dict[int, str]]:
    rng = random.Random(3)
    docs = {}
    for i in range(60):
        words = rng.choices(STABLE[:12], k=rng.randint(1, 12)) + rng.choices(FILLER, k=rng.randint(0, 5))
        rng.shuffle(words)
        docs[1000 - 7 * i] = " ".join(w.upper() if rng.random() < 0.2 else w for w in words)
    path = write_tsv(tmp_path_factory.mktemp("formula") / "collection.tsv", list(docs.items()))
    return path, docs


@pytest.mark.parametrize(
    ("k1", "b", "analyzer"),
    [
        (1.2, 0.75, "english"),
        (1.2, 0.75, "standard"),
        (0.9, 0.4, "english"),
        (2.0, 1.0, "standard"),
        (0.6, 0.0, "english"),
    ],
)
def test_scores_equal_lucene_formula(tmp_path, formula_corpus, k1, b, analyzer):
    path, docs = formula_corpus
    params = _params(k1=k1, b=b, analyzer=analyzer)
    build(path, tmp_path / "idx", params)
    stop = set(FILLER) if analyzer == "english" else set()
    tokens = {pid: [w for w in text.lower().split() if w not in stop] for pid, text in docs.items()}
    searcher = open_backend(tmp_path / "idx", params)
    for query in [
        "river bank",
        "Money money loan",
        "the fish of the boat",
        "london tower music guitar piano",
    ]:
        qtok = [w for w in query.lower().split() if w not in stop]
        expected = lucene_bm25(qtok, tokens, k1, b)
        got = searcher.search([query], 1000)[0]
        assert {p for p, _ in got} == set(expected)
        for pid, score in got:
            assert score == pytest.approx(expected[pid], rel=2e-6), (query, pid)
        assert got == sorted(got, key=lambda h: (-h[1], h[0]))


def test_lucene_length_table():
    # exact below 40 tokens, then Lucene's 4-bit-mantissa steps (shared by tantivy)
    assert [lucene_length(n) for n in (0, 1, 23, 24, 39)] == [0, 1, 23, 24, 39]
    assert [lucene_length(n) for n in (40, 41, 42, 56, 57, 60, 100)] == [40, 40, 42, 56, 56, 60, 96]


def test_ties_broken_by_pid_and_deterministic(tmp_path):
    # 30 identical passages inserted in shuffled order: every cut must return the smallest pids
    pids = list(range(500, 530))
    random.Random(1).shuffle(pids)
    rows = [(p, "river bank water") for p in pids] + [(1, "river river bank"), (2, "unrelated words")]
    for k1, b in [(1.2, 0.75), (0.9, 0.4)]:
        params = _params(k1=k1, b=b)
        build(write_tsv(tmp_path / "c.tsv", rows), tmp_path / f"idx{k1}", params)
        searcher = open_backend(tmp_path / f"idx{k1}", params)
        for k in (1, 2, 5, 17, 31):
            got = searcher.search(["river bank"], k)[0]
            assert [p for p, _ in got] == [1, *range(500, 530)][:k]
        assert searcher.search(["river bank"] * 3, 7) == [searcher.search(["river bank"], 7)[0]] * 3


def test_index_bytes_are_deterministic(tmp_path, formula_corpus):
    """Same input, index_threads=1: the index directory is byte-identical (segments renamed by content)."""
    path, docs = formula_corpus

    def digests(out: Path) -> dict[str, str]:
        build(path, out, _params())
        return {str(f.relative_to(out)): file_digest(f) for f in sorted(out.rglob("*")) if f.is_file()}

    first, second = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert first == second
    assert sum(name.endswith(".idx") for name in first) >= 1
    # the renamed segments still open and answer
    assert open_backend(tmp_path / "b", _params()).search(["river bank"], 3)[0]


def test_empty_analysis_and_query_syntax(tmp_path, formula_corpus):
    params = _params()
    build(formula_corpus[0], tmp_path / "idx", params)
    searcher = open_backend(tmp_path / "idx", params)
    nasty = [
        "the of and",
        "?!...",
        "",
        "AND OR NOT",
        'river:"bank" AND (money OR loan)?',
        "fish^2 boat~ [a TO z] -war +king\\",
    ]
    res = searcher.search(nasty, 10)
    assert res[0] == res[1] == res[2] == []
    assert res[3] == []  # 'and', 'or', 'not' are English stopwords: plain words, not operators
    assert {p for p, _ in res[4]} and {p for p, _ in res[5]}


@pytest.fixture
def mined(tmp_path):
    passages, queries, qrels = synthetic()
    queries.append((5, "the of and ?"))  # analyses to nothing
    qrels.append((5, passages[0][0]))
    qrels.append((queries[0][0], 999_999))  # pid not in the collection
    coll = write_tsv(tmp_path / "collection.tsv", passages)
    qtrain = write_tsv(tmp_path / "queries.train.tsv", queries)
    qrels_path = tmp_path / "qrels.train.tsv"
    qrels_path.write_text("".join(f"{q}\t0\t{p}\t1\n" for q, p in qrels))
    dev = write_tsv(tmp_path / "dev.tsv", queries[:5] + [(6, "?")])

    def go(out: Path, threads: int = 1, top_k: int = 10, in_process_work: int = 0) -> dict:
        params = Bm25(threads=threads, query_batch=8)
        build(coll, out / "idx", params)
        summary = mine_run(
            out / "idx",
            qtrain,
            qrels_path,
            {"dev": dev, "dl19": dev},
            out / "neg" / "bm25.parquet",
            out / "runs",
            out / "summary.json",
            params,
            Mine(top_k=top_k, eval_depth=20),
            in_process_work=in_process_work,  # 0: threads > 1 always starts its processes
        )
        return summary

    return go, passages, queries, qrels


def test_mining_output(tmp_path, mined):
    go, passages, queries, qrels = mined
    summary = go(tmp_path / "a")
    table = read_hits(tmp_path / "a" / "neg" / "bm25.parquet")
    analyzer = make_analyzer("english")
    doc_tokens = {pid: set(analyzer.analyze(t)) for pid, t in passages}
    positives = defaultdict(set)
    for q, p in qrels:
        positives[q].add(p)
    by_q = defaultdict(list)
    for qid, rank, pid, score in zip(
        *(table.column(c).to_pylist() for c in ("qid", "rank", "pid", "score")), strict=True
    ):
        by_q[qid].append((rank, pid, score))
    for qid, text in queries:
        qtok = set(analyzer.analyze(text))
        matches = sum(1 for pid, toks in doc_tokens.items() if toks & qtok and pid not in positives[qid])
        rows = by_q.get(qid, [])
        assert len(rows) == min(10, matches), qid
        assert [r for r, _, _ in rows] == list(range(1, len(rows) + 1))
        assert not {p for _, p, _ in rows} & positives[qid]
        assert [(-s, p) for _, p, s in rows] == sorted((-s, p) for _, p, s in rows)
    assert table.column("qid").to_pylist() == sorted(table.column("qid").to_pylist())
    assert summary["train_queries"] == len(queries)
    assert summary["train_empty_result"] == 1
    assert summary["qrels_unknown_pids"] == 1
    assert summary["dev"]["empty_result"] == 1 and summary["dev"]["queries"] == 6
    run = list(read_run(tmp_path / "a" / "runs" / "dev.full.trec"))
    assert {h.qid for h in run} == {q for q, _ in queries[:5]}
    # runs keep positives (they are for evaluation): the query built from its positive finds it
    assert any(h.pid in positives[h.qid] for h in run)
    assert read_json(tmp_path / "a" / "summary.json")["train_queries"] == len(queries)


def test_mining_is_deterministic_across_workers(tmp_path, mined, caplog):
    go = mined[0]
    go(tmp_path / "one", threads=1)
    with caplog.at_level("INFO", logger="tasks.bm25_mine"):
        go(tmp_path / "two", threads=2)
        assert "searching in this process" not in caplog.text  # two searcher processes ran
        go(tmp_path / "small", threads=2, in_process_work=10**9)  # a stage this small: no processes
        assert "searching in this process" in caplog.text
    for rel in ("neg/bm25.parquet", "runs/dev.full.trec", "runs/dl19.full.trec"):
        one = (tmp_path / "one" / rel).read_bytes()
        assert one == (tmp_path / "two" / rel).read_bytes() == (tmp_path / "small" / rel).read_bytes(), rel


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1\tgood\nx2\tbad pid\n", "is not an integer"),
        ("1\tgood\n2\tother\n1\tagain\n", "duplicate pid 1"),
        ("", "empty collection"),
    ],
)
def test_bad_collection(tmp_path, content, message):
    path = tmp_path / "collection.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        build(path, tmp_path / "idx", _params())
    assert not (tmp_path / "idx").exists()  # nothing half-built under the final name


def test_index_built_for_other_params_is_refused(tmp_path, formula_corpus):
    build(formula_corpus[0], tmp_path / "idx", _params())
    with pytest.raises(DataError, match="analyzer"):
        open_backend(tmp_path / "idx", _params(analyzer="standard"))
    with pytest.raises(DataError, match="rebuild"):
        open_backend(tmp_path / "idx", _params(k1=0.9))


def test_cli_help(capsys):
    from tasks import bm25_index, bm25_mine

    for mod in (bm25_index, bm25_mine):
        with pytest.raises(SystemExit):
            mod.main(["--help"])
        assert "example:" in capsys.readouterr().out


@pytest.mark.skipif(not SAMPLE.exists(), reason="sample/collectionandqueries.tar.gz not generated yet")
def test_sample_dev_mrr10(tmp_path):
    with tarfile.open(SAMPLE) as tar:
        tar.extractall(tmp_path, filter="data")
    root = next(p.parent for p in tmp_path.rglob("collection.tsv"))
    params = _params()
    build(root / "collection.tsv", tmp_path / "idx", params)
    queries = list(read_queries(root / "queries.dev.small.tsv"))
    relevant = defaultdict(set)
    for q in read_qrels(root / "qrels.dev.small.tsv"):
        if q.rel > 0:
            relevant[q.qid].add(q.pid)
    queries = [q for q in queries if q.qid in relevant]
    assert queries
    ranked = open_backend(tmp_path / "idx", params).search([q.text for q in queries], 10)
    rr = []
    for q, hits in zip(queries, ranked, strict=True):
        ranks = [i for i, (pid, _) in enumerate(hits, 1) if pid in relevant[q.qid]]
        rr.append(1 / ranks[0] if ranks else 0.0)
    mrr = sum(rr) / len(relevant)  # MS MARCO: averaged over every judged query
    assert mrr >= 0.5, mrr
