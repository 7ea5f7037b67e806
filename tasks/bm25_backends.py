"""BM25 backends behind one small interface: the embedded engine (tantivy) and Elasticsearch.

Both score with Lucene's BM25 as Elasticsearch does (Lucene >= 8, no ``(k1 + 1)`` factor)::

    idf(t)   = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5))
    score    = sum over query tokens t of idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))

with ``N`` the number of passages, ``n(t)`` the passages holding ``t``, ``dl`` the passage's
analysed length stored with Lucene's one-byte norm encoding (exact up to 39 tokens, then
~4 significant bits; tantivy uses the very same table) and ``avgdl`` the mean analysed length.
A token repeated in the query counts once per occurrence (as a ``match`` query does).

The embedded engine is tantivy (Rust, in-process, block-max WAND): its BM25 hard-codes
k1=1.2, b=0.75 and multiplies by ``(1 + k1)``; with those defaults its score divided by 2.2 *is*
the formula above. For other k1/b the engine retrieves the top ``rescore_depth`` candidates by
its own BM25 and they are re-scored exactly with the configured k1/b (exact ranking among those
candidates; see the README). Ties are always broken by pid ascending: the engine is asked for
more hits until the k-th score is strictly above the last one returned.

Analyzers are close to, not identical with, Elasticsearch's: the embedded ``english`` splits on
non-alphanumerics ("don't" -> "don", "t"; "3.5" -> "3", "5"), drops Lucene's English stopwords
and uses the Snowball English stemmer (Elasticsearch's ``english``: standard tokenizer,
possessive filter, Porter stemmer). Statistics count every indexed passage (``N``) where
Lucene counts passages with at least one token; they differ only for passages that analyse
to nothing.

Backends: :func:`build_embedded` (here) or ``tasks.bm25_elastic.build_elastic`` write an index,
:func:`open_backend` opens it and
returns a :class:`Searcher` whose ``search(texts, k)`` gives, per query, ``[(pid, score), ...]``
sorted by score descending then pid ascending. A query that analyses to no token gets ``[]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.config import Bm25
from tasks.io import DataError, file_digest, read_json, write_json
from tasks.records import Passage

log = logging.getLogger(__name__)

BUILTIN_K1 = 1.2  # tantivy's hard-coded BM25 constants
BUILTIN_B = 0.75
MANIFEST = "manifest.json"
PIDS = "pids.npy"
TANTIVY_DIR = "tantivy"
FORMAT = 1

Ranked = list[tuple[int, float]]


class Searcher(Protocol):
    def search(self, texts: Sequence[str], k: int) -> list[Ranked]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- Lucene helpers
def _long_to_int4(i: int) -> int:
    bits = i.bit_length()
    if bits < 4:
        return i
    shift = bits - 4
    return ((i >> shift) & 0x07) | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits, shift = i & 0x07, (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_FREE = 255 - _long_to_int4(2**31 - 1)  # Lucene SmallFloat.NUM_FREE_VALUES = 24


def lucene_length(dl: int) -> int:
    """The document length Lucene's BM25 sees: ``byte4ToInt(intToByte4(dl))`` (SmallFloat)."""
    return dl if dl < _FREE else _FREE + _int4_to_long(_long_to_int4(dl - _FREE))


def lucene_idf(n_docs: int, df: int) -> float:
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


def needs_rescore(params: Bm25) -> bool:
    """True when k1/b differ from the engine's built-in constants (exact re-scoring needed)."""
    return not (math.isclose(params.k1, BUILTIN_K1) and math.isclose(params.b, BUILTIN_B))


def sort_ranked(ranked: Iterable[tuple[int, float]], k: int) -> Ranked:
    """Round scores to float32 (the stored precision), then sort by score descending, pid
    ascending, and cut to ``k``: two scores equal once stored are ordered by pid."""
    pairs = list(ranked)
    if not pairs:
        return []
    pids = np.fromiter((p for p, _ in pairs), dtype=np.int64, count=len(pairs))
    scores = np.fromiter((s for _, s in pairs), dtype=np.float64, count=len(pairs)).astype(np.float32)
    order = np.lexsort((pids, -scores))[:k]
    return list(zip(pids[order].tolist(), scores[order].astype(np.float64).tolist(), strict=True))


# --------------------------------------------------------------------------- embedded (tantivy)
def make_analyzer(name: str) -> Any:
    """english = word tokens, lowercase, English stopwords, English (Snowball) stemmer;
    standard = word tokens, lowercase. The same analyzer serves indexing and queries."""
    import tantivy

    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.lowercase())
    if name == "english":
        builder = builder.filter(tantivy.Filter.stopword("english")).filter(tantivy.Filter.stemmer("english"))
    elif name != "standard":
        raise ValueError(f"bm25.analyzer: unknown analyzer {name!r} (english | standard)")
    return builder.build()


def _schema(stored: bool) -> Any:
    import tantivy

    sb = tantivy.SchemaBuilder()
    sb.add_integer_field("pid", stored=False, indexed=False, fast=True)
    sb.add_text_field("body", stored=stored, tokenizer_name="bm25", index_option="freq")
    return sb.build()


def build_embedded(out_dir: Path, passages: Iterable[Passage], params: Bm25, progress: Any = None) -> dict:
    """Index ``passages`` into ``out_dir`` (which must exist and be empty); returns stats.

    Passage text is stored, and the analysed token total counted, only when k1/b need exact
    re-scoring: with the defaults the index stays lean and fast to build.
    """
    import tantivy

    rescore = needs_rescore(params)
    analyzer = make_analyzer(params.analyzer)
    index = tantivy.Index(_schema(stored=rescore), path=str(out_dir), reuse=False)
    index.register_tokenizer("bm25", analyzer)
    heap = params.index_heap_mb * 1_000_000 * params.index_threads
    writer = index.writer(heap_size=heap, num_threads=params.index_threads)
    total_tokens = 0
    pids: list[int] = []
    try:
        for p in passages:
            writer.add_document(tantivy.Document(pid=p.pid, body=p.text))
            if rescore:
                total_tokens += len(analyzer.analyze(p.text))
            pids.append(p.pid)
            if progress is not None:
                progress.update(1)
        writer.commit()
    except BaseException:
        # stop the engine's indexing threads before the caller removes the staging directory
        writer.rollback()
        raise
    finally:
        writer.wait_merging_threads()
    canonicalize_segments(out_dir)
    return {"pids": pids, "total_tokens": total_tokens if rescore else None, "stored_text": rescore}


def canonicalize_segments(index_dir: Path) -> None:
    """Give tantivy's segments content-derived names, so the same input gives the same bytes.

    tantivy names each segment with a random UUID (in the file names, ``meta.json`` and
    ``.managed.json``); the segment files themselves are identical from run to run when one
    thread indexes the documents in order. Renaming each segment to a UUID made from the hash
    of its files, and listing files and segments in a sorted order, makes the whole index
    directory byte-identical for identical input and ``bm25.index_threads: 1``.
    """
    meta_path = index_dir / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    renames: dict[str, str] = {}
    for seg in meta["segments"]:
        old = seg["segment_id"].replace("-", "")
        digest = hashlib.sha256()
        for f in sorted(index_dir.glob(f"{old}.*")):
            digest.update(f.suffix.encode() + b"\0" + bytes.fromhex(file_digest(f, "sha256")))
        seg_id = uuid.UUID(bytes=digest.digest()[:16], version=4)
        renames[old] = seg_id.hex
        seg["segment_id"] = str(seg_id)
    for old, new in renames.items():
        for f in index_dir.glob(f"{old}.*"):
            f.rename(index_dir / f"{new}{f.suffix}")
    meta["segments"].sort(key=lambda seg: seg["segment_id"])
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    managed = index_dir / ".managed.json"
    if managed.exists():
        names = []
        for name in json.loads(managed.read_text(encoding="utf-8")):
            stem, dot, ext = name.partition(".")
            names.append(renames.get(stem, stem) + dot + ext)
        names.sort()
        managed.write_text(json.dumps(names), encoding="utf-8")


class EmbeddedSearcher:
    """Searches a tantivy index built by :func:`build_embedded`. Not shared across processes:
    each worker process opens its own (cheap: the index is memory-mapped)."""

    def __init__(self, index_dir: Path, params: Bm25, manifest: dict) -> None:
        import tantivy

        self._t = tantivy
        self.params = params
        self.index = tantivy.Index.open(str(index_dir))
        self.analyzer = make_analyzer(params.analyzer)
        self.index.register_tokenizer("bm25", self.analyzer)
        self.searcher: Any = self.index.searcher()
        self.schema = self.index.schema
        self.n_docs = self.searcher.num_docs
        self.rescore = needs_rescore(params)
        if self.rescore:
            if not manifest.get("stored_text") or not manifest.get("total_tokens"):
                raise DataError(
                    f"{index_dir}: built for k1={BUILTIN_K1}, b={BUILTIN_B} without stored text; "
                    f"k1={params.k1}, b={params.b} need exact re-scoring: "
                    "rebuild it (python -m tasks.bm25_index)"
                )
            self.avgdl = manifest["total_tokens"] / self.n_docs
        self._idf: dict[str, float] = {}

    def close(self) -> None:
        self.searcher = None

    def tokens(self, text: str) -> list[str]:
        return self.analyzer.analyze(text)

    def _query(self, tokens: list[str]) -> Any:
        t = self._t
        clauses = [
            (t.Occur.Should, t.Query.term_query(self.schema, "body", tok, index_option="freq"))
            for tok in tokens
        ]
        return t.Query.boolean_query(clauses)

    def _engine_top(self, query: Any, k: int) -> list[tuple[float, Any]]:
        """At least the top ``k`` by the engine's score, extended past every tie at rank k."""
        depth = k + 8
        while True:
            hits = self.searcher.search(query, limit=depth, count=False).hits
            if len(hits) < depth or hits[-1][0] < hits[k - 1][0]:
                return hits
            depth *= 4

    def search(self, texts: Sequence[str], k: int) -> list[Ranked]:
        return [self.search_one(text, k) for text in texts]

    def search_one(self, text: str, k: int) -> Ranked:
        tokens = self.tokens(text)
        if not tokens or k <= 0:
            return []
        query = self._query(tokens)
        if not self.rescore:
            hits = self._engine_top(query, k)
            pids: list[Any] = self.searcher.fast_field_values("pid", [a for _, a in hits])
            scale = 1.0 + BUILTIN_K1
            return sort_ranked(zip(pids, (s / scale for s, _ in hits), strict=True), k)
        hits = self._engine_top(query, max(k, self.params.rescore_depth))
        addrs = [a for _, a in hits]
        pids = list(self.searcher.fast_field_values("pid", addrs))
        qtf = Counter(tokens)
        idf = {tok: self._idf_of(tok) for tok in qtf}
        k1, b = self.params.k1, self.params.b
        out = []
        for addr, pid in zip(addrs, pids, strict=True):
            doc_tokens = self.tokens(self.searcher.doc(addr)["body"][0])
            tf = Counter(doc_tokens)
            norm = k1 * (1.0 - b + b * lucene_length(len(doc_tokens)) / self.avgdl)
            score = sum(n * idf[tok] * tf[tok] / (tf[tok] + norm) for tok, n in qtf.items() if tf[tok])
            out.append((int(pid), score))
        return sort_ranked(out, k)

    def _idf_of(self, tok: str) -> float:
        if tok not in self._idf:
            self._idf[tok] = lucene_idf(self.n_docs, self.searcher.doc_freq("body", tok))
        return self._idf[tok]


# --------------------------------------------------------------------------- factory
def write_manifest(out_dir: Path, backend: str, params: Bm25, count: int, extra: dict) -> None:
    write_json(
        out_dir / MANIFEST,
        {
            "format": FORMAT,
            "backend": backend,
            "analyzer": params.analyzer,
            "k1": params.k1,
            "b": params.b,
            "passages": count,
            **extra,
        },
    )


def read_manifest(index_dir: Path) -> dict:
    path = index_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no BM25 index here; run 'python -m tasks.bm25_index' first")
    return read_json(path)


def load_pids(index_dir: Path) -> np.ndarray:
    """Sorted pids of the indexed collection (for checking qrels against it)."""
    return np.load(index_dir / PIDS)


def open_backend(index_dir: Path, params: Bm25) -> Searcher:
    """Open the index at ``index_dir`` with ``params``; errors if it was built differently."""
    manifest = read_manifest(index_dir)
    if manifest.get("backend") != params.backend:
        raise DataError(
            f"{index_dir}: built by backend {manifest.get('backend')!r}, params ask for "
            f"{params.backend!r}; rebuild it (python -m tasks.bm25_index)"
        )
    if manifest.get("analyzer") != params.analyzer:
        raise DataError(
            f"{index_dir}: built with analyzer {manifest.get('analyzer')!r}, params ask for "
            f"{params.analyzer!r}; rebuild it (python -m tasks.bm25_index)"
        )
    if params.backend == "embedded":
        return EmbeddedSearcher(index_dir / TANTIVY_DIR, params, manifest)
    from tasks.bm25_elastic import ElasticSearcher

    return ElasticSearcher(params, manifest)
