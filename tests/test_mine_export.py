"""mine_export: every mining option on hand-built cases with hand-computed answers, the same
selection as sentence-transformers' ``mine_hard_negatives`` on the same candidates and scores,
seeded random sampling, offline loading of every format, config errors naming the key, the CLI."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tasks.config import ConfigError, Mining, compose, load_config
from tasks.io import DataError
from tasks.mine_export import Counts, main, run
from tasks.records import Qrel, hits_table, scores_table, write_hits, write_id_text, write_qrels, write_table

TOP_K = 10
SEED = 13


@dataclass(frozen=True)
class Case:
    """Inputs on disk: hits per system (qid -> pids in rank order), positives, CE scores."""

    root: Path
    negatives: Path
    scores: Path
    collection: Path
    queries: Path
    qrels: Path

    def run(
        self, systems: list[str] | None = None, out: str = "datasets", **mining: Any
    ) -> dict[str, Counts]:
        return run(
            Mining(**mining),
            systems or ["bm25"],
            TOP_K,
            SEED,
            self.negatives,
            self.scores,
            self.collection,
            self.queries,
            self.qrels,
            self.root / out,
            self.root / f"{out}.json",
            row_group_cells=7,  # several row groups ...
            shard_bytes=50,  # ... and several files from a few rows
        )


def build(
    root: Path,
    hits: dict[str, dict[int, list[int]]],
    positives: dict[int, list[int]],
    ce: dict[tuple[int, int], float],
    texts: dict[int, str] | None = None,
    query_texts: dict[int, str] | None = None,
) -> Case:
    root.mkdir(parents=True, exist_ok=True)
    pids = sorted(
        {p for lists in hits.values() for ps in lists.values() for p in ps}
        | {p for ps in positives.values() for p in ps}
    )
    collection = root / "collection.tsv"
    write_id_text(collection, [(p, (texts or {}).get(p, f"passage {p}")) for p in pids])
    queries = root / "queries.tsv"
    write_id_text(queries, [(q, (query_texts or {}).get(q, f"query {q}")) for q in sorted(positives)])
    qrels = root / "qrels.tsv"
    write_qrels(qrels, [Qrel(q, p, 1) for q in sorted(positives) for p in positives[q]])
    negatives = root / "negatives"
    negatives.mkdir()
    for system, lists in hits.items():
        qs = [q for q in sorted(lists) for _ in lists[q]]
        ps = [p for q in sorted(lists) for p in lists[q]]
        write_hits(
            negatives / f"{system}.parquet", hits_table(np.array(qs), np.array(ps), -np.arange(len(ps)))
        )
    pairs = sorted(ce)
    scores = root / "ce-scores.parquet"
    write_table(
        scores,
        scores_table(
            np.array([q for q, _ in pairs]), np.array([p for _, p in pairs]), np.array([ce[k] for k in pairs])
        ),
    )
    return Case(root, negatives, scores, collection, queries, qrels)


def rows(folder: Path) -> list[dict[str, Any]]:
    files = sorted(folder.glob("train-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []


def negatives_of(out: Path, system: str = "bm25") -> dict[int, list[int]]:
    """qid -> kept negative pids, from the triplet rows (texts 'query Q' / 'passage P')."""
    got: dict[int, list[int]] = {}
    seen: set[tuple[int, int]] = set()
    for r in rows(out / system / "triplet"):
        q, n = int(r["query"].split()[1]), int(r["negative"].split()[1])
        if (q, n) not in seen:
            seen.add((q, n))
            got.setdefault(q, []).append(n)
    return got


# --------------------------------------------------------------------------- hand-built case
# query 1: positive 100 (CE 5.0); bm25 hits 1..8 in rank order with these CE scores
CE1 = {1: 6.0, 2: 4.5, 3: 1.0, 4: 3.0, 5: -2.0, 6: 2.0, 7: 0.5, 8: -5.0}


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Case:
    ce = {(1, 100): 5.0, **{(1, p): s for p, s in CE1.items()}}
    return build(tmp_path_factory.mktemp("one"), {"bm25": {1: list(CE1)}}, {1: [100]}, ce)


@pytest.mark.parametrize(
    ("options", "expected", "dropped"),
    [
        ({}, [1, 2, 3], {"not_sampled": 5}),  # top 3 by rank
        ({"range_min": 2}, [3, 4, 5], {"range_min": 2, "not_sampled": 3}),
        ({"range_max": 5, "range_min": 3, "num_negatives": 2}, [4, 5], {"range_min": 3}),  # window 1..5
        ({"num_negatives": 5, "range_max": 6}, [1, 2, 3, 4, 5], {"not_sampled": 1}),
        # m = 5: CE + 1 > 5 drops 1 (6.0), 2 (4.5); the rest ordered by CE: 4, 6, 3, 7, 5, 8
        ({"absolute_margin": 1.0}, [4, 6, 3], {"absolute_margin": 2, "not_sampled": 3}),
        # CE > 5 - |5| * 0.5 = 2.5 drops 1, 2, 4
        ({"relative_margin": 0.5}, [6, 3, 7], {"relative_margin": 3, "not_sampled": 2}),
        # CE > 1.0 drops 1, 2, 4, 6; 3 (exactly 1.0) stays
        ({"max_score": 1.0}, [3, 7, 5], {"max_score": 4, "not_sampled": 1}),
        # CE < 0.5 drops 5, 8; 7 (exactly 0.5) stays; by CE: 1, 2, 4, 6, 3, 7
        ({"min_score": 0.5}, [1, 2, 4], {"min_score": 2, "not_sampled": 3}),
        ({"min_score": 0.5, "range_min": 3}, [6, 3, 7], {"min_score": 2, "range_min": 3}),
        # margins first (1, 2), then min_score (7, 5, 8); 4 6 3 remain, range_min skips 4
        (
            {"absolute_margin": 1.0, "min_score": 0.6, "range_min": 1},
            [6, 3],
            {"absolute_margin": 2, "min_score": 3, "range_min": 1},
        ),
        # the window is cut by rank before the filters: hits 1..5, margin drops 1, 2
        ({"range_max": 5, "absolute_margin": 1.0}, [4, 3, 5], {"absolute_margin": 2}),
        ({"absolute_margin": 10.0}, [8], {"absolute_margin": 7}),  # -5 + 10 > 5 is false: 8 stays
        ({"absolute_margin": 10.5}, [], {"absolute_margin": 8}),  # nothing left
    ],
)
def test_each_option_on_a_hand_built_query(
    one: Case, tmp_path: Path, options: dict[str, Any], expected: list[int], dropped: dict[str, int]
) -> None:
    case = Case(tmp_path, one.negatives, one.scores, one.collection, one.queries, one.qrels)
    if not expected:  # no row in any format: the stage fails and keeps no output
        with pytest.raises(DataError, match="no row in any format"):
            case.run(**options)
        return
    counts = case.run(**options)["bm25"]
    assert negatives_of(tmp_path / "datasets") == {1: expected}
    full = {k: 0 for k in ("absolute_margin", "relative_margin", "max_score", "min_score", "range_min")}
    full["not_sampled"] = 0
    assert counts.dropped == {**full, **dropped}
    assert counts.negatives_kept == len(expected) and counts.queries == 1
    assert counts.short == (len(expected) < options.get("num_negatives", 3))
    metrics = json.loads((tmp_path / "datasets.json").read_text())
    assert metrics["bm25"]["dropped"] == counts.dropped


def test_relative_margin_with_a_negative_positive_score(tmp_path: Path) -> None:
    """m = -2: the threshold is m - |m| * 0.5 = -3 (sentence-transformers #3819), not m * 0.5."""
    ce = {(2, 100): -2.0, (2, 11): -2.5, (2, 12): -3.0, (2, 13): -4.0}
    case = build(tmp_path, {"bm25": {2: [11, 12, 13]}}, {2: [100]}, ce)
    case.run(relative_margin=0.5)
    assert negatives_of(tmp_path / "datasets") == {2: [12, 13]}


# --------------------------------------------------------------------------- formats
@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """q3: positives 200 (CE 5), 201 (CE 3), so m = 3; hits 21..24. q4: one positive, 2 hits.
    q5: every hit filtered out. q6: a positive, no hit. Hits of q7, a query without qrels."""
    ce = {
        (3, 200): 5.0, (3, 201): 3.0, (3, 21): 2.5, (3, 22): 1.5, (3, 23): 0.0, (3, 24): -1.0,
        (4, 300): 4.0, (4, 31): 1.0, (4, 32): 2.0,
        (5, 400): 0.0, (5, 41): 3.0,
    }  # fmt: skip
    hits = {"bm25": {3: [21, 22, 23, 24], 4: [31, 32], 5: [41], 7: [99]}}
    return build(tmp_path_factory.mktemp("multi"), hits, {3: [200, 201], 4: [300], 5: [400], 6: [500]}, ce)


FORMATS = ["triplet", "n-tuple", "labeled-pair", "labeled-list"]


def test_formats_rows_and_scores_by_hand(multi: Case, tmp_path: Path) -> None:
    case = Case(tmp_path, multi.negatives, multi.scores, multi.collection, multi.queries, multi.qrels)
    counts = case.run(absolute_margin=1.0, formats=FORMATS, output_scores=True)["bm25"]
    out = tmp_path / "datasets" / "bm25"
    p, q = "passage {}".format, "query {}".format
    # q3 keeps 22 23 24 (21: 2.5 + 1 > 3); q4 keeps 32, 31 (by CE; m = 4); q5 keeps none
    assert rows(out / "triplet") == [
        *({"query": q(3), "positive": p(pos), "negative": p(n), "scores": [ps, ns]}
          for pos, ps in ((200, 5.0), (201, 3.0)) for n, ns in ((22, 1.5), (23, 0.0), (24, -1.0))),
        {"query": q(4), "positive": p(300), "negative": p(32), "scores": [4.0, 2.0]},
        {"query": q(4), "positive": p(300), "negative": p(31), "scores": [4.0, 1.0]},
    ]  # fmt: skip
    assert rows(out / "n-tuple") == [
        {"query": q(3), "positive": p(pos), "negative_1": p(22), "negative_2": p(23), "negative_3": p(24),
         "scores": [ps, 1.5, 0.0, -1.0]}
        for pos, ps in ((200, 5.0), (201, 3.0))
    ]  # fmt: skip
    assert rows(out / "labeled-pair") == [
        {"query": q(3), "positive": p(200), "score": 5.0},
        {"query": q(3), "positive": p(201), "score": 3.0},
        {"query": q(3), "positive": p(22), "score": 1.5},
        {"query": q(3), "positive": p(23), "score": 0.0},
        {"query": q(3), "positive": p(24), "score": -1.0},
        {"query": q(4), "positive": p(300), "score": 4.0},
        {"query": q(4), "positive": p(32), "score": 2.0},
        {"query": q(4), "positive": p(31), "score": 1.0},
        {"query": q(5), "positive": p(400), "score": 0.0},  # positives stay when no negative does
    ]
    assert rows(out / "labeled-list") == [
        {"query": q(3), "positive": [p(200), p(22), p(23), p(24)], "scores": [5.0, 1.5, 0.0, -1.0]},
        {"query": q(3), "positive": [p(201), p(22), p(23), p(24)], "scores": [3.0, 1.5, 0.0, -1.0]},
        {"query": q(4), "positive": [p(300), p(32), p(31)], "scores": [4.0, 2.0, 1.0]},
    ]
    assert counts.rows == {"triplet": 8, "n-tuple": 2, "labeled-pair": 9, "labeled-list": 3}
    assert counts.rows_dropped == {"triplet": 1, "n-tuple": 2, "labeled-pair": 0, "labeled-list": 1}
    assert (counts.queries, counts.no_hits, counts.no_positive, counts.short) == (3, 1, 1, 2)
    assert counts.candidates == 7 and counts.dropped["absolute_margin"] == 2  # 21 and 41


def test_labels_without_scores(multi: Case, tmp_path: Path) -> None:
    case = Case(tmp_path, multi.negatives, multi.scores, multi.collection, multi.queries, multi.qrels)
    case.run(formats=FORMATS, num_negatives=2)  # no filter: rank order, no CE needed
    out = tmp_path / "datasets" / "bm25"
    assert [r["label"] for r in rows(out / "labeled-pair")] == [1, 1, 0, 0, 1, 0, 0, 1, 0]
    assert [r["labels"] for r in rows(out / "labeled-list")] == [[1, 0, 0]] * 3 + [[1, 0]]
    assert rows(out / "triplet")[0] == {
        "query": "query 3",
        "positive": "passage 200",
        "negative": "passage 21",
    }
    assert [r["negative_2"] for r in rows(out / "n-tuple")] == ["passage 22", "passage 22", "passage 32"]


COLUMNS = {
    ("triplet", False): {"query": "string", "positive": "string", "negative": "string"},
    ("triplet", True): {
        "query": "string", "positive": "string", "negative": "string", "scores": "list<float64>",
    },
    ("n-tuple", False): {
        "query": "string", "positive": "string", "negative_1": "string", "negative_2": "string",
    },
    ("n-tuple", True): {
        "query": "string", "positive": "string", "negative_1": "string", "negative_2": "string",
        "scores": "list<float64>",
    },
    ("labeled-pair", False): {"query": "string", "positive": "string", "label": "int64"},
    ("labeled-pair", True): {"query": "string", "positive": "string", "score": "float64"},
    ("labeled-list", False): {"query": "string", "positive": "list<string>", "labels": "list<int64>"},
    ("labeled-list", True): {"query": "string", "positive": "list<string>", "scores": "list<float64>"},
}  # fmt: skip


def _dtype(feature: object) -> str:
    from datasets import List, Value

    if isinstance(feature, List):
        return f"list<{_dtype(feature.feature)}>"
    assert isinstance(feature, Value), feature
    return str(feature.dtype)


@pytest.mark.parametrize("scores", [False, True])
def test_every_format_loads_offline_with_its_columns(
    multi: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scores: bool
) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    case = Case(tmp_path, multi.negatives, multi.scores, multi.collection, multi.queries, multi.qrels)
    counts = case.run(formats=FORMATS, num_negatives=2, output_scores=scores)["bm25"]
    folder = tmp_path / "datasets" / "bm25"
    assert len(list((folder / "triplet").glob("train-*.parquet"))) > 1  # sharded
    for fmt in FORMATS:
        ds = datasets.load_dataset(str(folder), fmt, split="train", cache_dir=str(tmp_path / "cache"))
        assert {c: _dtype(f) for c, f in ds.features.items()} == COLUMNS[(fmt, scores)], fmt
        assert list(ds.features) == list(COLUMNS[(fmt, scores)])  # column order too
        assert ds.num_rows == counts.rows[fmt] > 0
        assert ds.to_list() == rows(folder / fmt)


# --------------------------------------------------------------------------- random sampling
@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """40 queries x 10 hits, CE scores descending with rank; two systems with the same hits."""
    hits = {q: [q * 100 + i for i in range(1, 11)] for q in range(1, 41)}
    ce = {(q, q * 100): 20.0 for q in hits} | {
        (q, p): 10.0 - i for q, ps in hits.items() for i, p in enumerate(ps)
    }
    return build(
        tmp_path_factory.mktemp("wide"), {"bm25": hits, "other": hits}, {q: [q * 100] for q in hits}, ce
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_random_sampling_is_seeded_deterministic_and_in_selection_order(wide: Case, tmp_path: Path) -> None:
    case = Case(tmp_path, wide.negatives, wide.scores, wide.collection, wide.queries, wide.qrels)
    options = {"sampling_strategy": "random", "range_min": 2, "formats": FORMATS}
    case.run(["bm25", "other"], out="a", **options)
    case.run(["bm25", "other"], out="b", **options)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # same bytes
    draws = negatives_of(tmp_path / "a")
    for q, negs in draws.items():
        pool = [q * 100 + i for i in range(3, 11)]  # range_min skips ranks 1, 2
        assert len(negs) == 3 and set(negs) <= set(pool) and negs == sorted(negs)  # rank order
    offsets = {tuple(n - q * 100 for n in negs) for q, negs in draws.items()}
    assert len(offsets) > 10  # per-query draws, not one pattern for all
    assert {n % 100 for negs in draws.values() for n in negs} == set(range(3, 11))  # every candidate drawn
    assert negatives_of(tmp_path / "a", "other") != draws  # seeded per system too
    case.run(["bm25"], out="c", seed=SEED + 1, **options)
    assert negatives_of(tmp_path / "c") != draws  # seed-dependent
    case.run(["bm25"], out="d", **options)
    assert negatives_of(tmp_path / "d") == draws  # a draw does not depend on the other systems
    # with filters, the draw is among the survivors, put back in CE order
    case.run(["bm25"], out="e", sampling_strategy="random", max_score=6.0, num_negatives=2)
    for q, negs in negatives_of(tmp_path / "e").items():
        assert set(negs) <= {q * 100 + i for i in range(5, 11)} and negs == sorted(negs)


def test_per_system_overrides(wide: Case, tmp_path: Path) -> None:
    case = Case(tmp_path, wide.negatives, wide.scores, wide.collection, wide.queries, wide.qrels)
    counts = case.run(["bm25", "other"], num_negatives=2, per_system={"other": {"range_min": 4}})
    assert negatives_of(tmp_path / "datasets")[1] == [101, 102]
    assert negatives_of(tmp_path / "datasets", "other")[1] == [105, 106]
    assert counts["other"].dropped["range_min"] == 40 * 4 and counts["bm25"].dropped["range_min"] == 0
    card = (tmp_path / "datasets" / "other" / "README.md").read_text()
    assert "- range_min: 4\n" in card and "- num_negatives: 2\n" in card and "config_name: triplet" in card


# --------------------------------------------------------------------------- sentence-transformers
@pytest.fixture(scope="module")
def st_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny corpus ranked by the tiny bi-encoder and scored by the tiny cross-encoder, both as
    mine_hard_negatives computes them (batch size 1 everywhere: the same bits on both sides)."""
    pytest.importorskip("datasets")
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from tests._model_helpers import tiny_models, tiny_texts

    models = tiny_models(tmp_path_factory)
    corpus = list(dict.fromkeys(tiny_texts(40, seed=21, min_len=4, max_len=12)))[:24]
    queries = list(dict.fromkeys(tiny_texts(12, seed=22, min_len=2, max_len=5)))[:6]
    assert len(corpus) == 24 and len(queries) == 6
    positives = {0: [0], 1: [5], 2: [7, 9], 3: [11], 4: [3], 5: [20]}  # query 2 has two positives
    model = SentenceTransformer(str(models.bi_mean_cos), device="cpu")
    # raw logits, as the score stage stores them (predict's default would be a sigmoid)
    ce_model = CrossEncoder(str(models.cross_encoder), device="cpu", activation_fn=torch.nn.Identity())
    # the ranking mine_hard_negatives retrieves with: normalized query / document embeddings
    q_emb = model.encode_query(queries, batch_size=1, normalize_embeddings=True, convert_to_tensor=True)
    c_emb = model.encode_document(corpus, batch_size=1, normalize_embeddings=True, convert_to_tensor=True)
    sim = model.similarity(q_emb, c_emb).numpy()
    # no two candidates tie (torch.topk orders ties arbitrarily; the CLS/dot tiny model has ties)
    assert all(len(np.unique(row)) == len(row) for row in sim)
    hits: dict[int, list[int]] = {}
    ce: dict[tuple[int, int], float] = {}
    for q in range(len(queries)):
        ranked = [int(i) for i in np.argsort(-sim[q], kind="stable") if int(i) not in positives[q]]
        hits[q] = ranked
        cand = ce_model.predict([(queries[q], corpus[i]) for i in ranked], batch_size=1)
        ce |= {(q, i): float(s) for i, s in zip(ranked, cand, strict=True)}
        pos = ce_model.predict([(queries[q], corpus[i]) for i in positives[q]], batch_size=1)
        ce |= {(q, i): float(s) for i, s in zip(positives[q], pos, strict=True)}
    root = tmp_path_factory.mktemp("st")
    case = build(root, {"bm25": hits}, positives, ce, dict(enumerate(corpus)), dict(enumerate(queries)))
    pairs = [(queries[q], corpus[p]) for q in range(len(queries)) for p in positives[q]]
    return {"case": case, "model": model, "ce": ce_model, "corpus": corpus, "pairs": pairs, "ce_scores": ce}


def _st(st_case: dict[str, Any], **options: Any) -> list[dict[str, Any]]:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    pairs = st_case["pairs"]
    dataset = Dataset.from_dict({"query": [a for a, _ in pairs], "positive": [b for _, b in pairs]})
    filtered = any(k in options for k in ("absolute_margin", "relative_margin", "max_score", "min_score"))
    result = mine_hard_negatives(
        dataset,
        st_case["model"],
        corpus=st_case["corpus"],
        cross_encoder=st_case["ce"] if filtered else None,
        batch_size=1,
        verbose=False,
        **options,
    )
    return result.to_list()


# score thresholds as quantiles of the tiny cross-encoder's logits (they lie within ~3e-4 of
# each other, all distinct): "q50" is the median of every scored pair
ST_CASES = [
    {"range_min": 1, "range_max": 6, "num_negatives": 3},  # no filter: the system's rank order
    {"num_negatives": 4, "range_max": 9},
    {"range_max": 23, "absolute_margin": 0.0, "num_negatives": 3},  # filters: CE order
    {"range_max": 23, "relative_margin": -0.05, "min_score": "q20", "range_min": 2, "num_negatives": 2},
    {"range_max": 23, "max_score": "q50", "num_negatives": 5},
]


def _resolve(options: dict[str, Any], st_case: dict[str, Any]) -> dict[str, Any]:
    values = np.array(list(st_case["ce_scores"].values()))
    return {
        k: float(np.quantile(values, int(v[1:]) / 100)) if isinstance(v, str) else v
        for k, v in options.items()
    }


@pytest.mark.parametrize("options", ST_CASES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_same_selection_as_mine_hard_negatives(
    st_case: dict[str, Any], tmp_path: Path, options: dict[str, Any], fmt: str
) -> None:
    """Our rows equal sentence-transformers' for the same candidates and scores, format by format.

    With a filter, sentence-transformers orders candidates by CE score among the best
    ``range_max + max_positives`` it retrieved: ``range_max = 23`` (the corpus less one positive)
    makes that every candidate, as our window of ``top_k = 23`` hits is."""
    options = _resolve(options, st_case)
    filtered = options["range_max"] == 23
    output_scores = filtered  # without a CE, sentence-transformers' scores are the bi-encoder's
    expected = _st(st_case, output_format=fmt, output_scores=output_scores, **options)
    case: Case = st_case["case"]
    got_path = tmp_path / "out"
    ours = dict(options)
    range_max = ours.pop("range_max")
    run(
        Mining(**ours, range_max=range_max, formats=[fmt], output_scores=output_scores),
        ["bm25"], 23, SEED, case.negatives, case.scores, case.collection, case.queries, case.qrels, got_path,
    )  # fmt: skip
    got = rows(got_path / "bm25" / fmt)
    key = {"labeled-pair": ("query",), "labeled-list": ("query",)}.get(fmt, ("query", "positive"))

    def ordered(table: list[dict[str, Any]]) -> list[dict[str, Any]]:  # ST keeps dataset order, we qid
        return sorted(table, key=lambda r: tuple(str(r[k]) for k in key))

    assert len(got) == len(expected) > 0
    for mine, theirs in zip(ordered(got), ordered(expected), strict=True):
        assert mine.keys() == theirs.keys()
        for column in mine:
            if column.startswith("score"):
                assert np.allclose(mine[column], theirs[column], rtol=0, atol=1e-6), (column, mine, theirs)
            else:
                assert mine[column] == theirs[column], (column, mine, theirs)


def test_random_draws_among_the_same_candidates_as_mine_hard_negatives(
    st_case: dict[str, Any], tmp_path: Path
) -> None:
    options = _resolve({"range_max": 23, "max_score": "q80", "range_min": 1}, st_case)
    pool = _st(st_case, num_negatives=22, **options)  # every eligible candidate (23 - 1), in order
    eligible: dict[tuple[str, str], list[str]] = {}
    for r in pool:
        eligible.setdefault((r["query"], r["positive"]), []).append(r["negative"])
    theirs = _st(st_case, num_negatives=3, sampling_strategy="random", **options)
    case: Case = st_case["case"]
    run(
        Mining(num_negatives=3, sampling_strategy="random", **options),
        ["bm25"], 23, SEED, case.negatives, case.scores, case.collection, case.queries, case.qrels,
        tmp_path / "out",
    )  # fmt: skip
    mine = rows(tmp_path / "out" / "bm25" / "triplet")
    for table in (theirs, mine):
        drawn: dict[tuple[str, str], list[str]] = {}
        for r in table:
            drawn.setdefault((r["query"], r["positive"]), []).append(r["negative"])
        assert set(drawn) == set(eligible)
        for key, negs in drawn.items():
            assert len(negs) == min(3, len(eligible[key])) and set(negs) <= set(eligible[key])
            assert negs == [n for n in eligible[key] if n in negs]  # back in CE order
    assert max(len(e) for e in eligible.values()) > 3  # a real draw somewhere


# --------------------------------------------------------------------------- config, errors, CLI
def _params(tmp_path: Path, case: Case, mining: dict[str, Any]) -> Path:
    data = yaml.safe_load(compose("sample"))
    raw = tmp_path / "raw"
    for key, src in (
        ("collection", case.collection),
        ("queries_train", case.queries),
        ("qrels_train", case.qrels),
    ):
        dst = raw / data["inputs"][key]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    shutil.copytree(case.negatives, tmp_path / "negatives")
    (tmp_path / "mine-scores").mkdir()  # what the mine_scores stage writes (tests/test_mine_scores.py)
    shutil.copy(case.scores, tmp_path / "mine-scores" / "ce-scores.parquet")
    for key in ("datasets", "metrics"):
        data["paths"][key] = str(tmp_path / key)
    data["paths"].update(
        raw=str(raw), negatives=str(tmp_path / "negatives"), mine_scores=str(tmp_path / "mine-scores")
    )
    data["mining"] = mining
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return params


@pytest.mark.parametrize(
    ("mining", "message"),
    [
        ({"range_max": 51}, r"mining\.range_max \(51\) > mine\.top_k \(50\)"),
        (
            {"per_system": {"bm25": {"range_max": 60}}},
            r"mining\.per_system\.bm25\.range_max \(60\) > mine\.top_k",
        ),
        ({"range_min": 50}, r"mining\.range_min \(50\) must be smaller than range_max \(50\)"),
        ({"num_negatives": 10, "range_min": 45}, r"mining\.num_negatives \(10\) > range_max - range_min"),
        ({"sampling_strategy": "best"}, r"mining\.sampling_strategy: .*'top' or 'random'"),
        ({"formats": ["triplets"]}, r"mining\.formats\.0: .*'triplet'"),
        ({"formats": []}, r"mining\.formats: .*at least 1"),
        ({"formats": ["triplet", "triplet"]}, r"mining\.formats: .*more than once"),
        ({"num_negatives": 0}, r"mining\.num_negatives: .*greater than 0"),
        ({"range_min": -1}, r"mining\.range_min: .*greater than or equal to 0"),
        ({"margin": 3}, r"mining\.margin: unknown key"),
        ({"per_system": {"bm25": {"top": 1}}}, r"mining\.per_system\.bm25\.top: unknown key"),
        ({"per_system": {"nope": {}}}, r"mining\.per_system names \['nope'\], not a system"),
        ({"systems": ["bm25", "nope"]}, r"mining\.systems names \['nope'\]"),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, mining: dict[str, Any], message: str) -> None:
    data = yaml.safe_load(compose("sample"))
    data["mining"] = mining
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_config(params)


def test_defaults_resolve_range_max_and_seed() -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / "params.yaml")
    opts = cfg.mining.options("bm25", cfg.mine.top_k, cfg.seed)
    assert (opts.range_max, opts.seed, opts.formats, opts.num_negatives) == (
        cfg.mine.top_k,
        cfg.seed,
        ["triplet"],
        3,
    )
    assert cfg.mining_systems() == ["bm25", *cfg.systems]
    assert Mining(seed=5, per_system={"x": {"seed": 6}}).options("x", 50, 13).seed == 6


def test_bad_input_names_the_file_and_keeps_the_previous_output(multi: Case, tmp_path: Path) -> None:
    case = Case(tmp_path, multi.negatives, multi.scores, multi.collection, multi.queries, multi.qrels)
    case.run(absolute_margin=1.0)
    before = _files(tmp_path / "datasets")
    scores = tmp_path / "scores.parquet"  # the CE score of (3, 22) is missing
    table = pq.read_table(multi.scores)
    keep = ~((table.column("qid").to_numpy() == 3) & (table.column("pid").to_numpy() == 22))
    write_table(scores, table.filter(pa.array(keep)))
    bad = Case(tmp_path, multi.negatives, scores, multi.collection, multi.queries, multi.qrels)
    with pytest.raises(
        DataError, match=r"scores\.parquet: no cross-encoder score for qid 3, pid\(s\) \[22\]"
    ):
        bad.run(absolute_margin=1.0)
    assert _files(tmp_path / "datasets") == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_cli_writes_datasets_metrics_and_provenance(
    multi: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mining = {
        "systems": ["bm25"],
        "formats": ["triplet", "labeled-list"],
        "per_system": {"bm25": {"min_score": 0}},
    }
    params = _params(tmp_path, multi, mining)
    assert main(["--params", str(params)]) == 0
    folder = tmp_path / "datasets" / "bm25"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "labeled-list",
        "provenance.json",
        "triplet",
    ]
    record = json.loads((folder / "provenance.json").read_text())
    assert record["stage"] == "mine_export" and "mining" in record["params"]
    card = (folder / "README.md").read_text()
    assert "## Provenance" in card and "- min_score: 0.0\n" in card
    metrics = json.loads((tmp_path / "metrics" / "mine_export.json").read_text())
    # q3 (2 positives): 21 22 23, q4: 32 31, q5: 41 -> 6 + 2 + 1 triplets, 2 + 1 + 1 lists
    assert metrics["bm25"]["rows"] == {"triplet": 9, "labeled-list": 4}
    assert metrics["bm25"]["dropped"]["min_score"] == 1  # 24 (-1.0)
    (tmp_path / "negatives" / "bm25.parquet").write_bytes(b"PAR1 not parquet")
    with caplog.at_level(logging.ERROR):
        assert main(["--params", str(params)]) == 1
    assert "bm25.parquet" in caplog.text
    assert (folder / "README.md").read_text() == card  # the previous output stays


def test_cli_help_explains_each_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "range_min", "range_max", "num_negatives", "sampling_strategy", "seed", "absolute_margin",
        "relative_margin", "max_score", "min_score", "formats", "output_scores", "systems", "per_system",
        "triplet", "n-tuple", "labeled-pair", "labeled-list", "example: python -m tasks.mine_export",
    ):  # fmt: skip
        assert option in text, option
