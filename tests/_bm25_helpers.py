"""Fixtures for the BM25 tests: a tiny English-like corpus and a by-hand Lucene BM25."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

WORDS = (
    "river bank money loan water fish boat city capital france paris london bridge tower music "
    "guitar piano song history war king queen castle science physics energy atom planet star "
    "moon sun light speed car engine fuel road train station ticket price market stock trade"
).split()
FILLER = "the a of and is in to for on with as by at".split()  # English stopwords
# words the English stemmer leaves unchanged, so tests can tokenise by hand
STABLE = (
    "river bank money loan water fish boat london tower music guitar piano song war king queen atom "
    "planet star moon sun light speed car fuel road train station ticket price market stock trade"
).split()


def write_tsv(path: Path, rows: list[tuple[object, str]]) -> Path:
    path.write_text("".join(f"{i}\t{t}\n" for i, t in rows), encoding="utf-8")
    return path


def synthetic(n_passages: int = 300, n_queries: int = 40, seed: int = 7) -> tuple[list, list, list]:
    """Passages, train queries and qrels (one positive per query, a passage built from the query)."""
    rng = random.Random(seed)
    passages = []
    for pid in range(n_passages):
        words = rng.choices(WORDS, k=rng.randint(4, 14)) + rng.choices(FILLER, k=rng.randint(0, 6))
        rng.shuffle(words)
        passages.append((pid * 3 + 11, " ".join(words)))
    queries, qrels = [], []
    for i in range(n_queries):
        qid = 1000 + i * 7
        pid, text = passages[rng.randrange(n_passages)]
        queries.append((qid, "what is the " + " ".join(rng.sample(text.split(), min(3, len(text.split()))))))
        qrels.append((qid, pid))
    return passages, queries, qrels


def lucene_bm25(query_tokens: list[str], docs: dict[int, list[str]], k1: float, b: float) -> dict[int, float]:
    """Elasticsearch's BM25 computed from scratch (exact lengths: the test docs are < 24 tokens)."""
    n = len(docs)
    avgdl = sum(len(t) for t in docs.values()) / n
    df = Counter(tok for toks in docs.values() for tok in set(toks))
    out = {}
    for pid, toks in docs.items():
        tf = Counter(toks)
        score = 0.0
        for tok in query_tokens:  # a repeated query token counts each time
            if tf[tok]:
                idf = math.log(1 + (n - df[tok] + 0.5) / (df[tok] + 0.5))
                score += idf * tf[tok] / (tf[tok] + k1 * (1 - b + b * len(toks) / avgdl))
        if score > 0:
            out[pid] = score
    return out
