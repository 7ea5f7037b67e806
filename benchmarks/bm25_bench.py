"""BM25 engines side by side: the embedded backend (tantivy, via this project's stages) vs bm25s.

Generates a synthetic corpus (Zipfian vocabulary, ~56 words per passage) and queries, then runs
each engine in its own subprocess (so peak RSS is its own, worker processes included) and prints
indexing passages/s, top-50 queries/s and peak RSS, with ratios. It also times the embedded
backend on a second, smaller corpus to fit how query cost grows with the collection size, and
projects the time to mine all MS MARCO training queries over the full collection.

    .venv/bin/python benchmarks/bm25_bench.py                 # 1M passages, 10k queries
    .venv/bin/python benchmarks/bm25_bench.py --n 200000      # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `tasks` importable
MSMARCO_PASSAGES = 8_841_823
MSMARCO_TRAIN_QUERIES = 502_939


def _word(i: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = ""
    i += 26 * 26  # at least three letters
    while i:
        i, r = divmod(i, 26)
        out += letters[r]
    return out


def generate(out: Path, n: int, n_queries: int, vocab: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    words = np.array([_word(i) for i in range(vocab)])
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1) ** 1.05)
    cdf /= cdf[-1]
    tail = np.cumsum(1.0 / np.arange(51, vocab + 1) ** 1.05)
    tail /= tail[-1]
    coll, queries = out / "collection.tsv", out / "queries.tsv"
    with open(coll, "w", encoding="utf-8") as fh:
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            lens = rng.integers(40, 73, size=m)  # mean 56
            ids = np.searchsorted(cdf, rng.random(int(lens.sum())))
            toks = words[ids]
            ends = np.cumsum(lens)
            for j in range(m):
                fh.write(f"{start + j}\t{' '.join(toks[ends[j] - lens[j] : ends[j]])}\n")
    with open(queries, "w", encoding="utf-8") as fh:
        for q in range(n_queries):
            # query words follow the same Zipf law minus its 50 most frequent words (the part an
            # analyzer's stopword list would drop from real queries)
            ids = 50 + np.searchsorted(tail, rng.random(int(rng.integers(3, 8))))
            fh.write(f"{q}\t{' '.join(words[ids])}\n")
    return coll, queries


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def worker_embedded(coll: Path, queries: Path, work: Path, threads: int, k: int, index_threads: int) -> dict:
    from tasks.bm25_index import run as build
    from tasks.bm25_mine import search_all
    from tasks.config import Bm25
    from tasks.records import read_queries

    params = Bm25(threads=threads, index_threads=index_threads)
    t0 = time.perf_counter()
    stats = build(coll, work / "idx", params)
    t1 = time.perf_counter()
    texts = [q.text for q in read_queries(queries)]
    t2 = time.perf_counter()
    res = search_all(work / "idx", params, texts, k, "embedded")
    t3 = time.perf_counter()
    return {
        "passages": stats["passages"],
        "index_s": t1 - t0,
        "query_s": t3 - t2,
        "queries": len(texts),
        "hits": sum(map(len, res)),
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_bm25s(coll: Path, queries: Path, work: Path, threads: int, k: int, index_threads: int) -> dict:
    import bm25s

    t0 = time.perf_counter()
    with open(coll, encoding="utf-8") as fh:
        texts = [line.rstrip("\n").partition("\t")[2] for line in fh]
    retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    t1 = time.perf_counter()
    with open(queries, encoding="utf-8") as fh:
        qtexts = [line.rstrip("\n").partition("\t")[2] for line in fh]
    t2 = time.perf_counter()
    qtok = bm25s.tokenize(qtexts, stopwords="en", show_progress=False)
    docs, _ = retriever.retrieve(qtok, k=k, n_threads=threads, show_progress=False)
    t3 = time.perf_counter()
    return {
        "passages": len(texts),
        "index_s": t1 - t0,
        "query_s": t3 - t2,
        "queries": len(qtexts),
        "hits": int(docs.size),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child(engine: str, coll: Path, queries: Path, threads: int, k: int, index_threads: int) -> dict:
    with tempfile.TemporaryDirectory(dir=coll.parent) as work:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            engine,
            "--coll",
            str(coll),
            "--queries",
            str(queries),
            "--work",
            work,
            "--threads",
            str(threads),
            "--k",
            str(k),
            "--index-threads",
            str(index_threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise RuntimeError(f"{engine} worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="passages (default 1M)")
    ap.add_argument("--queries-n", type=int, default=10_000)
    ap.add_argument("--vocab", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="query workers (both engines)")
    ap.add_argument(
        "--index-threads",
        type=int,
        default=2,
        help="embedded indexing threads (bm25.index_threads defaults to 1: a byte-identical index)",
    )
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--skip-bm25s", action="store_true")
    ap.add_argument("--worker", choices=["embedded", "bm25s"], help=argparse.SUPPRESS)
    ap.add_argument("--coll", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--queries", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = worker_embedded if args.worker == "embedded" else worker_bm25s
        sys.stdout.write(
            json.dumps(fn(args.coll, args.queries, args.work, args.threads, args.k, args.index_threads))
            + "\n"
        )
        return 0

    with tempfile.TemporaryDirectory(prefix="bm25bench-") as tmp:
        small_n = max(args.n // 4, 1000)
        sizes = {"main": args.n, "small": small_n}
        results: dict[str, dict] = {}
        for tag, n in sizes.items():
            d = Path(tmp) / tag
            d.mkdir()
            t = time.perf_counter()
            coll, queries = generate(d, n, args.queries_n, args.vocab, args.seed)
            sys.stderr.write(
                f"generated {n} passages + {args.queries_n} queries in {time.perf_counter() - t:.0f} s\n"
            )
            results[f"embedded@{tag}"] = _child(
                "embedded", coll, queries, args.threads, args.k, args.index_threads
            )
            sys.stderr.write(f"embedded@{tag}: {results[f'embedded@{tag}']}\n")
            if tag == "main" and not args.skip_bm25s:
                results["bm25s"] = _child("bm25s", coll, queries, args.threads, args.k, args.index_threads)
                sys.stderr.write(f"bm25s: {results['bm25s']}\n")
    emb = results["embedded@main"]
    rows = [("embedded (tantivy)", emb)] + ([("bm25s", results["bm25s"])] if "bm25s" in results else [])
    print(
        f"\nBM25, {args.n:,} synthetic passages (~56 words, Zipf vocab {args.vocab:,}), "
        f"{args.queries_n:,} queries, top-{args.k}, {args.threads} query workers, "
        f"{args.index_threads} embedded indexing thread(s)\n"
    )
    print(f"| engine | index passages/s | top-{args.k} queries/s | peak RSS (MB) |")
    print("|---|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['passages'] / r['index_s']:,.0f} | {r['queries'] / r['query_s']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} |"
        )
    if "bm25s" in results:
        b = results["bm25s"]
        print(
            f"| ratio embedded/bm25s | {b['index_s'] / emb['index_s']:.1f}x | "
            f"{(emb['queries'] / emb['query_s']) / (b['queries'] / b['query_s']):.1f}x | "
            f"{emb['peak_rss_mb'] / b['peak_rss_mb']:.2f}x |"
        )
    # projection: seconds per query t(N) = a + c*N, fitted through the two measured sizes. The
    # size-dependent part is taken as linear in N (posting lists grow linearly); block-max WAND
    # usually grows slower, so this errs on the slow side.
    small = results["embedded@small"]
    t_main, t_small = emb["query_s"] / emb["queries"], small["query_s"] / small["queries"]
    c = max((t_main - t_small) / (args.n - small_n), 0.0)
    a = t_main - c * args.n
    t_full = a + c * MSMARCO_PASSAGES
    minutes = MSMARCO_TRAIN_QUERIES * t_full / 60
    index_min = MSMARCO_PASSAGES / (emb["passages"] / emb["index_s"]) / 60
    print(
        f"\nprojection (t(N) = a + c*N per query, fitted on {small_n:,} and {args.n:,} passages: "
        f"{1 / t_small:,.0f} and {1 / t_main:,.0f} q/s; a={a * 1e3:.2f} ms, "
        f"c={c * 1e9:.3f} ms per 1M passages): "
        f"{MSMARCO_PASSAGES:,} passages -> {1 / t_full:,.0f} q/s, {MSMARCO_TRAIN_QUERIES:,} train queries "
        f"top-{args.k} -> {minutes:.0f} min mining + {index_min:.0f} min indexing on {args.threads} workers"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
