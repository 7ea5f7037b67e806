"""Benchmark: the whole DAG at two sizes, through the Prefect flow, and what it projects to.

Question: how does each stage's time, memory and disk grow on the way from the bundled sample to
the full MS MARCO profile (8.8M passages, 502,939 mined training queries, 13 systems, ~160M
cross-encoder pairs)? Does any stage grow faster than its own input, or hold memory that grows
with the corpus where it need not? How much disk does a run take, counted once?

For each ``--sizes`` N (passages; training, dev and QA queries scaled like MS MARCO's, see
``tasks/scale_data.py``) in a fresh clone of this repository's HEAD under ``--workdir``:

1. ``python -m tasks.scale_data --passages N --seed S``: MS MARCO-shaped files in the official
   archive layout and names, and ``conf/profile/scale.yaml`` pinning their md5s;
2. ``python -m flows.pipeline --profile scale --stats stats.json``: every stage through the real
   flow (``dvc repro`` per stage, the download code fetching the files by ``file:`` URL), the
   smoke models, ``cpu_kernels: avx2``, fp32, the checkout's ``.dvc/config`` (cache link type
   ``hardlink``). Per stage the flow records wall seconds, CPU seconds (every process the stage
   reaped) and peak RSS (summed over the stage's process group, sampled every 0.5 s).

Then it prints, per stage: wall, CPU and peak RSS at both sizes; bytes of its outputs (``dvc.lock``)
and of its DVC cache objects not shared with the workspace (0 when hard-linked); the growth
exponent ``log(cost2 / cost1) / log(input2 / input1)`` against the stage's own input (passages
for the index, texts for encode, queries x passages for search, pairs for the cross-encoder,
bytes for downloads); and a projection to the msmarco profile on 2 CPU cores. The projection
scales the measured time by the ratio of inputs to the power max(1, exponent), times the
msmarco profile's number of systems for per-system stages; for model stages the smoke models'
speed means nothing, so encode and score are projected from the real models' measured 2-core
throughput (``benchmarks/RESULTS.md``, precision benchmark: all-MiniLM-L6-v2 53.8 passages/s,
a MiniLM-L6-sized cross-encoder 78.7 pairs/s, fp32), and dense search from the measured time
scaled by queries x passages x dimension. The GPU column comes from ``--gpu-figures`` (the JSON
``benchmarks/gpu_check.sh`` writes on a CUDA machine) or says "not measured".

Disk: bytes on disk of ``data/`` and ``.dvc/cache`` with every inode counted once (the
generated upstream files under ``data/scale/source`` are the stand-in for the internet and are
reported apart), against the bytes of all outputs ``dvc.lock`` records.

    .venv/bin/python benchmarks/scale_rehearsal.py                      # 50k and 200k passages
    .venv/bin/python benchmarks/scale_rehearsal.py --sizes 20000 80000  # a quicker look
    .venv/bin/python benchmarks/scale_rehearsal.py --report-only        # re-print from the workdir

The two sizes take ~35 min on 2 cores with the defaults (the cross-encoder over ~1.7M pairs is
most of it). Run it on an otherwise idle machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

# The msmarco profile (official counts; systems and dims from conf/profile/msmarco.yaml).
MSMARCO = {
    "passages": 8_841_823,
    "train_queries": 808_731,  # encoded (queries.train.tsv)
    "mined_queries": 502_939,  # with qrels: mined, scored, exported
    "dev_queries": 6_980,
    "dl19_queries": 200,
    "pairs": 160_000_000,  # distinct cross-encoder pairs, as the issue counts them
    "dense_systems": 12,
    "dim": 768,  # most of the 12 systems; the MiniLM ones are 384
}
# Real-model throughput on 2 CPU cores, fp32 (benchmarks/RESULTS.md, precision benchmark).
CPU_ENCODE_PER_S = 53.8  # all-MiniLM-L6-v2 passages/s
CPU_CE_PAIRS_PER_S = 78.7  # MiniLM-L6-sized cross-encoder pairs/s
# BM25 over 8.8M passages, all training queries: 6 min indexing + 39 min mining (bm25_bench.py)
BM25_BENCH_S = {"bm25_index": 6 * 60.0, "bm25_mine": 39 * 60.0}
# ours, exact top-50 over 1M x 384, 50k queries, 2 idle cores (dense_search_bench.py, 2026-12-02)
SEARCH_QPS = 203.8
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
}


# --------------------------------------------------------------------------- one size
def _checkout(workdir: Path, n: int) -> Path:
    path = workdir / f"n{n}"
    if not (path / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(path)], check=True)
        (path / ".venv").symlink_to(ROOT / ".venv")
    return path


def _env(project: Path) -> dict[str, str]:
    env = os.environ | ENV | {"PREFECT_HOME": str(project / ".prefect")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    env.pop("PREFECT_API_URL", None)  # each size gets its own temporary server
    return env


def run_size(workdir: Path, n: int, seed: int, python: str) -> dict[str, Any]:
    """Generate, run the flow, and collect what one size measured (saved as result.json)."""
    project = _checkout(workdir, n)
    env = _env(project)
    log = (project / "rehearsal.log").open("a")
    t0 = time.monotonic()
    subprocess.run(
        [python, "-m", "tasks.scale_data", "--passages", str(n), "--seed", str(seed)],
        cwd=project,
        env=env,
        check=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    gen_s = time.monotonic() - t0
    t0 = time.monotonic()
    proc = subprocess.run(
        [python, "-m", "flows.pipeline", "--profile", "scale", "--stats", "stats.json"],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    flow_s = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"n={n}: the flow failed (exit {proc.returncode}); see {project / 'rehearsal.log'}")
    result = collect(project) | {"generate_s": round(gen_s, 1), "flow_s": round(flow_s, 1), "n": n}
    (project / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


# --------------------------------------------------------------------------- measuring
def _lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def disk_bytes(*roots: Path, exclude: tuple[Path, ...] = ()) -> int:
    """Bytes on disk (allocated blocks) under ``roots``, each inode counted once, like ``du``."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if here / d not in exclude]
            for name in filenames:
                st = (here / name).lstat()
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += st.st_blocks * 512
    return total


def _cache_object(project: Path, md5: str) -> Path:
    md5 = md5.removesuffix(".dir")
    base = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return base.with_name(base.name + ".dir") if not base.exists() else base


def unshared_cache_bytes(project: Path, out: dict[str, Any]) -> int:
    """Bytes of the DVC cache objects of one output that are not the workspace file itself."""
    path = project / out["path"]
    md5 = out["md5"]
    pairs: list[tuple[Path, Path]] = []
    if md5.endswith(".dir"):
        manifest = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        for entry in json.loads(manifest.read_text()):
            pairs.append((path / entry["relpath"], _cache_object(project, entry["md5"])))
    else:
        pairs.append((path, _cache_object(project, md5)))
    extra = 0
    for work, obj in pairs:
        if not obj.exists():
            continue
        if not work.exists() or not os.path.samefile(work, obj):
            extra += obj.stat().st_size
    return extra


def collect(project: Path) -> dict[str, Any]:
    stats = json.loads((project / "stats.json").read_text())["stages"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    paths, inputs = params["paths"], params["inputs"]
    raw = project / paths["raw"]
    metrics = project / paths["metrics"]
    stages: dict[str, dict[str, Any]] = {}
    for s in stats:
        outs = lock.get(s["stage"], {}).get("outs", [])
        stages[s["stage"]] = {
            "status": s["status"],
            "seconds": s["seconds"],
            "cpu_s": s.get("cpu_s", 0.0),
            "peak_rss": s.get("peak_rss", 0),
            "out_bytes": sum(o.get("size", 0) for o in outs),
            "outs": {o["path"]: o.get("size", 0) for o in outs},
            "cache_extra": sum(unshared_cache_bytes(project, o) for o in outs),
        }
    bm25 = json.loads((metrics / "bm25_mine.json").read_text())
    score = json.loads((metrics / "score.json").read_text())
    dims = {
        name: json.loads((project / paths["embeddings"] / name / "manifest.json").read_text())["dim"]
        for name in params["systems"]
    }
    counts = {
        "passages": _lines(raw / inputs["collection"]),
        "train_queries": _lines(raw / inputs["queries_train"]),
        "mined_queries": bm25["train_queries"],
        "dev_queries": bm25["dev"]["queries"],
        "dl19_queries": bm25["dl19"]["queries"],
        "pairs": score["pairs_distinct"],
        "dense_systems": len(params["systems"]),
        "dim": max(dims.values()),
        "source_bytes": {name: src["size"] for name, src in params["sources"].items()},
    }
    data = project / "data"
    source = data / "scale" / "source"
    caches = [project / paths["embedding_cache"], project / paths["score_cache"]]
    disk = {
        "outputs": sum(st["out_bytes"] for st in stages.values()),
        "data_and_cache": disk_bytes(data, project / ".dvc" / "cache", exclude=(source,)),
        "dvc_cache": disk_bytes(project / ".dvc" / "cache"),
        "stage_caches": disk_bytes(*[c for c in caches if c.exists()]),
        "score_cache": disk_bytes(caches[1]) if caches[1].exists() else 0,
        "downloads": disk_bytes(project / paths["downloads"]),
        "source": disk_bytes(source),
    }
    return {"stages": stages, "counts": counts, "disk": disk, "load": os.getloadavg()}


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Unit:
    """What a stage's own input is, for the growth exponent and the projection."""

    label: str
    per_system: bool = False

    def of(self, stage: str, c: dict[str, Any]) -> float:
        queries = c["mined_queries"] + c["dev_queries"] + c["dl19_queries"]
        texts = c["passages"] + c["train_queries"] + c["dev_queries"] + c["dl19_queries"]
        src = c["source_bytes"]
        value = {
            "source bytes": lambda: src.get(_source_of(stage), 0),
            "passages": lambda: c["passages"],
            "queries x passages": lambda: queries * c["passages"],
            "queries x passages x dim": lambda: queries * c["passages"] * c["dim"],
            "texts": lambda: texts,
            "pairs": lambda: c["pairs"],
            "mined queries": lambda: c["mined_queries"],
            "dev queries": lambda: c["dev_queries"] + c["dl19_queries"],
            "fixed": lambda: 1,
        }[self.label]()
        return float(value)


def _source_of(stage: str) -> str:
    """``download@qa_train`` -> ``qa_train``; ``qa@train`` -> ``qa_train``."""
    base, _, item = stage.partition("@")
    return f"qa_{item}" if base == "qa" else item


def unit_of(stage: str) -> Unit:
    base = stage.split("@", 1)[0]
    return {
        "download": Unit("source bytes"),
        "qa": Unit("source bytes"),
        "bm25_index": Unit("passages"),
        "bm25_mine": Unit("queries x passages"),
        "smoke_models": Unit("fixed"),
        "encode": Unit("texts", per_system=True),
        "mine": Unit("queries x passages x dim", per_system=True),
        "merge": Unit("mined queries"),
        "score": Unit("pairs"),
        "ce_rerank": Unit("dev queries"),
        "denoise": Unit("mined queries"),
        "export": Unit("mined queries"),
        "evaluate": Unit("dev queries"),
    }.get(base, Unit("mined queries"))


def msmarco_counts(small: dict[str, Any]) -> dict[str, Any]:
    """The msmarco profile's inputs: official counts; download sizes pinned in its profile
    (sources of the same name), the rest scaled from the generated ones by passages."""
    c = dict(MSMARCO)
    ratio = MSMARCO["passages"] / small["passages"]
    real = yaml.safe_load((ROOT / "conf" / "profile" / "msmarco.yaml").read_text())["sources"]
    c["source_bytes"] = {
        k: real[k]["size"] if k in real else v * ratio for k, v in small["source_bytes"].items()
    }
    return c


def exponent(a: float, b: float, ua: float, ub: float) -> float | None:
    """Growth exponent of a cost between two inputs; None where the input barely changed."""
    if a <= 0 or b <= 0 or ua <= 0 or ub <= 0 or max(ua, ub) / min(ua, ub) < 1.5:
        return None
    return math.log(b / a) / math.log(ub / ua)


def _floor(unit: Unit) -> float:
    """The smallest exponent a projection uses: linear in the size (a product of two inputs
    that both grow with the size: 0.5 per factor), so fixed start-up costs that flatten the
    measured exponent never project a stage below linear growth."""
    return 0.5 if " x " in unit.label else 1.0


def project_cpu(
    stage: str,
    r1: dict[str, Any],
    r2: dict[str, Any],
    c1: dict[str, Any],
    c2: dict[str, Any],
    cm: dict[str, Any],
    e: float | None,
    qps: float,
) -> tuple[float, str]:
    """Projected seconds of ``stage`` (all systems together) for msmarco on 2 cores, and how.

    Model stages, dense search and BM25 come from measured throughput (wall on 2 cores); the
    one-process stages from their CPU seconds at both sizes (start-up + cost per input unit).
    """
    base = stage.split("@", 1)[0]
    texts = cm["passages"] + cm["train_queries"] + cm["dev_queries"] + cm["dl19_queries"]
    systems = cm["dense_systems"] / c2["dense_systems"]
    if base == "encode":  # per system: all-MiniLM-L6-v2's measured speed
        return texts / CPU_ENCODE_PER_S * systems, "model speed"
    if base == "score":
        return cm["pairs"] / CPU_CE_PAIRS_PER_S, "model speed"
    if base == "ce_rerank":  # BM25's top evaluate.ce_rerank_depth (100) of dev + dl19
        pairs = (cm["dev_queries"] + cm["dl19_queries"]) * 100
        return pairs / CPU_CE_PAIRS_PER_S, "model speed"
    if base == "mine" and qps > 0:  # exact search measured at 1M x 384: linear in passages and dim
        q = cm["mined_queries"] + cm["dev_queries"] + cm["dl19_queries"]
        per_system = q / qps * (cm["passages"] / 1e6) * (cm["dim"] / 384)
        return per_system * c2["dense_systems"] * systems, "search speed"
    if base in BM25_BENCH_S:  # the embedded engine measured at 1M passages (bm25_bench.py)
        return BM25_BENCH_S[base], "bm25 bench"
    unit = unit_of(stage)
    u1, u2, um = unit.of(stage, c1), unit.of(stage, c2), unit.of(stage, cm)
    if unit.label == "fixed" or u2 <= 0:
        return r2["cpu_s"], "fixed"
    if e is not None and e > 1.15:  # super-linear: follow the power law
        t, basis = r2["cpu_s"] * (um / u2) ** e, "power law"
    elif u2 > u1 and r2["cpu_s"] > r1["cpu_s"]:  # start-up cost + a cost per unit of input
        slope = (r2["cpu_s"] - r1["cpu_s"]) / (u2 - u1)
        t, basis = r1["cpu_s"] + slope * (um - u1), "linear fit"
    else:  # no growth measured: linear from the larger size (an upper bound)
        t, basis = r2["cpu_s"] * um / u2, "linear"
    return t * (systems if unit.per_system else 1.0), basis


def project_gpu(stage: str, cm: dict[str, Any], gpu: dict[str, float] | None) -> str:
    base = stage.split("@", 1)[0]
    if base not in ("encode", "score", "ce_rerank", "mine"):
        return "as CPU"
    if not gpu:
        return "not measured"
    texts = cm["passages"] + cm["train_queries"] + cm["dev_queries"] + cm["dl19_queries"]
    if base == "encode" and gpu.get("encode_passages_per_s"):
        return _dur(texts / gpu["encode_passages_per_s"] * cm["dense_systems"] / 2)
    if base == "score" and gpu.get("ce_pairs_per_s"):
        return _dur(cm["pairs"] / gpu["ce_pairs_per_s"])
    if base == "mine" and gpu.get("search_queries_per_s"):  # measured at 1M x 384
        q = cm["mined_queries"] + cm["dev_queries"] + cm["dl19_queries"]
        scale = cm["passages"] / 1e6 * cm["dim"] / 384
        return _dur(q / gpu["search_queries_per_s"] * scale * cm["dense_systems"] / 2)
    return "not measured"


def _project_out(path: str, b2: float, c2: dict[str, Any], cm: dict[str, Any]) -> float:
    if "/runs/" in f"/{path}/":  # eval runs: (dev + dl19 queries) x depth
        return b2 * (cm["dev_queries"] + cm["dl19_queries"]) / (c2["dev_queries"] + c2["dl19_queries"])
    return b2 * cm["mined_queries"] / c2["mined_queries"]


def project_bytes(
    stage: str, b2: float, c2: dict[str, Any], cm: dict[str, Any], outs: dict[str, float]
) -> float:
    """Output bytes of ``stage`` (all systems) for msmarco: linear in its own input."""
    unit = unit_of(stage)
    base = stage.split("@", 1)[0]
    if base == "download":
        return (
            cm["source_bytes"].get(_source_of(stage), 0)
            / max(c2["source_bytes"].get(_source_of(stage), 1), 1)
            * b2
        )
    if unit.label == "fixed":
        return b2
    if base in ("mine", "bm25_mine", "ce_rerank"):  # negatives: mined queries; runs: dev + dl19
        return sum(_project_out(path, b, c2, cm) for path, b in outs.items()) * (
            cm["dense_systems"] / c2["dense_systems"] if unit.per_system else 1.0
        )
    else:
        u2, um = unit.of(stage, c2), unit.of(stage, cm)
        if " x " in unit.label:
            u2, um = math.sqrt(u2), math.sqrt(um)
    out = b2 * um / max(u2, 1)
    if unit.per_system:
        out *= cm["dense_systems"] / c2["dense_systems"]
    if base == "encode":  # float16 vectors: bytes follow the dimension
        out *= cm["dim"] / c2["dim"]
    return out


# --------------------------------------------------------------------------- report
def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f}"


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _e(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def report(r1: dict[str, Any], r2: dict[str, Any], gpu: dict[str, float] | None, qps: float) -> str:
    n1, n2 = r1["n"], r2["n"]
    c1, c2 = r1["counts"], r2["counts"]
    cm = msmarco_counts(c2)
    k1, k2 = f"{n1 / 1000:g}k", f"{n2 / 1000:g}k"
    lines = [
        f"Sizes: {n1:,} and {n2:,} passages (train queries {c1['train_queries']:,} / "
        f"{c2['train_queries']:,}, mined {c1['mined_queries']:,} / {c2['mined_queries']:,}, "
        f"dev {c1['dev_queries']:,} / {c2['dev_queries']:,}, CE pairs {c1['pairs']:,} / {c2['pairs']:,}); "
        f"load average at the end {r1['load'][0]:.1f} / {r2['load'][0]:.1f}.",
        "",
        f"| stage | input | wall s {k1} | wall s {k2} | CPU s {k1} | CPU s {k2} | exp (CPU) "
        f"| peak RSS MiB {k1} | {k2} | exp (RSS) | outputs MiB {k2} | exp (bytes) "
        "| DVC cache extra MiB | msmarco, 2 CPU cores | basis | msmarco, 1 GPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    total = 0.0
    flags = []
    for stage, s2 in sorted(r2["stages"].items()):
        s1 = r1["stages"].get(stage)
        if s1 is None:
            continue
        unit = unit_of(stage)
        u1, u2 = unit.of(stage, c1), unit.of(stage, c2)
        e_t = exponent(s1["cpu_s"], s2["cpu_s"], u1, u2)
        e_m = exponent(s1["peak_rss"], s2["peak_rss"], u1, u2)
        e_b = exponent(s1["out_bytes"], s2["out_bytes"], u1, u2)
        proj, basis = project_cpu(stage, s1, s2, c1, c2, cm, e_t, qps)
        total += proj
        if e_t is not None and e_t > 1.15 and s2["cpu_s"] > 10:
            flags.append(f"{stage}: CPU time grows as its input^{e_t:.2f}")
        if e_m is not None and e_m > 0.5 and s2["peak_rss"] > 2**30:
            flags.append(f"{stage}: peak RSS grows as its input^{e_m:.2f}")
        lines.append(
            f"| {stage} | {unit.label} | {s1['seconds']:.1f} | {s2['seconds']:.1f} | {s1['cpu_s']:.0f} "
            f"| {s2['cpu_s']:.0f} | {_e(e_t)} | {_mib(s1['peak_rss'])} | {_mib(s2['peak_rss'])} | {_e(e_m)} "
            f"| {_mib(s2['out_bytes'])} | {_e(e_b)} | {_mib(s2['cache_extra'])} | {_dur(proj)} | {basis} "
            f"| {project_gpu(stage, cm, gpu)} |"
        )
    lines += [
        "",
        f"Flow wall time: {_dur(r1['flow_s'])} / {_dur(r2['flow_s'])} "
        f"(data generation {r1['generate_s']:.0f} s / {r2['generate_s']:.0f} s, not in the table). "
        f"Projected msmarco total on 2 CPU cores, one stage after another: {_dur(total)}.",
        "",
        "Growth flagged (CPU exponent > 1.15 vs the stage's own input, or peak RSS above 1 GiB growing "
        "faster than input^0.5): " + ("; ".join(flags) if flags else "none."),
        "",
        disk_table(r1, r2),
        "",
        disk_plan(r2, cm),
    ]
    return "\n".join(lines)


def disk_table(r1: dict[str, Any], r2: dict[str, Any]) -> str:
    rows = [
        "| disk, measured | " + " | ".join(f"{r['n']:,} passages" for r in (r1, r2)) + " |",
        "|---|---:|---:|",
    ]
    for key, label in [
        ("outputs", "outputs (dvc.lock sizes), MiB"),
        ("data_and_cache", "data/ + .dvc/cache on disk, each inode once, MiB"),
        ("dvc_cache", ".dvc/cache alone (hard links to outputs included), MiB"),
        ("stage_caches", "embedding + score shard caches, MiB"),
        ("downloads", "downloads (archives as fetched), MiB"),
        ("source", "generated upstream files (the stand-in for the web; not counted), MiB"),
    ]:
        rows.append(f"| {label} | " + " | ".join(_mib(r["disk"][key]) for r in (r1, r2)) + " |")
    rows.append(
        "| data + cache / outputs | "
        + " | ".join(f"{r['disk']['data_and_cache'] / r['disk']['outputs']:.2f}x" for r in (r1, r2))
        + " |"
    )
    return "\n".join(rows)


def disk_plan(r2: dict[str, Any], cm: dict[str, Any]) -> str:
    """The msmarco profile's disk, from the larger size's measured bytes scaled up."""
    c2 = r2["counts"]
    groups: dict[str, float] = {}
    for stage, s in r2["stages"].items():
        base = stage.split("@", 1)[0]
        group = {"download": "downloaded files (unpacked)", "encode": "embeddings"}.get(base, base)
        groups[group] = groups.get(group, 0.0) + project_bytes(
            stage, s["out_bytes"], c2, cm, s.get("outs", {})
        )
    d = r2["disk"]
    archives = sum(cm["source_bytes"].values())
    groups["archive cache (data/downloads, as pinned in msmarco.yaml)"] = archives
    # the embedding cache is the embeddings themselves (hard links): the score shards are what it adds
    groups["score shard cache (data/cache/scores)"] = d["score_cache"] * cm["pairs"] / max(c2["pairs"], 1)
    total = sum(groups.values())
    rows = [
        f"| disk plan, msmarco profile ({cm['dense_systems']} dense systems at {cm['dim']} dims) | GB |",
        "|---|---:|",
    ]
    rows += [f"| {k} | {_gb(v)} |" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])]
    rows.append(f"| total (the DVC cache shares these bytes: hard links) | {_gb(total)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/scale_rehearsal.py",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="example: .venv/bin/python benchmarks/scale_rehearsal.py --sizes 50000 200000",
    )
    parser.add_argument("--sizes", type=int, nargs=2, default=[50_000, 200_000], metavar=("N1", "N2"))
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hardnegs-rehearsal"))
    parser.add_argument("--report-only", action="store_true", help="print the table from result.json files")
    parser.add_argument(
        "--recollect", action="store_true", help="re-read each finished checkout's measurements first"
    )
    parser.add_argument("--gpu-figures", type=Path, help="JSON from benchmarks/gpu_check.sh (--json)")
    parser.add_argument(
        "--search-qps",
        type=float,
        default=SEARCH_QPS,
        help="exact top-50 queries/s at 1M x 384 on 2 cores, for the dense-search projection "
        f"(default {SEARCH_QPS:g}: benchmarks/dense_search_bench.py); 0 = project from the rehearsal",
    )
    parser.add_argument("--json", type=Path, help="also write both sizes' measurements here")
    args = parser.parse_args(argv)
    if args.sizes[0] >= args.sizes[1]:
        parser.error("--sizes: the second size must be larger than the first")
    args.workdir.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
    results = []
    for n in args.sizes:
        saved = args.workdir / f"n{n}" / "result.json"
        if args.report_only or saved.exists():
            if not saved.exists():
                parser.error(f"--report-only: {saved} does not exist; run without it first")
            result = json.loads(saved.read_text())
            if args.recollect:
                keep = {k: result[k] for k in ("generate_s", "flow_s", "n")}
                result = collect(saved.parent) | keep
                saved.write_text(json.dumps(result, indent=1, sort_keys=True))
            results.append(result)
            continue
        sys.stderr.write(f"n={n:,}: generating and running the flow in {args.workdir / f'n{n}'} ...\n")
        results.append(run_size(args.workdir, n, args.seed, sys.executable))
    gpu = json.loads(args.gpu_figures.read_text()) if args.gpu_figures else None
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
    sys.stdout.write(report(results[0], results[1], gpu, args.search_qps) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
