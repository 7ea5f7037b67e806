"""Deterministic generated corpora in the formats ``tasks.ingest`` reads, for tests and benchmarks.

- :func:`write_beir_sample`: a BEIR folder (``corpus.jsonl`` with titles, ``queries.jsonl``,
  ``qrels/train.tsv`` with score 1, ``qrels/test.tsv`` graded 0/1/2) with string ids
  ``doc-<pid>`` / ``q-<n>``.
- :func:`write_hf_pairs_sample`: the same corpus as Hugging Face (query, positive) pairs
  (``train.jsonl``, ``test.jsonl``) plus an extra ``corpus.jsonl`` (column ``text``).

The texts come from :mod:`tasks.sample`'s generator (entities with three passages on different
aspects; a query names the entity and the aspect), so BM25 finds most positives while the
entity's other passages are hard negatives. Graded test judgements: 2 for the passage the query
was written from, 1 for the entity's other passages, 0 for two passages of the same aspect
about other entities. Same arguments, same bytes.

    python -m tasks.beir_sample /tmp/beir-sample --docs 1200
    python -m tasks.beir_sample /tmp/hf-pairs --format hf
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from tasks.io import atomic_dir, write_text_atomic
from tasks.sample import Doc, generate_docs, query_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BeirSample:
    """One generated corpus: docs in corpus order, queries in id order, judgements per split."""

    docs: list[tuple[str, str, str]]  # (_id, title, text)
    queries: list[tuple[str, str]]  # (_id, text)
    qrels: dict[str, list[tuple[str, str, int]]]  # split -> (query-id, corpus-id, score), sorted


def doc_id(doc: Doc) -> str:
    return f"doc-{doc.pid:05d}"


def build(docs: int = 1200, train_queries: int = 300, test_queries: int = 60, seed: int = 13) -> BeirSample:
    """The sample as records. Pure function of its arguments."""
    if docs < 3 or train_queries < 1 or test_queries < 1:
        raise ValueError("docs must be >= 3 and train_queries, test_queries >= 1")
    if train_queries + test_queries > docs:
        raise ValueError(f"{train_queries + test_queries} queries need as many docs; docs is {docs}")
    generated = generate_docs(-(-docs // 3), seed)[:docs]
    rng = random.Random(seed + 1)
    by_entity: dict[int, list[Doc]] = {}
    by_aspect: dict[str, list[Doc]] = {}
    for d in generated:
        by_entity.setdefault(d.entity, []).append(d)
        by_aspect.setdefault(d.aspect, []).append(d)
    targets = rng.sample(generated, train_queries + test_queries)
    splits = ["train"] * train_queries + ["test"] * test_queries
    rng.shuffle(splits)
    queries: list[tuple[str, str]] = []
    qrels: dict[str, list[tuple[str, str, int]]] = {"train": [], "test": []}
    for i, (target, split) in enumerate(zip(targets, splits, strict=True)):
        qid = f"q-{i:04d}"
        queries.append((qid, query_for(target, rng)))
        same_entity = [o for o in by_entity[target.entity] if o.pid != target.pid]
        if split == "train":
            judged = {doc_id(target): 1}
            if same_entity and rng.random() < 0.05:  # a few queries with two positives
                judged[doc_id(rng.choice(same_entity))] = 1
        else:
            judged = {doc_id(target): 2} | {doc_id(o): 1 for o in same_entity}
            others = [o for o in by_aspect[target.aspect] if o.entity != target.entity]
            judged |= {doc_id(o): 0 for o in rng.sample(others, min(2, len(others)))}
        qrels[split] += [(qid, did, score) for did, score in sorted(judged.items())]
    return BeirSample([(doc_id(d), d.name, d.text) for d in generated], queries, qrels)


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_beir_sample(
    dest: Path, docs: int = 1200, train_queries: int = 300, test_queries: int = 60, seed: int = 13
) -> BeirSample:
    """Write the BEIR folder ``dest`` (replaced as a whole); returns what it holds."""
    sample = build(docs, train_queries, test_queries, seed)
    files = {
        "corpus.jsonl": _jsonl([{"_id": i, "title": t, "text": x} for i, t, x in sample.docs]),
        "queries.jsonl": _jsonl([{"_id": i, "text": x} for i, x in sample.queries]),
    }
    for split, rows in sample.qrels.items():
        files[f"qrels/{split}.tsv"] = "query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{s}\n" for q, d, s in rows
        )
    _write(Path(dest), files)
    return sample


def write_hf_pairs_sample(
    dest: Path, docs: int = 1200, train_queries: int = 300, test_queries: int = 60, seed: int = 13
) -> BeirSample:
    """Write ``dest`` as hf pairs: ``train.jsonl`` (every train positive), ``test.jsonl`` (each test
    query with its grade-2 passage), columns ``query`` / ``positive``; ``corpus.jsonl`` (``text``):
    every passage, positives included (ingest deduplicates them by text)."""
    sample = build(docs, train_queries, test_queries, seed)
    text_of = {i: x for i, _, x in sample.docs}
    query_of = dict(sample.queries)
    keep = {"train": 1, "test": 2}  # the lowest grade that makes a pair
    files = {
        f"{split}.jsonl": _jsonl(
            [{"query": query_of[q], "positive": text_of[d]} for q, d, s in rows if s >= keep[split]]
        )
        for split, rows in sample.qrels.items()
    }
    files["corpus.jsonl"] = _jsonl([{"text": x} for _, _, x in sample.docs])
    _write(Path(dest), files)
    return sample


def _write(dest: Path, files: dict[str, str]) -> None:
    with atomic_dir(dest) as stage:
        for name in sorted(files):
            with write_text_atomic(stage / name, gz=False) as fh:
                fh.write(files[name])
    log.info("%s: %s", dest, ", ".join(sorted(files)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.beir_sample",
        description="Write a deterministic generated corpus that tasks.ingest reads: a BEIR folder "
        "(--format beir) or Hugging Face (query, positive) pairs plus an extra corpus (--format hf).",
        epilog="example: python -m tasks.beir_sample /tmp/beir-sample --docs 1200 --train-queries 300",
    )
    parser.add_argument("dest", type=Path, help="folder to write (replaced as a whole)")
    parser.add_argument("--format", choices=("beir", "hf"), default="beir")
    parser.add_argument("--docs", type=int, default=1200, help="passages (default 1200)")
    parser.add_argument("--train-queries", type=int, default=300, help="queries of split train")
    parser.add_argument("--test-queries", type=int, default=60, help="queries of split test (graded)")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write = write_beir_sample if args.format == "beir" else write_hf_pairs_sample
    try:
        write(args.dest, args.docs, args.train_queries, args.test_queries, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
