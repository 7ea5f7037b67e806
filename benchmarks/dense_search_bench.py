"""Benchmark: ``tasks.dense_mine.exact_search`` vs FAISS ``IndexFlatIP`` on the same corpus.

Question: is the stage's exact search (corpus prepared once per block, every query chunk
streamed past it, float64 rescoring of the candidates) at least as fast as one FAISS
``IndexFlatIP`` over the whole corpus, on the same data and the same memory budget, and are the
ids the same?

The corpus is synthetic (seeded standard normal, ``--dim`` wide), written as float16 shards of
``--shard`` rows with a manifest, the way ``tasks.encode`` writes them; the queries likewise.
Each method runs in its own child process (so its peak RSS is its own) and is timed from
reading the shards to the last result, both sides converting float16 -> float32 and, for the
``cos`` system, L2-normalising:

- ``ours``: ``exact_search(..., memory_mb=--memory-mb, threads=--threads)``; with the default
  budget the whole float32 corpus is one resident block, as FAISS holds it.
- ``faiss``: ``IndexFlatIP``, shards added one by one, one ``search`` call for all queries
  (``faiss.omp_set_num_threads(--threads)``, the BLAS threshold ``tasks.dense_mine`` sets).

"identical ids" compares the ranked pid lists row by row. Where they differ, each differing row is
checked against a float64 brute force: FAISS ranks by its float32 scores (ties in no set order),
``exact_search`` by the float64 score rounded to float32, ties by pid.

    .venv/bin/python benchmarks/dense_search_bench.py --corpus 1000000 --queries 50000
    .venv/bin/python benchmarks/dense_search_bench.py --corpus 100000 --queries 5000   # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("ours", "faiss")
SYSTEMS = ("dot", "cos")


def build(work: Path, n: int, nq: int, dim: int, shard: int, seed: int) -> None:
    """Corpus shards + manifest (``tasks.encode`` layout) and the queries, float16, seeded."""
    if (work / "manifest.json").exists():
        m = json.loads((work / "manifest.json").read_text())
        if (m["parts"]["corpus"]["rows"], m["dim"], m["seed"], m["queries"]) == (n, dim, seed, nq):
            return
    rng = np.random.default_rng(seed)
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, start in enumerate(range(0, n, shard)):
        rows = min(shard, n - start)
        np.save(
            work / f"corpus/{i:05d}.npy",
            rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16),
        )
        entries.append({"file": f"corpus/{i:05d}.npy", "rows": rows})
    np.save(work / "corpus/ids.npy", np.arange(n, dtype=np.int64) * 7 + 3)  # pids are not row numbers
    np.save(work / "queries.npy", rng.standard_normal((nq, dim), dtype=np.float32).astype(np.float16))
    manifest = {
        "dim": dim, "seed": seed, "queries": nq,
        "parts": {"corpus": {"rows": n, "ids": "corpus/ids.npy", "shards": entries}},
    }  # fmt: skip
    (work / "manifest.json").write_text(json.dumps(manifest))


def child(method: str, system: str, work: Path, args: argparse.Namespace) -> dict[str, float]:
    from tasks.encode import load_part

    normalize = system == "cos"
    q = np.load(work / "queries.npy")
    t0, c0 = time.perf_counter(), time.process_time()
    corpus = load_part(work, "corpus")
    if method == "ours":
        from tasks.dense_mine import exact_search

        scores, pids = exact_search(
            q, corpus, args.k, normalize, args.query_chunk, memory_mb=args.memory_mb, threads=args.threads
        )
    else:
        from tasks.dense_mine import _faiss, _prep

        faiss = _faiss()
        faiss.omp_set_num_threads(args.threads)
        index = faiss.IndexFlatIP(corpus.dim)
        for _, vec in corpus.iter_shards():
            index.add(_prep(vec, normalize))
        scores, idx = index.search(_prep(q, normalize), args.k)
        pids = corpus.ids[idx]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.save(work / f"{method}-{system}-pids.npy", pids)
    np.save(work / f"{method}-{system}-scores.npy", scores)
    # VmHWM: this process's own peak (ru_maxrss can carry the forking parent's value across exec)
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "qps": len(q) / seconds,
        "peak_rss_mib": int(hwm.split()[1]) / 1024,
    }


def check_ids(work: Path, system: str, k: int, limit: int = 64) -> str:
    """'yes', or how many rows differ and, in those, which side agrees with float64."""
    from tasks.dense_mine import _prep
    from tasks.encode import load_part

    ours, peer = (np.load(work / f"{m}-{system}-pids.npy") for m in METHODS)
    differ = np.flatnonzero(np.any(ours != peer, axis=1))
    if not len(differ):
        return "yes"
    same_sets = sum(set(ours[r]) == set(peer[r]) for r in differ)
    corpus = load_part(work, "corpus")
    normalize = system == "cos"
    rows = differ[:limit]
    q = _prep(np.load(work / "queries.npy")[rows], normalize).astype(np.float64)
    truth = np.empty((len(rows), k), dtype=np.int64)
    for a in range(0, len(rows), 16):  # 16 rows x the corpus in float64 at a time
        exact = [_prep(v, normalize).astype(np.float64) @ q[a : a + 16].T for _, v in corpus.iter_shards()]
        score = np.concatenate(exact).T.astype(np.float32)
        ids = np.broadcast_to(corpus.ids, score.shape)
        truth[a : a + 16] = np.take_along_axis(ids, np.lexsort((ids, -score), axis=-1)[:, :k], 1)
    ours_ok = int(np.all(truth == ours[rows], axis=1).sum())
    peer_ok = int(np.all(truth == peer[rows], axis=1).sum())
    return (
        f"no ({len(differ)} of {len(ours):,} rows differ, {same_sets} of them only in order; of "
        f"{len(rows)} checked, float64 agrees with ours in {ours_ok}, with faiss in {peer_ok})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=int, default=1_000_000, help="passages")
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--shard", type=int, default=100_000, help="rows per float16 shard (msmarco profile)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--query-chunk", type=int, default=1024, help="search.query_chunk")
    parser.add_argument("--memory-mb", type=int, default=4096, help="search.memory_mb (ours)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds (methods interleaved); the fastest counts"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keeps the corpus for the next run")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.child:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
        sys.stdout.write(json.dumps(child(args.child, args.system, args.work, args)) + "\n")
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="dense-bench-"))
    t = time.perf_counter()
    build(work, args.corpus, args.queries, args.dim, args.shard, args.seed)
    built = time.perf_counter() - t
    load = os.getloadavg()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results: dict[tuple[str, str], dict[str, float]] = {}
    for _ in range(args.repeat):
        for system in args.systems:
            for method in METHODS:
                cmd = [sys.executable, __file__, "--child", method, "--system", system, "--work", str(work)]
                for flag in ("corpus", "queries", "dim", "k", "threads", "query_chunk", "memory_mb"):
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                (work / f"{method}-{system}.json").write_text(json.dumps({**r, "load": os.getloadavg()}))
                if (system, method) not in results or r["seconds"] < results[system, method]["seconds"]:
                    results[system, method] = r
    import faiss

    from tasks.dense_mine import CPU_TILE_ROWS

    blas = ", ".join(
        f"{i['internal_api']} {i['version']} ({i['threading_layer']}, {i.get('architecture')})"
        for i in __import__("threadpoolctl").threadpool_info()
        if i["user_api"] == "blas"
    )
    end_load = os.getloadavg()
    fp32_mb = args.corpus * args.dim * 4 / 2**20
    lines = [
        f"corpus {args.corpus:,} x {args.dim} float16 ({args.shard:,}-row shards, "
        f"float32 {fp32_mb:,.0f} MiB), "
        f"{args.queries:,} queries, top-{args.k}, {args.threads} threads, faiss {faiss.__version__}, "
        f"numpy {np.__version__}; BLAS: {blas}",
        f"ours: memory_mb {args.memory_mb}, query_chunk {args.query_chunk}, tile {CPU_TILE_ROWS} rows; "
        f"load average {load[0]:.2f} before, {end_load[0]:.2f} after; corpus built in {built:.0f} s; "
        f"fastest of {args.repeat} round(s)",
        "",
        "| system | method | queries/s | ratio ours/faiss | wall s | CPU s | peak RSS (MiB) "
        "| identical ids |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for system in args.systems:
        same = check_ids(work, system, args.k)
        ours, peer = results[system, "ours"], results[system, "faiss"]
        for method, r in (
            ("tasks.dense_mine.exact_search", ours),
            (f"faiss IndexFlatIP {faiss.__version__}", peer),
        ):
            ratio = f"{ours['qps'] / peer['qps']:.2f}" if r is ours else ""
            lines.append(
                f"| {system} | {method} | {r['qps']:.1f} | {ratio} | {r['seconds']:.1f} "
                f"| {r['cpu_seconds']:.1f} | {r['peak_rss_mib']:.0f} | {same if r is ours else ''} |"
            )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
