"""GPU check: this project's CUDA paths beside its CPU fp32 paths and the plain library calls.

Started by ``benchmarks/gpu_check.sh`` (which sets ``PYTHONPATH`` to the tree and adds carried
wheels); read that script's header for how to run it on the device machine. One table:

- **encode**: ``tasks.encode.encode_shard`` (the stage's shard function: length-sorted batches,
  float16 output) on the device vs the same function on CPU fp32 (max |Δ| of the stored fp16
  embeddings) and passages/s vs a plain ``SentenceTransformer.encode`` on the same device. Models:
  the sample profile's smoke bi-encoder (``tasks.smoke_models``, built on the spot), a random
  bi-encoder of all-MiniLM-L6-v2's shape (6 layers x 384, built the same way: real speed, no
  meaning), and ``--model DIR`` when given.
- **exact search**: ``tasks.dense_mine.exact_search`` on the device vs its CPU path, on a
  synthetic fp16 corpus (1M x 384 by default): identical top-k ids, max |Δ score|, queries/s.
  Two corpora: Gaussian (real-valued: a near-tie at the cut may fall either way, counted) and
  quantised to multiples of 1/256 (every dot product exact in fp32, in any order, some exact
  ties: the ids must be identical, ties by pid).
- **CE scoring**: ``tasks.score.score_shard`` on the device vs CPU fp32 (max |Δ| of the logits)
  and pairs/s vs a plain ``CrossEncoder.predict``: the smoke cross-encoder, a random one of
  ms-marco-MiniLM-L-6-v2's shape, and ``--cross-encoder DIR`` when given.
- **local workers**: the shard-worker plan of ``tasks.scaleout`` for a CUDA stage on this machine,
  and a real pinned worker saying which GPU it sees.

CPU baselines run on a subset sized to a time budget and are scaled to a rate (the table says
on how many rows). ``--device cpu`` is a dry mode: every "device" column runs on the CPU with
tiny sizes, to test this script anywhere (``tests/test_gpu_check.py``).

Exit status: 0; 1 when a check failed or the exact-arithmetic search disagreed; 2 no CUDA
device (without ``--device cpu``); 3 a Python module the project imports is missing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if os.environ.get("GPU_CHECK_SITE"):  # carried wheels (gpu_check.sh): before the machine's own packages
    sys.path.insert(sys.path.index(str(ROOT)) + 1, os.environ["GPU_CHECK_SITE"])
for _var, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' weight-loading bars too
    "TQDM_DISABLE": "1",  # the stages' own bars: the table is the output
}.items():
    os.environ.setdefault(_var, _value)

log = logging.getLogger("gpu_check")

# module -> who imports it (what a missing one breaks); probed before anything runs
REQUIRED = {
    "numpy": "everything",
    "yaml": "tasks/config.py",
    "pydantic": "tasks/config.py",
    "isal": "tasks/io.py",
    "pyarrow": "tasks/records.py",
    "tqdm": "tasks/encode.py, tasks/score.py",
    "cloudpickle": "tasks/scaleout.py",
    "torch": "every model stage",
    "transformers": "tasks/smoke_models.py",
    "tokenizers": "tasks/smoke_models.py",
    "sentence_transformers": "tasks/encode.py, tasks/score.py",
}
HEAVY = ("transformers", "sentence_transformers")  # seconds to import: looked up, not imported, here
OPTIONAL = {"faiss": "the CPU path of tasks.dense_mine.exact_search (faiss-cpu)"}
WHEELS_HINT = (
    "nothing is installed from a network: on a machine with the project's venv run "
    "`bash benchmarks/gpu_check.sh --prepare` (downloads these as cp312 wheels into .whl/), then "
    "run(command='bash benchmarks/gpu_check.sh', carry=['.whl'], timeout_s=540)"
)


@dataclass(frozen=True)
class Sizes:
    texts: int  # encode: passages per model on the device
    pairs: int  # CE: pairs per model on the device
    corpus: int  # exact search: corpus rows
    shard: int  # exact search: rows per corpus shard (the msmarco profile's encode.shard_size)
    queries: int  # exact search: queries on the device
    query_chunk: int
    batch: int  # encode and CE batch size (the msmarco profile's)
    cpu_budget_s: float  # per CPU baseline
    cpu_cap: int  # at most this many rows in a CPU baseline


REAL = Sizes(20_000, 20_000, 1_000_000, 100_000, 20_000, 1024, 256, 20.0, 20_000)
DRY = Sizes(48, 48, 6_000, 2_500, 64, 32, 16, 1.0, 32)
DIM, TOP_K = 384, 50


@dataclass
class Row:
    check: str
    what: str
    n: str = ""
    project: str = ""
    peer: str = ""
    cpu: str = ""
    delta: str = ""
    same: str = ""
    note: str = ""
    failed: bool = field(default=False, repr=False)


# --------------------------------------------------------------------------- environment
def probe_modules() -> tuple[dict[str, str], dict[str, str]]:
    """(missing required, missing optional): module -> what imports it."""

    def missing(names: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, who in names.items():
            try:
                if name in HEAVY:  # there is enough; a broken one fails its section, named
                    if importlib.util.find_spec(name) is None:
                        raise ModuleNotFoundError(f"No module named {name!r}")
                else:
                    importlib.import_module(name)
            except ImportError as exc:  # also a module that is there but fails to load
                out[name] = f"{who}; {type(exc).__name__}: {exc}"
        return out

    return missing(REQUIRED), missing(OPTIONAL)


def versions() -> str:
    import numpy
    import sentence_transformers
    import torch
    import transformers

    return (
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"sentence-transformers {sentence_transformers.__version__}, transformers "
        f"{transformers.__version__}, numpy {numpy.__version__}"
    )


def cpu_kernels() -> str:
    from tasks.accel import cpu_flags

    return "avx2" if "avx2" in cpu_flags() else "native"


def rate(n: int, seconds: float, unit: str) -> str:
    return f"{n / max(seconds, 1e-9):,.0f} {unit}/s"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cpu_subset(run: Callable[[int], Any], total: int, sizes: Sizes, first: int) -> tuple[int, Any, float]:
    """Run ``run(n)`` on ``first`` rows to measure, then on as many as the budget allows.

    Returns (rows, result, seconds) of the larger run."""
    first = min(first, total)
    out, secs = timed(lambda: run(first))
    n = int(min(total, sizes.cpu_cap, max(first, first / max(secs, 1e-9) * sizes.cpu_budget_s)))
    if n <= first:
        return first, out, secs
    out, secs = timed(lambda: run(n))
    return n, out, secs


# --------------------------------------------------------------------------- data and models
def synthetic_texts(n: int, seed: int, min_words: int, max_words: int, mean_words: float) -> list[str]:
    """MS MARCO-like lengths over a Zipf-distributed vocabulary of pseudo-words."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=int(k))) for k in rng.integers(2, 11, size=4000)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    lengths = np.clip(rng.normal(mean_words, mean_words / 2, size=n).astype(int), min_words, max_words)
    return [" ".join(words[i] for i in rng.choice(len(words), size=int(k), p=p)) for k in lengths]


@dataclass(frozen=True)
class Models:
    bi: dict[str, tuple[Path, int]]  # label -> (directory, max_seq_length)
    ce: dict[str, tuple[Path, int]]


def build_models(work: Path, texts: list[str], args: argparse.Namespace, shapes: bool) -> Models:
    """The sample profile's smoke models and (``shapes``) random ones of the MiniLM-L6 shapes,
    built by ``tasks.smoke_models``; plus ``--model`` / ``--cross-encoder``."""
    from tasks.config import SmokeModels
    from tasks.smoke_models import build_bi_encoder, build_cross_encoder, train_vocab

    smoke = SmokeModels()
    shape_bi = SmokeModels(hidden_size=384, layers=6, heads=12, intermediate_size=1536, max_seq_length=256)
    shape_ce = shape_bi.model_copy(update={"max_seq_length": 512})
    vocab = train_vocab(texts, 8000)
    bi = {"smoke bi-encoder (2x64)": (build_bi_encoder(work / "bi-smoke", vocab, "cls", smoke, 1), 128)}
    ce = {"smoke cross-encoder (2x64)": (build_cross_encoder(work / "ce-smoke", vocab, smoke, 3), 128)}
    if shapes:
        shape = "MiniLM-L6 shape, random (6x384)"
        bi[shape] = (build_bi_encoder(work / "bi-shape", vocab, "mean", shape_bi, 2), 256)
        ce[shape] = (build_cross_encoder(work / "ce-shape", vocab, shape_ce, 4), 512)
    if args.model:
        bi[f"--model {Path(args.model).name}"] = (Path(args.model), args.max_seq_length)
    if args.cross_encoder:
        ce[f"--cross-encoder {Path(args.cross_encoder).name}"] = (Path(args.cross_encoder), args.max_length)
    return Models(bi, ce)


# --------------------------------------------------------------------------- encode
def check_encode(label: str, model: Path, msl: int, texts: list[str], dev: str, sizes: Sizes) -> Row:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from tasks.accel import resolve
    from tasks.encode import ShardSpec, encode_shard

    kernels = cpu_kernels()

    def project(device: str, rows: list[str]) -> np.ndarray:
        spec = ShardSpec(
            "gpu-check", str(model), None, msl, device, "fp32", sizes.batch, tuple(rows),
            None if device == "cuda" else kernels,
        )  # fmt: skip
        return encode_shard(spec).embeddings

    resolve(dev, "fp32")  # type: ignore[arg-type]  # cuda | cpu
    project(dev, texts[: 2 * sizes.batch])  # load, CUDA init, kernels
    _, t_dev = timed(lambda: project(dev, texts))
    plain = SentenceTransformer(str(model), device=dev)
    plain.max_seq_length = msl
    plain.eval()

    def peer() -> Any:
        return plain.encode(texts, batch_size=sizes.batch, convert_to_numpy=True, show_progress_bar=False)

    plain.encode(texts[: 2 * sizes.batch], batch_size=sizes.batch, show_progress_bar=False)
    _, t_peer = timed(peer)
    resolve("cpu", "fp32")
    project("cpu", texts[:8])
    n_cpu, emb_cpu, t_cpu = cpu_subset(
        lambda n: project("cpu", texts[:n]), len(texts), sizes, 2 * sizes.batch
    )
    same_rows = project(dev, texts[:n_cpu])  # the same texts in the same batches as the CPU run
    delta = float(np.max(np.abs(same_rows.astype(np.float32) - emb_cpu.astype(np.float32))))
    scale = float(np.max(np.abs(emb_cpu.astype(np.float32))))
    return Row(
        "encode", label, f"{len(texts):,} ({n_cpu:,})", rate(len(texts), t_dev, "passages"),
        rate(len(texts), t_peer, "passages"), rate(n_cpu, t_cpu, "passages"),
        f"{delta:.2e} (max abs {scale:.2f})", "",
        f"fp32; stored fp16; SentenceTransformer.encode {t_peer / t_dev:.2f}x the project's time",
    )  # fmt: skip


# --------------------------------------------------------------------------- exact search
def quantise(x: Any) -> Any:
    """Multiples of 1/256 in [-0.75, 0.75] (std about 0.25): exact in fp16 (and TF32), every
    product and every sum of 384 of them exact in fp32, whatever the order. Scores then tie
    exactly now and then (steps of 2^-16), and both paths must break those ties by pid; coarser
    steps would tie at almost every cut, which both paths settle row by row (slow at 1M)."""
    import numpy as np

    return (np.clip(np.round(x * 64), -192, 192) / 256).astype(np.float32)


def write_corpus(root: Path, n: int, shard: int, seed: int, quantised: bool) -> Any:
    """An encode-style corpus part (float16 ``.npy`` shards) read through ``tasks.encode.Embeddings``."""
    import numpy as np

    from tasks.encode import Embeddings

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, start in enumerate(range(0, n, shard)):
        rows = min(shard, n - start)
        vec = rng.standard_normal((rows, DIM), dtype=np.float32)
        if quantised:
            vec = quantise(vec)
        np.save(root / f"{i:05d}.npy", vec.astype(np.float16), allow_pickle=False)
        entries.append({"file": f"{i:05d}.npy", "rows": rows})
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # pids are not row numbers
    return Embeddings(root, "corpus", ids, tuple(entries), DIM)


def check_search(label: str, work: Path, dev: str, sizes: Sizes, quantised: bool, seed: int) -> Row:
    import numpy as np

    from tasks.accel import resolve
    from tasks.dense_mine import exact_search

    corpus, t_write = timed(
        lambda: write_corpus(work / label.split()[0], sizes.corpus, sizes.shard, seed, quantised)
    )
    rng = np.random.default_rng(seed + 1)
    queries = rng.standard_normal((sizes.queries, DIM), dtype=np.float32)
    if quantised:
        queries = quantise(queries)
    queries = queries.astype(np.float16)  # as the stage loads them

    def search(device: str, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(q, corpus, TOP_K, False, sizes.query_chunk, device)

    resolve(dev, "fp32")  # type: ignore[arg-type]  # cuda | cpu
    search(dev, queries[:64])  # CUDA init, cuBLAS handles
    (s_dev, p_dev), t_dev = timed(lambda: search(dev, queries))
    resolve("cpu", "fp32")
    try:
        n_cpu, (s_cpu, p_cpu), t_cpu = cpu_subset(
            lambda n: search("cpu", queries[:n]), len(queries), sizes, min(256, len(queries))
        )
    except ImportError as exc:  # the CPU path needs faiss-cpu (today's code)
        return Row(
            "exact search", label, f"{len(queries):,} ({sizes.corpus:,} x {DIM})",
            rate(len(queries), t_dev, "queries"), "", f"not run: {exc}", failed=True,
        )  # fmt: skip
    differ = np.flatnonzero(np.any(p_dev[:n_cpu] != p_cpu, axis=1))
    delta = float(np.max(np.abs(s_dev[:n_cpu] - s_cpu)))
    if quantised:
        ties = int(np.count_nonzero(s_cpu[:, 1:] == s_cpu[:, :-1]))
        note = f"exact arithmetic, {ties:,} tied neighbours in the CPU top-{TOP_K}: ids must match"
    else:
        note = "Gaussian: a near-tie at the cut may fall either way"
    note += f"; CPU on the first {n_cpu:,} queries; corpus written in {t_write:.0f} s"
    same = "yes" if not len(differ) else f"NO: {len(differ)} of {n_cpu:,} queries"
    return Row(
        "exact search", f"{label}, {sizes.corpus:,} x {DIM} fp16, top-{TOP_K}",
        f"{len(queries):,} ({n_cpu:,})", rate(len(queries), t_dev, "queries"), "",
        rate(n_cpu, t_cpu, "queries"), f"{delta:.2e}", same, note,
        failed=quantised and bool(len(differ)),
    )  # fmt: skip


# --------------------------------------------------------------------------- CE scoring
def check_ce(
    label: str, model: Path, max_length: int, pairs: list[tuple[str, str]], dev: str, sizes: Sizes
) -> Row:
    import numpy as np
    import torch
    from sentence_transformers import CrossEncoder

    from tasks.score import ModelSpec, ShardSpec, score_shard

    kernels = cpu_kernels()

    def project(device: str, rows: list[tuple[str, str]]) -> np.ndarray:
        spec = ModelSpec(str(model), None, max_length, sizes.batch, "torch", device, "fp32",
                         None if device == "cuda" else kernels)  # fmt: skip
        ids = np.arange(len(rows), dtype=np.int64)
        shard = ShardSpec(0, spec, ids, ids, [q for q, _ in rows], [p for _, p in rows])
        return score_shard(shard).scores

    project(dev, pairs[: 2 * sizes.batch])
    s_dev, t_dev = timed(lambda: project(dev, pairs))
    plain = CrossEncoder(str(model), device=dev, max_length=max_length)
    identity = torch.nn.Identity()

    def peer() -> Any:
        return plain.predict(pairs, batch_size=sizes.batch, activation_fn=identity, show_progress_bar=False)

    plain.predict(
        pairs[: 2 * sizes.batch], batch_size=sizes.batch, activation_fn=identity, show_progress_bar=False
    )
    _, t_peer = timed(peer)
    project("cpu", pairs[:8])
    n_cpu, s_cpu, t_cpu = cpu_subset(lambda n: project("cpu", pairs[:n]), len(pairs), sizes, 2 * sizes.batch)
    same_rows = project(dev, pairs[:n_cpu])
    delta = float(np.max(np.abs(same_rows - s_cpu)))
    scale = float(np.max(np.abs(s_cpu)))
    return Row(
        "CE scoring", label, f"{len(pairs):,} ({n_cpu:,})", rate(len(pairs), t_dev, "pairs"),
        rate(len(pairs), t_peer, "pairs"), rate(n_cpu, t_cpu, "pairs"),
        f"{delta:.2e} (max abs {scale:.2f})", "",
        f"fp32 logits; CrossEncoder.predict {t_peer / t_dev:.2f}x the project's time",
    )  # fmt: skip


# --------------------------------------------------------------------------- local workers
def pinned_worker_view() -> dict[str, Any]:
    """Runs in a pinned pool worker: what this process sees of CUDA."""
    import torch

    n = torch.cuda.device_count()
    return {
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "devices": n,
        "name": torch.cuda.get_device_name(0) if n else None,
    }


def check_workers(dev: str) -> Row:
    from tasks.config import Orchestration
    from tasks.scaleout import local_plan, map_ordered, process_pool, visible_gpus

    plan = local_plan(Orchestration(local_workers=2), dev)
    if dev == "cuda":
        import torch

        gpus = visible_gpus(torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        what = f"CUDA stage, local_workers: 2, {len(gpus)} GPU(s) visible"
    else:  # dry mode: the pinning still runs, to a GPU "0" that is not there
        gpus, what = ("0",), "CPU stage, local_workers: 2; a worker pinned to GPU 0 anyway"
    with process_pool(1, threads=1, gpus=gpus[:1]) as ex:
        seen = map_ordered(ex, pinned_worker_view, [()])[0]
    ok = seen["CUDA_VISIBLE_DEVICES"] == gpus[0] and seen["devices"] == (1 if dev == "cuda" else 0)
    return Row(
        "local workers", what, "", plan.line,
        note=f"the pinned worker sees CUDA_VISIBLE_DEVICES={seen['CUDA_VISIBLE_DEVICES']}: "
        f"{seen['devices']} GPU(s) {seen['name'] or ''}".rstrip() + ("" if ok else ": NOT PINNED"),
        failed=not ok,
    )  # fmt: skip


# --------------------------------------------------------------------------- table
def table(rows: list[Row], dev: str) -> str:
    head = ["check", "model / data", f"n on {dev} (CPU)", f"project on {dev}", f"plain library on {dev}",
            "project on CPU fp32", "max abs Δ vs CPU fp32", f"same top-{TOP_K} ids", "note"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.check, r.what, r.n, r.project, r.peer, r.cpu, r.delta, r.same, r.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bash benchmarks/gpu_check.sh",
        description="The project's CUDA encode / exact search / CE scoring beside its CPU fp32 paths and the "
        "plain sentence-transformers calls; one table. Needs a CUDA GPU unless --device cpu (dry mode).",
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: dry mode, everything on the CPU with tiny sizes (tests)")  # fmt: skip
    parser.add_argument("--model", metavar="DIR", help="also check this SentenceTransformer directory")
    parser.add_argument("--max-seq-length", type=int, default=256, help="for --model (256)")
    parser.add_argument("--cross-encoder", metavar="DIR", help="also check this CrossEncoder directory")
    parser.add_argument("--max-length", type=int, default=512, help="for --cross-encoder (512)")
    sections = ["encode", "search", "ce", "workers"]
    parser.add_argument("--only", nargs="+", choices=sections, default=sections, help="sections to run")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="skip the sections left once this many s have passed"
    )
    parser.add_argument("--out", metavar="FILE", help="also write the table here")
    parser.add_argument("--work", metavar="DIR", help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    log.setLevel(logging.INFO)
    t_start = time.perf_counter()

    if cpu_kernels() == "avx2":  # the stages' default CPU kernels, chosen before torch computes anything
        from tasks.accel import KERNEL_ENV

        for var, value in KERNEL_ENV["avx2"].items():
            os.environ.setdefault(var, value)
    missing, optional = probe_modules()
    if missing:
        print("gpu_check: missing Python modules the project imports:", file=sys.stderr)  # noqa: T201
        for name, why in missing.items():
            print(f"  {name}: {why}", file=sys.stderr)  # noqa: T201
        print(f"gpu_check: {WHEELS_HINT}", file=sys.stderr)  # noqa: T201
        return 3
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(  # noqa: T201
            f"gpu_check: no CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda}) "
            "sees none (torch.cuda.is_available() is False). Run it on a machine with a GPU, or pass "
            "--device cpu for the dry mode (everything on the CPU, tiny sizes).",
            file=sys.stderr,
        )
        return 2
    dev = args.device
    sizes = REAL if dev == "cuda" else DRY
    print(f"gpu_check: {versions()}")  # noqa: T201
    if dev == "cuda":
        print(f"gpu_check: device {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible")  # noqa: T201
    else:
        print(  # noqa: T201
            "gpu_check: DRY MODE (--device cpu): the device columns ran on the CPU; tiny sizes, smoke models"
        )
    for name, why in optional.items():
        print(f"gpu_check: optional module {name} missing ({why})")  # noqa: T201

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.work) as tmp:
        work = Path(tmp)
        passages = synthetic_texts(max(sizes.texts, sizes.pairs, 500), 1, 5, 200, 56.0)
        queries = synthetic_texts(sizes.pairs, 2, 2, 16, 6.0)
        plan: list[tuple[str, str, Callable[[], Row]]] = []
        if "workers" in args.only:
            plan.append(("local workers", "plan", lambda: check_workers(dev)))
        models = Models({}, {})
        if "encode" in args.only or "ce" in args.only:
            log.info("building the smoke models%s", " and the MiniLM-shaped ones" if dev == "cuda" else "")
            try:
                models = build_models(work, passages[: 5000 if dev == "cuda" else 500], args, dev == "cuda")
            except Exception as exc:  # the other sections still run
                log.exception("building the models failed")
                why = f"FAILED: building the models (tasks.smoke_models): {type(exc).__name__}: {exc}"
                rows.append(Row("encode, CE scoring", "smoke models", note=why, failed=True))
        pairs = list(zip(queries, passages[: sizes.pairs], strict=True))
        if "encode" in args.only:
            texts = passages[: sizes.texts]
            for label, (path, msl) in models.bi.items():
                plan.append(("encode", label, partial(check_encode, label, path, msl, texts, dev, sizes)))
        if "search" in args.only:
            for i, data in enumerate(("Gaussian", "quantised")):
                plan.append(
                    ("exact search", data, partial(check_search, data, work, dev, sizes, i == 1, 11 + i))
                )
        if "ce" in args.only:
            for label, (path, ml) in models.ce.items():
                plan.append(("CE scoring", label, partial(check_ce, label, path, ml, pairs, dev, sizes)))
        for check, label, fn in plan:
            elapsed = time.perf_counter() - t_start
            if elapsed > args.budget_s:
                rows.append(
                    Row(check, label, note=f"skipped: {elapsed:.0f} s > --budget-s {args.budget_s:.0f}")
                )
                continue
            log.info("%s: %s (%.0f s so far)", check, label, elapsed)
            try:
                row, secs = timed(fn)
                row.note = f"{row.note}; {secs:.0f} s".lstrip("; ")
            except Exception as exc:  # one broken check must not hide the others' results
                log.exception("%s %s failed", check, label)
                row = Row(check, label, note=f"FAILED: {type(exc).__name__}: {exc}", failed=True)
            rows.append(row)
            if check == "exact search":
                import shutil

                shutil.rmtree(work / label, ignore_errors=True)

    text = table(rows, dev)
    print(text)  # noqa: T201
    total = time.perf_counter() - t_start
    print(f"gpu_check: {total:.0f} s in all")  # noqa: T201
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    failed = [f"{r.check} / {r.what}" for r in rows if r.failed]
    if failed:
        print(f"gpu_check: FAILED: {'; '.join(failed)}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
