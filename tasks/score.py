"""Stage ``score``: cross-encoder scores for every distinct (qid, pid) of the hard negatives.

Reads ``paths.out/msmarco-hard-negatives.jsonl.gz`` (positives + every system's negatives),
collects the distinct (qid, pid) pairs -- systems overlap heavily, so each pair is scored
once -- and scores them with a sentence-transformers ``CrossEncoder`` (``cross_encoder.*``).

- Scores are the model's raw logits (``activation_fn=Identity``), like the published
  ``cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz`` (whose margins, e.g. the 3.0 of
  ``denoise.margin``, are logit differences).
- Work is cut into shards of ``cross_encoder.shard_size`` pairs in (qid, pid) order. Each shard
  is a pure call :func:`score_shard` (dispatchable to any ``concurrent.futures``-style executor,
  e.g. Dask) that sorts its pairs by length, scores them in batches of
  ``cross_encoder.batch_size`` (little padding) and restores the order.
- Resume wherever the stage is started: finished shards land in the content-addressed
  :class:`ShardCache` ``paths.score_cache/<key[:2]>/<key>.npy`` -- outside the DVC outputs, which
  DVC deletes before it runs the stage. The key hashes the model (a local directory by content,
  a hub model by pinned revision), max_length, batch_size, backend, the device and dtype resolved
  once in the parent (``auto`` never reaches a worker; a worker that cannot honour them fails),
  the library versions and the shard's qids, pids and texts. So a rerun after kill -9 -- by
  ``dvc repro``, the flow or this CLI, or after a params change that does not touch the scores --
  scores only the missing shards, logs ``N shard(s) of M reused``, and writes files
  byte-identical to an uninterrupted run. ``ce_rerank`` resumes the same way.
- ``cross_encoder.addressing: pair`` (the incremental refresh; default ``shard`` is the above,
  bits and keys unchanged): each pair's score is keyed by ``tasks.rowstore.digest(query text,
  passage text)`` in a :class:`~tasks.rowstore.RowStore` ``paths.score_cache/pairs/<settings>/``
  (settings: the model identity without batch_size, library versions, format). Only pairs the
  store lacks are scored, each distinct text pair once, in work units of ``shard_size`` pairs
  (one ``put`` each: the resume point), and every score is read back from the store. Each pair
  is scored ALONE (a batch of one) because a score's last bits depend on its batch neighbours:
  measured with all-MiniLM-L6-v2 on this CPU, 179 of 256 fp32 embeddings differed between
  length-sorted batches of 32 and batches of one. Alone, a score depends on the pair only, so a
  refresh that adds, edits or drops 1% of the pairs scores that 1% and writes the bytes of a
  run with an empty cache. A batch of one's bits depended on torch's thread count under
  ``MKL_CBWR=AVX2`` (27 of 300 scores differed, 1 vs 2 threads); MKL's strict mode, which
  ``cpu_kernels: avx2`` now sets (:mod:`tasks.accel`), removed that (200 of 200 equal across 1
  and 2 threads), so pairs are scored on the worker's threads. The cost: a MiniLM-L6-sized
  cross-encoder on this 2-core CPU (pinned avx2 kernels with strict mode, 600 pairs of 5-12 +
  40-90 words, 2 threads, idle; one run of a scratch script) scores 92.5 pairs/s in
  length-sorted batches of 32 and 66.2 pairs/s alone: a full rebuild in pair mode takes ~1.4x
  longer (more local workers, ``orchestration.local_workers``, win back the cores), so it pays
  off when a refresh reuses most pairs. On a GPU, whose throughput comes from large batches,
  the gap is larger (not measured). The modes agree to float rounding (max |diff| 1.6e-7),
  not bit for bit (418 of those 600 scores differ in the last bits), so switching addressing
  changes the outputs once.
  Both addressings call :func:`tasks.io.record_work` (``score``, pairs scored of total); the
  manifest's per-shard list is over the ``shard_size`` partition of the output order either way,
  and no reused/computed count reaches an output.
- One writer: the CLI holds the stage lock (:mod:`tasks.locks`); a second ``tasks.score`` on the
  same outputs (say, started by a ``dvc repro`` after the first one was killed) exits 4 at once.
- Outputs: ``paths.scores/ce-scores.parquet`` (``qid:int64, pid:int64, score:float32`` sorted by
  (qid, pid)) and ``manifest.json`` (model identity with the resolved device/dtype, per shard
  rows and input / score hashes), ``paths.out/<cross_encoder.name>-scores.pkl.gz`` (published pickle
  ``dict[qid, dict[pid, score]]``) and ``paths.metrics/score.json`` (pairs mentioned,
  distinct pairs, share saved by deduplication, empty passages). The CLI writes the pickle's
  provenance record ``<name>-scores.pkl.gz.provenance.json`` beside it (:mod:`tasks.provenance`).

Bad input: a pid missing from the collection or a qid missing from the training queries
raises :class:`~tasks.io.DataError` (count + first examples). Empty passages are scored as
they are (the model sees the query alone) and counted in ``score.json``. A non-finite
score from the model raises (naming the shard and pairs), never becomes a number.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tasks import provenance
from tasks.cli import run_stage, stage_parser
from tasks.config import ROOT, Config, CrossEncoderCfg
from tasks.io import (
    DataError,
    atomic_dir,
    dumps_json,
    file_digest,
    read_json,
    record_work,
    write_bytes_atomic,
    write_json,
)
from tasks.models import model_revision
from tasks.records import (  # the scores table's reader and writer live with the other formats
    load_texts,
    scores_table,
    write_table,
)
from tasks.scores_pickle import write_scores_pickle

log = logging.getLogger(__name__)

BACKEND_EXTRAS = {"onnx": "sentence-transformers[onnx]", "openvino": "sentence-transformers[openvino]"}
MANIFEST_VERSION = 2  # 2: shards live in paths.score_cache; the manifest records the resolved device/dtype
CACHE_FORMAT = 1


# --------------------------------------------------------------------------- model
CONCRETE_DEVICES = ("cpu", "cuda")
CONCRETE_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load and run the cross-encoder (picklable, hashable).

    ``device`` and ``dtype`` are concrete (``cpu``/``cuda``, ``fp32``/``bf16``/``fp16``):
    :meth:`from_cfg` resolves ``auto`` once, in the parent, so every worker scores with the
    same settings and a worker that cannot honour them fails instead of picking its own.
    """

    model: str
    revision: str | None = None
    max_length: int = 512
    batch_size: int = 64
    backend: str = "torch"
    device: str = "cpu"
    dtype: str = "fp32"
    cpu_kernels: str | None = "avx2"  # tasks.accel.pin_cpu_kernels on CPU; None on CUDA
    addressing: str = "shard"  # "pair": every pair scored alone (batch of one), cached by its texts
    # the driver's tasks.accel.kernels_id (keys record it as cpu_kernels): a worker on a CPU that
    # would compute other bits refuses; not part of the spec's identity
    kernels_key: str | None = field(default=None, compare=False)

    @classmethod
    def from_cfg(cls, ce: CrossEncoderCfg, model_path: str | None = None, accel: Any = None) -> ModelSpec:
        """The spec of ``ce`` with device/dtype resolved here (``accel``: an already resolved
        :class:`tasks.accel.Accel`)."""
        if accel is None:
            from tasks.accel import resolve

            accel = resolve(ce.device, ce.dtype)
        from tasks.accel import kernels_id

        cpu_kernels = ce.cpu_kernels if accel.device == "cpu" else None
        return cls(
            model=model_path or ce.model,
            revision=ce.revision,
            max_length=ce.max_length,
            batch_size=ce.batch_size,
            backend=ce.backend,
            device=accel.device,
            dtype=accel.dtype,
            cpu_kernels=cpu_kernels,
            addressing=ce.addressing,
            kernels_key=kernels_id(cpu_kernels),
        )


_MODELS: dict[ModelSpec, Any] = {}
_MODELS_LOCK = threading.Lock()  # never pickled: shard functions are sent by reference (see main)


def _check_backend(backend: str) -> None:
    if backend == "torch":
        return
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ModuleNotFoundError:  # the parent package (optimum) itself is missing
            return True

    needed = {"onnx": ("optimum.onnxruntime", "onnxruntime"), "openvino": ("optimum.intel", "openvino")}
    missing = [m for m in needed[backend] if absent(m)]
    if missing:
        raise ValueError(
            f"cross_encoder.backend={backend!r} needs {', '.join(missing)}: "
            f"pip install '{BACKEND_EXTRAS[backend]}' (or set cross_encoder.backend: torch)"
        )


def _honour(spec: ModelSpec) -> Any:
    """The :class:`~tasks.accel.Accel` of ``spec`` in this process, exactly as resolved by the
    parent; a worker that cannot provide it (no CUDA here) raises rather than change precision."""
    from tasks.accel import resolve

    if spec.device not in CONCRETE_DEVICES or spec.dtype not in CONCRETE_DTYPES:
        raise ValueError(
            f"cross-encoder spec has device={spec.device!r} dtype={spec.dtype!r}: resolve them in the "
            "parent (ModelSpec.from_cfg) so that every worker scores with the same settings"
        )
    try:
        accel = resolve(spec.device, spec.dtype)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(
            f"this shard worker cannot score with {spec.device}/{spec.dtype}, which the run resolved "
            f"({exc}); run every worker on the same kind of machine, or set cross_encoder.device"
        ) from None
    if (accel.device, accel.dtype) != (spec.device, spec.dtype):  # resolve() never does this today
        raise ValueError(f"worker resolved {accel.describe()} instead of {spec.device}/{spec.dtype}")
    return accel


def load_model(spec: ModelSpec) -> tuple[Any, threading.Lock]:
    """Load (once per process) the CrossEncoder of ``spec`` on its (resolved) device/dtype."""
    with _MODELS_LOCK:
        if spec in _MODELS:
            return _MODELS[spec]
        from sentence_transformers import CrossEncoder

        from tasks.accel import place

        _check_backend(spec.backend)
        accel = _honour(spec)
        if spec.cpu_kernels is not None:
            from tasks.accel import pin_cpu_kernels

            pin_cpu_kernels(spec.cpu_kernels, expect=spec.kernels_key)  # before the model runs
        if spec.backend != "torch" and accel.device != "cpu":
            raise ValueError(
                f"cross_encoder.backend={spec.backend!r} is a CPU option; set cross_encoder.device: cpu "
                "or cross_encoder.backend: torch"
            )
        model = CrossEncoder(
            spec.model,
            revision=spec.revision,
            max_length=spec.max_length,
            device=accel.device,
            backend=spec.backend,
        )
        if spec.backend == "torch":
            place(model, accel)
        log.info("cross-encoder %s on %s (%s backend)", spec.model, accel.describe(), spec.backend)
        _MODELS[spec] = (model, threading.Lock())
        return _MODELS[spec]


def length_order(queries: list[str], passages: list[str]) -> np.ndarray:
    """Indices sorting pairs by character length, longest first (stable: ties keep order)."""
    lengths = np.fromiter((len(q) + len(p) for q, p in zip(queries, passages, strict=True)), np.int64)
    return np.argsort(-lengths, kind="stable")


def score_pairs(spec: ModelSpec, queries: list[str], passages: list[str]) -> np.ndarray:
    """Raw cross-encoder logits (float32) for the pairs, in input order, length-bucketed
    (``addressing: pair``: each pair alone, a batch of one, so its bits depend on it only)."""
    import torch

    model, lock = load_model(spec)
    order = length_order(queries, passages)
    out = np.empty(len(order), dtype=np.float32)
    identity = torch.nn.Identity()
    step = 1 if spec.addressing == "pair" else spec.batch_size
    with lock:  # a tokenizer and a model are not safe to share between threads
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            batch = [(queries[i], passages[i]) for i in idx]
            scores = model.predict(
                batch, batch_size=len(batch), activation_fn=identity, show_progress_bar=False
            )
            out[idx] = np.asarray(scores, dtype=np.float32).reshape(-1)
    return out


# --------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class ShardSpec:
    """One shard of pairs with their texts: everything :func:`score_shard` needs."""

    index: int
    model: ModelSpec
    qids: np.ndarray = field(repr=False)
    pids: np.ndarray = field(repr=False)
    queries: list[str] = field(repr=False)
    passages: list[str] = field(repr=False)

    def input_hash(self) -> str:
        h = hashlib.sha256()
        h.update(self.qids.astype("<i8").tobytes())
        h.update(self.pids.astype("<i8").tobytes())
        for text in (*self.queries, *self.passages):
            h.update(text.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()


@dataclass(frozen=True)
class ShardResult:
    index: int
    scores: np.ndarray
    seconds: float


def score_shard(spec: ShardSpec) -> ShardResult:
    """Score one shard (pure: same spec => same scores). Non-finite scores raise DataError."""
    t0 = time.perf_counter()
    scores = score_pairs(spec.model, spec.queries, spec.passages)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        examples = ", ".join(f"(qid {spec.qids[i]}, pid {spec.pids[i]})" for i in bad[:5])
        raise DataError(
            f"shard {spec.index}: the cross-encoder returned {len(bad)} non-finite score(s), "
            f"e.g. {examples}; with fp16 this is usually overflow: set cross_encoder.dtype to bf16 or fp32"
        )
    return ShardResult(spec.index, scores, time.perf_counter() - t0)


# --------------------------------------------------------------------------- pairs
@dataclass
class Pairs:
    qids: np.ndarray
    pids: np.ndarray
    mentions: int  # pairs named by the file, counting every system's copy
    per_system: dict[str, int]


def collect_pairs(negatives_path: Path) -> Pairs:
    """Distinct (qid, pid) among positives and all systems' negatives, sorted by (qid, pid)."""
    from tasks.records import read_hard_negatives

    qid_chunks: list[np.ndarray] = []
    pid_chunks: list[np.ndarray] = []
    per_system: dict[str, int] = {"pos": 0}
    mentions = 0
    for rec in read_hard_negatives(negatives_path):
        named = set(rec.pos)
        mentions += len(rec.pos)
        per_system["pos"] += len(rec.pos)
        for system, negs in rec.neg.items():
            per_system[system] = per_system.get(system, 0) + len(negs)
            mentions += len(negs)
            named.update(negs)
        arr = np.fromiter(sorted(named), dtype=np.int64, count=len(named))
        pid_chunks.append(arr)
        qid_chunks.append(np.full(len(arr), rec.qid, dtype=np.int64))
    qids = np.concatenate(qid_chunks) if qid_chunks else np.zeros(0, np.int64)
    pids = np.concatenate(pid_chunks) if pid_chunks else np.zeros(0, np.int64)
    order = np.lexsort((pids, qids))
    return Pairs(qids[order], pids[order], mentions, per_system)


def iter_shard_specs(
    pairs_q: np.ndarray,
    pairs_p: np.ndarray,
    queries: dict[int, str],
    passages: dict[int, str],
    model: ModelSpec,
    shard_size: int,
    only: set[int] | None = None,
) -> Iterator[ShardSpec]:
    for index, start in enumerate(range(0, len(pairs_q), shard_size)):
        if only is not None and index not in only:
            continue
        q = pairs_q[start : start + shard_size]
        p = pairs_p[start : start + shard_size]
        yield ShardSpec(
            index, model, q, p, [queries[int(x)] for x in q.tolist()], [passages[int(x)] for x in p.tolist()]
        )


# --------------------------------------------------------------------------- resumable shards
def model_identity(model: ModelSpec) -> dict[str, Any]:
    """The model as keys and manifests record it: a local directory by its content hash, never
    by where it lives (the same model gives the same keys in any checkout), and the resolved
    device and dtype (work done under another setting is never reused). ``addressing`` is
    recorded only when it is ``pair`` (which drops ``batch_size``: pairs are scored alone), so
    shard-mode keys and manifests are those of before the option existed."""
    from tasks.accel import kernels_id

    ident = asdict(model)
    ident.pop("kernels_key")  # recorded below as cpu_kernels
    if model.addressing == "pair":
        ident.pop("batch_size")  # pairs are scored alone: the batch size changes nothing
    else:
        ident.pop("addressing")  # shard mode: the keys and manifests of before the option existed
    ident["cpu_kernels"] = kernels_id(model.cpu_kernels)  # e.g. avx2+MKL_CBWR=AVX2: new settings, new keys
    revision = model_revision(model.model, model.revision)
    if Path(model.model).is_dir():
        ident.update(model="local-dir", revision=revision)
    else:
        if revision == "unpinned":
            log.warning(
                "cross_encoder.revision is null and no snapshot of %s is in the local HF cache: cached "
                "shards are keyed 'unpinned'; pin a hub commit",
                model.model,
            )
        ident.update(revision=revision)
    return ident


def library_versions(backend: str) -> dict[str, str]:
    """Versions of the libraries that compute the scores (part of every cache key: an upgrade
    may change the last bits, and a resumed run must not mix shards of two versions)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "transformers", "sentence-transformers"]
    names += {"onnx": ["onnxruntime", "optimum"], "openvino": ["openvino", "optimum-intel"]}.get(backend, [])
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


class ShardCache:
    """Content-addressed store of finished shards: ``<root>/<key[:2]>/<key>.npy`` (float32
    scores in the shard's pair order) + ``<key>.json`` (rows, sha256, what the key hashes).

    It lives outside every DVC output (``paths.score_cache``): DVC deletes a stage's outputs
    before running it, so shards kept there would not survive a rerun by ``dvc repro``. The key
    hashes the model identity (content hash or pinned revision, max_length, batch_size, backend,
    resolved device and dtype), the library versions, the format and the shard's input (qids,
    pids, texts); a shard's bytes depend only on its key, so whatever entry point reruns the
    stage, reused shards give the bytes of an uninterrupted run. Files are written temp + rename
    (npy first: a sidecar means complete) and verified by sha256 on every read.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.npy", d / f"{key}.json"

    def get(self, key: str, rows: int) -> np.ndarray | None:
        """The shard's scores if present and intact, else None (a damaged entry is removed)."""
        npy, meta_path = self._paths(key)
        if not meta_path.exists() or not npy.exists():
            return None
        try:
            meta = read_json(meta_path)
            ok = meta.get("sha256") == file_digest(npy, "sha256") and meta.get("rows") == rows
            scores = np.load(npy, allow_pickle=False) if ok else None
        except (DataError, ValueError, OSError):
            ok, scores = False, None
        if not ok or scores is None or scores.dtype != np.float32 or scores.shape != (rows,):
            log.warning("cached shard %s is damaged (hash, rows or dtype differ); scoring it again", npy)
            npy.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            return None
        return scores

    def put(self, key: str, scores: np.ndarray, meta: dict[str, Any]) -> None:
        npy, meta_path = self._paths(key)
        with write_bytes_atomic(npy, gz=False) as fh:
            np.save(fh, np.ascontiguousarray(scores, dtype=np.float32), allow_pickle=False)
        write_json(meta_path, {**meta, "rows": len(scores), "sha256": file_digest(npy, "sha256")})


class MemoryCache:
    """No resume point: shards are kept in this process only (``cache_dir=None``)."""

    def __init__(self) -> None:
        self.entries: dict[str, np.ndarray] = {}

    def get(self, key: str, rows: int) -> np.ndarray | None:
        return self.entries.get(key)

    def put(self, key: str, scores: np.ndarray, meta: dict[str, Any]) -> None:
        self.entries[key] = scores


def run_shards(
    specs: Iterator[ShardSpec],
    n_pairs: int,
    on_result: Any,
    executor: Executor | None = None,
    max_in_flight: int = 4,
) -> None:
    """Submit shards (at most ``max_in_flight`` at a time, bounding memory) and hand each
    finished one to ``on_result`` as it completes."""
    from tasks.scaleout import InlineExecutor

    ex = executor or InlineExecutor()
    in_flight: dict[Future[ShardResult], ShardSpec] = {}
    with tqdm(total=n_pairs, desc="score", unit="pair", unit_scale=True, disable=n_pairs == 0) as bar:

        def submit_next() -> None:
            spec = next(specs, None)
            if spec is not None:
                in_flight[ex.submit(score_shard, spec)] = spec

        for _ in range(max_in_flight):
            submit_next()
        while in_flight:
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: in_flight[f].index):
                spec = in_flight.pop(fut)
                result = fut.result()
                on_result(spec, result)
                bar.update(len(spec.qids))
                log.info(
                    "shard %d: %d pairs in %.1fs (%.0f pairs/s)",
                    spec.index,
                    len(spec.qids),
                    result.seconds,
                    len(spec.qids) / max(result.seconds, 1e-9),
                )
                submit_next()


@dataclass
class Scored:
    """Scores of every pair in input order, and what a resumed run reused."""

    scores: np.ndarray
    identity: dict[str, Any]  # model_identity(): what the manifest records
    shards: list[dict[str, Any]]  # per shard: rows, input_sha256, sha256 of the scores
    computed: list[int]  # shards with pairs scored this run (pair mode: at least one)
    reused: list[int]
    pairs_scored: int = 0  # pairs scored this run (tasks.io.record_work's ``done``)
    pairs_total: int = 0  # the units of work: pairs (shard mode), distinct (query, passage) texts (pair)


def score_resumable(
    qids: np.ndarray,
    pids: np.ndarray,
    queries: dict[int, str],
    passages: dict[int, str],
    model: ModelSpec,
    shard_size: int,
    cache_dir: Path | None,
    executor: Executor | None = None,
    what: str = "score",
) -> Scored:
    """Score the pairs, reusing what ``cache_dir`` holds (``score`` and ``ce_rerank`` both
    resume this way): whole shards (``addressing: shard``) or single pairs by their texts
    (``addressing: pair``, :func:`score_by_pair`); the log says how much was reused.

    The per-shard list (rows, input and score hashes) is always over the ``shard_size``
    partition of the input order, so it depends on the pairs, texts and settings only."""
    if model.addressing == "pair":
        done = score_by_pair(qids, pids, queries, passages, model, shard_size, cache_dir, executor, what)
    else:
        done = _score_by_shard(qids, pids, queries, passages, model, shard_size, cache_dir, executor, what)
    for i, entry in enumerate(done.shards):
        part = done.scores[i * shard_size : i * shard_size + entry["rows"]]
        entry["sha256"] = hashlib.sha256(part.astype("<f4").tobytes()).hexdigest()
    return done


def _score_by_shard(
    qids: np.ndarray,
    pids: np.ndarray,
    queries: dict[int, str],
    passages: dict[int, str],
    model: ModelSpec,
    shard_size: int,
    cache_dir: Path | None,
    executor: Executor | None,
    what: str,
) -> Scored:
    cache = ShardCache(cache_dir) if cache_dir is not None else MemoryCache()
    identity = model_identity(model)
    base = {"format": CACHE_FORMAT, "model": identity, "libraries": library_versions(model.backend)}
    n = len(qids)
    scores = np.empty(n, dtype=np.float32)
    keys: list[str] = []
    shards: list[dict[str, Any]] = []
    todo: set[int] = set()
    for spec in iter_shard_specs(qids, pids, queries, passages, model, shard_size):
        input_sha = spec.input_hash()
        keys.append(hashlib.sha256(dumps_json({**base, "input_sha256": input_sha}).encode()).hexdigest())
        shards.append({"rows": len(spec.qids), "input_sha256": input_sha})
        hit = cache.get(keys[-1], len(spec.qids))
        if hit is None:
            todo.add(spec.index)
        else:
            scores[spec.index * shard_size : spec.index * shard_size + len(hit)] = hit
    reused = sorted(set(range(len(keys))) - todo)
    log.info(
        "%s: %d shard(s) of %d reused from %s, %d to compute",
        what, len(reused), len(keys), cache_dir or "memory", len(todo),
    )  # fmt: skip

    def save(spec: ShardSpec, result: ShardResult) -> None:
        cache.put(
            keys[spec.index], result.scores, {**base, "input_sha256": shards[spec.index]["input_sha256"]}
        )
        scores[spec.index * shard_size : spec.index * shard_size + len(result.scores)] = result.scores

    todo_pairs = sum(shards[i]["rows"] for i in todo)
    specs = iter_shard_specs(qids, pids, queries, passages, model, shard_size, only=todo)
    run_shards(specs, todo_pairs, save, executor)
    return Scored(scores, identity, shards, sorted(todo), reused, todo_pairs, n)


def pair_store_root(cache_dir: Path, model: ModelSpec) -> Path:
    """``<cache_dir>/pairs/<settings key>``: the :class:`~tasks.rowstore.RowStore` of one setting.

    The key hashes the model identity (the batch size aside: a pair is scored alone), the
    library versions and the cache format; scores of another setting are never mixed in."""
    identity = {k: v for k, v in model_identity(model).items() if k != "batch_size"}
    settings = {
        "addressing": "pair",
        "format": CACHE_FORMAT,
        "libraries": library_versions(model.backend),
        "model": identity,
    }
    return Path(cache_dir) / "pairs" / hashlib.sha256(dumps_json(settings).encode()).hexdigest()


def score_by_pair(
    qids: np.ndarray,
    pids: np.ndarray,
    queries: dict[int, str],
    passages: dict[int, str],
    model: ModelSpec,
    shard_size: int,
    cache_dir: Path | None,
    executor: Executor | None = None,
    what: str = "score",
) -> Scored:
    """``addressing: pair``: each pair's score keyed by ``digest(query text, passage text)``.

    The pairs the store lacks (each distinct digest once, in first-occurrence order) are scored
    ALONE, in work units of ``shard_size`` pairs through :func:`run_shards` (so any executor);
    each finished unit is one ``store.put``: a resume point after kill -9. Then every pair's
    score is read back from the store, so the result never depends on what was cached.
    ``cache_dir=None``: a throwaway store in a temporary directory (no resume point)."""
    from tasks.rowstore import RowStore, digests

    if model.addressing != "pair":
        raise ValueError(f"score_by_pair needs a ModelSpec with addressing='pair', not {model.addressing!r}")
    identity = model_identity(model)
    shards = [
        {"rows": len(spec.qids), "input_sha256": spec.input_hash()}
        for spec in iter_shard_specs(qids, pids, queries, passages, model, shard_size)
    ]
    q_texts = [queries[int(q)] for q in qids.tolist()]
    p_texts = [passages[int(p)] for p in pids.tolist()]
    keys = digests(zip(q_texts, p_texts, strict=True))
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="score-pairs-")))
        else:
            root = pair_store_root(cache_dir, model)
        store = RowStore(root, 1, np.float32)
        _, first = np.unique(keys, return_index=True)
        first = np.sort(first)  # one index per distinct digest, in input order
        todo = first[store.missing(keys[first])]
        log.info(
            "%s: %d distinct pair(s) of %d reused from %s, %d to score (each alone)",
            what, len(first) - len(todo), len(first), cache_dir or "memory", len(todo),
        )  # fmt: skip
        units = [todo[start : start + shard_size] for start in range(0, len(todo), shard_size)]

        def unit_specs() -> Iterator[ShardSpec]:
            for index, idx in enumerate(units):
                rows = idx.tolist()
                yield ShardSpec(
                    index, model, qids[idx], pids[idx], [q_texts[i] for i in rows], [p_texts[i] for i in rows]
                )

        def save(spec: ShardSpec, result: ShardResult) -> None:
            store.put(keys[units[spec.index]], result.scores.reshape(-1, 1))

        run_shards(unit_specs(), len(todo), save, executor)
        scores = np.ascontiguousarray(store.get(keys)[:, 0], dtype=np.float32)
    touched = np.isin(keys, keys[todo]) if len(todo) else np.zeros(len(keys), dtype=bool)
    computed = sorted(set((np.flatnonzero(touched) // shard_size).tolist()))
    reused = sorted(set(range(len(shards))) - set(computed))
    return Scored(scores, identity, shards, computed, reused, len(todo), len(first))


# --------------------------------------------------------------------------- run
def run(
    negatives_path: Path,
    collection: Path,
    queries_path: Path,
    scores_dir: Path,
    pickle_path: Path,
    ce: CrossEncoderCfg,
    model_path: str | None = None,
    executor: Executor | None = None,
    stats_path: Path | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Score every distinct pair; returns the stats (also written to ``stats_path``,
    default ``scores_dir/score.json``) plus ``computed_shards`` / ``reused_shards`` /
    ``scored_pairs`` (what this run computed; never written to an output).

    ``model_path`` overrides ``ce.model`` (``main`` resolves a local path against the root).
    ``executor`` runs the shards (``None``: in this process); results do not depend on it.
    ``cache_dir`` keeps finished shards to resume from (``paths.score_cache``); ``None``
    keeps them in memory only, so nothing survives a crash.
    """
    from tasks.accel import resolve

    accel = resolve(ce.device, ce.dtype)  # once, here: workers get the concrete setting
    model = ModelSpec.from_cfg(ce, model_path, accel)
    pairs = collect_pairs(negatives_path)
    n = len(pairs.qids)
    saved = 1 - n / pairs.mentions if pairs.mentions else 0.0
    log.info("%d pairs named, %d distinct: deduplication saves %.1f%%", pairs.mentions, n, 100 * saved)
    queries, passages = load_texts(collection, queries_path, pairs.qids, pairs.pids, str(negatives_path))
    empty = sorted(pid for pid in np.unique(pairs.pids).tolist() if not passages[pid].strip())
    if empty:
        log.warning("%d empty passage(s) scored against the query alone, e.g. pids %s", len(empty), empty[:5])

    t0 = time.perf_counter()
    done = score_resumable(
        pairs.qids, pairs.pids, queries, passages, model, ce.shard_size, cache_dir, executor, "score"
    )
    seconds = time.perf_counter() - t0
    del queries, passages
    table = scores_table(pairs.qids, pairs.pids, done.scores)
    manifest = {
        "format": MANIFEST_VERSION,
        "model": done.identity,
        "shard_size": ce.shard_size,
        "pairs": n,
        "shards": done.shards,
    }
    stats = {
        "pairs_named": pairs.mentions,
        "pairs_distinct": n,
        "dedup_saved_share": round(saved, 6),
        "pairs_named_per_system": dict(sorted(pairs.per_system.items())),
        "queries": int(np.count_nonzero(np.diff(pairs.qids))) + 1 if n else 0,
        "empty_passages": len(empty),
        "shards": len(done.shards),
    }
    with atomic_dir(scores_dir) as stage:  # replaces the whole directory (no leftovers of old layouts)
        write_table(stage / "ce-scores.parquet", table)
        write_json(stage / "manifest.json", manifest)
        if stats_path is None:
            write_json(stage / "score.json", stats)
    write_scores_pickle(
        pickle_path,
        table.column("qid").to_numpy(),
        table.column("pid").to_numpy(),
        table.column("score").to_numpy(),
    )
    if stats_path is not None:
        write_json(stats_path, stats)
    todo_pairs = done.pairs_scored
    record_work("score", "pairs", done=todo_pairs, total=done.pairs_total)
    log.info(
        "scored %d pair(s) in %d new shard(s) and reused %d shard(s), %.1fs (%.0f pairs/s); wrote %s and %s",
        todo_pairs,
        len(done.computed),
        len(done.reused),
        seconds,
        todo_pairs / max(seconds, 1e-9),
        scores_dir / "ce-scores.parquet",
        pickle_path,
    )
    computed = {"computed_shards": done.computed, "reused_shards": done.reused, "scored_pairs": todo_pairs}
    return {**stats, **computed}


def resolve_model(model: str, root: Path) -> str:
    """A relative path that exists under the project root wins over a hub id of the same name."""
    local = root / model
    return str(local) if local.exists() else model


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.score",
        "Score every distinct (qid, pid) of the hard negatives (positives + all systems) once with "
        "the cross-encoder (cross_encoder.*), in shards cached in paths.score_cache (a rerun after a "
        "crash scores only the missing ones); write paths.scores/ce-scores.parquet and "
        "paths.out/<cross_encoder.name>-scores.pkl.gz. Exits 4 while another process runs this stage.",
        "python -m tasks.score --params params.yaml",
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        from tasks.scaleout import executor

        pickle_path = cfg.path("out") / f"{cfg.cross_encoder.name}-scores.pkl.gz"
        with executor(cfg.orchestration, device=cfg.cross_encoder.device) as ex:  # 1 worker per GPU
            run(
                cfg.path("out") / "msmarco-hard-negatives.jsonl.gz",
                cfg.input_path("collection"),
                cfg.input_path("queries_train"),
                cfg.path("scores"),
                pickle_path,
                cfg.cross_encoder,
                model_path=resolve_model(cfg.cross_encoder.model, ROOT),
                executor=ex,
                stats_path=cfg.path("metrics") / "score.json",
                cache_dir=cfg.path("score_cache"),
            )
        # the model's identity as run() hashed it for the manifest: its weights are hashed once
        known = {"cross_encoder": read_json(cfg.path("scores") / "manifest.json")["model"]["revision"]}
        models = provenance.stage_models(cfg, systems=False, cross_encoder=True, known=known)
        provenance.record_file(cfg, "score", pickle_path, models)

    return run_stage(args.params, work)


if __name__ == "__main__":
    # Run as the importable module, not as __main__: the shard function and specs then pickle by
    # reference (tasks.score.score_shard) to Dask or process workers, never by value with this
    # module's state (a module-level lock cannot be pickled).
    from tasks.score import main as _main

    sys.exit(_main())
