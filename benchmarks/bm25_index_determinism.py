"""Check: is the embedded BM25 index byte-identical from run to run, and up to what size?

Builds the same synthetic corpus (40-72 random words per passage, fixed seed) ``--runs`` times
with the stage's indexer (``tasks.bm25_backends.build_embedded``, one thread) and prints, per
run, the number of segments, their document counts and a digest of every file in the index
directory. tantivy flushes a segment whenever the indexer's memory budget
(``bm25.index_heap_mb``) is full; from 8 segments its merge policy merges them in background
threads, and the merged segments then differ in bytes between runs (search results do not).

    python benchmarks/bm25_index_determinism.py --passages 600000 --heap-mb 40   # 7 segments
    python benchmarks/bm25_index_determinism.py --passages 600000 --heap-mb 20   # merges
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tasks.bm25_backends import build_embedded
from tasks.config import Bm25
from tasks.records import Passage


def digest(index_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(index_dir.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=600_000)
    parser.add_argument("--heap-mb", type=int, default=40, help="bm25.index_heap_mb (default 40)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(50_000)]
    texts = [" ".join(rng.choices(words, k=rng.randint(40, 72))) for _ in range(args.passages)]
    params = Bm25(index_heap_mb=args.heap_mb, index_threads=1)
    digests = set()
    for run in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="bm25-determinism-"))
        try:
            start = time.perf_counter()
            build_embedded(out, (Passage(i, t) for i, t in enumerate(texts)), params)
            seconds = time.perf_counter() - start
            docs = sorted(s["max_doc"] for s in json.loads((out / "meta.json").read_text())["segments"])
            digests.add(digest(out))
            print(f"run {run}: {len(docs)} segments {docs}, digest {digest(out)}, {seconds:.1f} s")
        finally:
            shutil.rmtree(out, ignore_errors=True)
    verdict = "byte-identical" if len(digests) == 1 else f"{len(digests)} different indexes"
    print(f"{args.passages} passages, index_heap_mb {args.heap_mb}, {args.runs} runs: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
