"""encode@<system>: embed the corpus and the queries with one bi-encoder, in resumable shards.

Each part (``corpus``, ``train``, ``dev``, ``dl19``) is cut into shards of ``encode.shard_size``
rows in file order. A shard is encoded by :func:`encode_shard`, a pure module-level function
of a picklable :class:`ShardSpec` (so a Dask or process executor can run it anywhere), in
length-sorted batches (original order restored; ``encode.batch_order``: by characters as
sentence-transformers sorts, the default, or by token count, :func:`batch_order`, which pads
less and is keyed apart), and stored as float16 ``.npy`` in a
content-addressed cache ``paths.embedding_cache/<key[:2]>/<key>.npy`` with a sidecar
``<key>.json`` (rows, sha256). The key hashes the model id, its revision (the pinned commit;
unpinned, the commit of the snapshot the local HF cache holds, which an offline load reads; for
a local directory the hash of its files), max_seq_length, the RESOLVED device and dtype (never
``auto``: fp32 by default, see :mod:`tasks.accel`), batch size and the shard's text, so
embeddings are reused across runs and profiles and never mixed across settings.

Prompts (:func:`tasks.models.resolve_encoding`): when the system sets a query or document
prompt, or the model's ``config_sentence_transformers.json`` holds a non-empty one, the queries
go through ``encode_query`` and the corpus through ``encode_document`` with the resolved prompt
text, and the key adds the method and that text. Otherwise the plain ``encode`` runs with keys
exactly as before. ``max_seq_length: null`` keys the model's own value (as if it were written
out); ``score: auto`` resolves the model's ``similarity_fn_name`` into the manifest's ``score``,
which ``dense_mine`` reads. Fields a new option adds appear in the manifest only when it is used.

Killed mid-way, a rerun finds the complete shards in the cache (verified by sha256), encodes
only the rest and gives byte-identical output: a shard's bytes depend only on its key.

The DVC output ``paths.embeddings/<system>/`` is assembled at the end (staged, renamed into
place) from hard links to the cache files (a copy where the cache is on another file system):
it is self-contained — deleting the cache leaves it intact, since a hard link is the file
itself — and costs no extra disk. Nothing ever rewrites a cache file in place (writes are
temp + rename), so the shared inode cannot change under DVC.

Layout: ``<part>/ids.npy`` (int64), ``<part>/00000.npy`` ... (float16, rows x dim), and
``manifest.json`` (model, revision, accel, resolved score and max_seq_length, per shard rows /
first and last id / sha256; ``encode`` with the methods and prompts of a prompted system).
A system with ``model: null`` writes only a manifest with ``skipped``.

``encode.addressing: text`` (for incremental refreshes; default ``shard`` is the above, bit for
bit). Why: an embedding's last bits depend on its batch neighbours (measured with
all-MiniLM-L6-v2 on CPU: length-sorted batches of 32 vs one text at a time differ in 101 of 256
fp16 rows), so a shard-keyed cache is invalidated by any edit, insertion or removal before it,
and a per-text cache is exact only if each text is encoded ALONE. So here each embedding is
keyed by the digest of its text (:func:`tasks.rowstore.digest`) in a :class:`~tasks.rowstore.RowStore`
at ``paths.embedding_cache/texts/<settings hash>/`` (the shard settings less ``batch_size``,
plus the addressing and a prompted part's method and prompt: corpus and queries of a prompted
system get separate stores). The texts a store lacks (each once) are encoded in work units of
``shard_size`` texts, through the same :class:`ShardSpec` / :func:`encode_shard` and executors,
with batch size 1; each finished unit is one atomic pack, so a run killed with ``kill -9``
resumes from the last pack. The output has the same layout and manifest (plus ``addressing``,
less ``batch_size``), its shards written from the store; its bytes depend only on the texts, the
settings and the file order, never on what was cached: a refresh of a corpus with 1 % of its
texts changed encodes that 1 % and writes what a run with an empty cache writes.
Costs: a second copy of the embeddings on disk (the store beside the output, no hard links),
and the batch-of-one speed of a full build. On CPU it is close to that of batches (no padding):
measured on 2 cores with all-MiniLM-L6-v2, 2000 texts of 5..120 words, 27 texts/s alone against
34 in batches of 64 (about 25 % slower; on short texts alone was measured faster); a refresh
pays it only for the changed texts. On a GPU a batch of one leaves the device mostly idle and
is many times slower, so ``device: cuda`` with text addressing logs a warning.

    python -m tasks.encode --system smoke-bi-cls-dot
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from tasks.accel import Accel, kernels_id, pin_cpu_kernels, place, resolve
from tasks.cli import run_stage, stage_parser
from tasks.config import Config, DenseSystem, Encode
from tasks.io import (
    DataError,
    atomic_dir,
    file_digest,
    read_json,
    record_work,
    write_bytes_atomic,
    write_json,
)
from tasks.models import (
    Encoding,
    is_commit,
    model_location,
    model_revision,
    resolve_encoding,
    take_probed_model,
)
from tasks.records import read_collection, read_queries
from tasks.rowstore import DIGEST, RowStore, digest
from tasks.scaleout import InlineExecutor
from tasks.scaleout import executor as shard_executor

log = logging.getLogger(__name__)

PARTS = ("corpus", "train", "dev", "dl19")
QUERY_INPUTS = {"train": "queries_train", "dev": "queries_dev", "dl19": "queries_dl19"}
FORMAT_VERSION = 1
MAX_IN_FLIGHT = 4
ENCODE_METHODS = ("encode", "encode_query", "encode_document")


class Executor(Protocol):
    """What :func:`run` needs from an executor (``concurrent.futures``, Dask ``get_executor()``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class ShardSpec:
    """Everything needed to encode one shard, anywhere. ``key`` names the result."""

    key: str
    model: str
    revision: str | None
    max_seq_length: int
    device: str
    dtype: str
    batch_size: int
    texts: tuple[str, ...] = field(repr=False)
    cpu_kernels: str | None = "avx2"  # tasks.accel.pin_cpu_kernels on CPU; None on CUDA
    method: str = "encode"  # encode (no prompt passed) | encode_query | encode_document
    prompt: str | None = None  # the resolved prompt text the two prompted methods are given
    batch_order: str = "chars"  # chars | tokens: what the batches are sorted by (encode.batch_order)
    kernels_key: str | None = None  # the driver's tasks.accel.kernels_id: a worker on another CPU refuses


@dataclass(frozen=True)
class ShardResult:
    key: str
    embeddings: np.ndarray  # float16, rows x dim, in the spec's text order


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- workers
_MODELS: dict[tuple, Any] = {}


def _load_model(spec: ShardSpec):
    ident = (spec.model, spec.revision, spec.max_seq_length, spec.device, spec.dtype)
    if spec.cpu_kernels is not None:  # before the model runs, and the bits the keys name
        pin_cpu_kernels(spec.cpu_kernels, expect=spec.kernels_key)
    if ident not in _MODELS:
        model = take_probed_model(spec.model, spec.revision) if spec.device == "cpu" else None
        if model is None:  # a worker process, a GPU, or a system that sets max_seq_length
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(spec.model, revision=spec.revision, device=spec.device)
        model.max_seq_length = spec.max_seq_length
        _MODELS.clear()  # one model per process: systems run one after another
        _MODELS[ident] = place(model, Accel(spec.device, spec.dtype))
    return _MODELS[ident]


BATCH_ORDERS = ("chars", "tokens")


def batch_order(model: Any, spec: ShardSpec) -> list[int]:
    """The order the texts are batched in: longest first, ties in text order.

    ``chars``: by character length, as sentence-transformers' ``encode`` sorts (the published
    bits). ``tokens``: by the token count the model's own tokenizer gives (``model.preprocess``,
    truncated at ``max_seq_length``; without a prompt, which adds the same tokens to every text),
    so texts of one batch pad to nearly the same length.
    """
    texts = spec.texts
    if spec.batch_order == "chars":
        return sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    if spec.batch_order != "tokens":
        raise ValueError(
            f"shard {spec.key[:12]}: unknown batch order {spec.batch_order!r} ({', '.join(BATCH_ORDERS)})"
        )
    # sentence-transformers 6 renamed tokenize to preprocess (tokenize warns, then calls it)
    preprocess = getattr(model, "preprocess", None) or model.tokenize
    lengths: list[int] = []
    for start in range(0, len(texts), 1024):  # a padded block at a time, never the whole shard
        features = preprocess(list(texts[start : start + 1024]))
        if "attention_mask" not in features:
            raise ValueError(
                f"{spec.model}: its tokenizer gives no attention_mask to count tokens by; "
                "set encode.batch_order: chars"
            )
        lengths += features["attention_mask"].sum(dim=1).tolist()
    return sorted(range(len(texts)), key=lambda i: (-lengths[i], i))


def encode_shard(spec: ShardSpec, progress: Callable[[int], object] | None = None) -> ShardResult:
    """Encode ``spec.texts`` in length-sorted batches; rows come back in the original order.

    Pure: the result depends only on the spec (and the library versions), whichever process
    or executor runs it. ``progress`` (optional) is called with each batch's row count.
    """
    import torch

    if spec.method not in ENCODE_METHODS:
        raise ValueError(
            f"shard {spec.key[:12]}: unknown encode method {spec.method!r} ({', '.join(ENCODE_METHODS)})"
        )
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"shard {spec.key[:12]}: spec asks for cuda but this worker has none")
    model = _load_model(spec)
    order = batch_order(model, spec)
    out: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, len(order), spec.batch_size):
            idx = order[start : start + spec.batch_size]
            batch = [spec.texts[i] for i in idx]
            kwargs: dict[str, Any] = {
                "batch_size": len(idx),
                "convert_to_tensor": True,
                "show_progress_bar": False,
            }
            if spec.method == "encode":  # today's path: no prompt passed (a default_prompt_name applies)
                emb = model.encode(batch, **kwargs)
            else:
                emb = getattr(model, spec.method)(batch, prompt=spec.prompt, **kwargs)
            arr = emb.float().cpu().numpy().astype(np.float16)
            if out is None:
                out = np.empty((len(order), arr.shape[1]), dtype=np.float16)
            out[idx] = arr
            if progress is not None:
                progress(len(idx))
    if out is None:
        raise ValueError(f"shard {spec.key[:12]}: no texts to encode")
    return ShardResult(spec.key, out)


# --------------------------------------------------------------------------- cache
class EmbeddingCache:
    """Content-addressed shard store: ``<root>/<key[:2]>/<key>.npy`` + ``<key>.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.npy", d / f"{key}.json"

    def get(self, key: str, rows: int) -> tuple[Path, str] | None:
        """The shard's path and sha256 if present and intact, else None (a bad one is removed)."""
        npy, meta_path = self._paths(key)
        if not (npy.exists() and meta_path.exists()):
            return None
        try:
            meta = read_json(meta_path)
        except DataError:
            meta = {}
        digest = file_digest(npy, "sha256")
        if meta.get("sha256") != digest or meta.get("rows") != rows:
            log.warning("cache shard %s is damaged (hash or row count differs); re-encoding it", npy)
            npy.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            return None
        return npy, digest

    def put(self, key: str, emb: np.ndarray, spec_meta: dict[str, Any]) -> tuple[Path, str]:
        npy, meta_path = self._paths(key)
        with write_bytes_atomic(npy, gz=False) as fh:
            np.save(fh, np.ascontiguousarray(emb, dtype=np.float16), allow_pickle=False)
        digest = file_digest(npy, "sha256")
        write_json(
            meta_path, {**spec_meta, "rows": int(emb.shape[0]), "dim": int(emb.shape[1]), "sha256": digest}
        )
        return npy, digest


# --------------------------------------------------------------------------- keys
def shard_key(settings: dict[str, Any], text_sha256: str) -> str:
    """A shard's cache key: the hash of every setting that shapes its bytes and of its text."""
    return sha256_hex(json.dumps({**settings, "text_sha256": text_sha256}, sort_keys=True).encode())


def part_methods(enc: Encoding) -> dict[str, dict[str, Any]]:
    """Per part, the key (and cache sidecar) fields of how it is encoded.

    Empty for the plain ``encode`` path, so every key of earlier releases stays valid; a prompted
    system adds the method and the resolved prompt text (a changed prompt gives new keys).
    """
    if enc.method == "encode":
        return {part: {} for part in PARTS}
    corpus = {"encode": "encode_document", "prompt": enc.document_prompt}
    queries = {"encode": "encode_query", "prompt": enc.query_prompt}
    return {part: corpus if part == "corpus" else queries for part in PARTS}


def _spec_method(fields: dict[str, Any]) -> dict[str, Any]:
    return {"method": fields["encode"], "prompt": fields["prompt"]} if fields else {}


def manifest_extra(enc: Encoding) -> dict[str, Any]:
    """Manifest fields beyond earlier releases', present only where a new option is in effect:
    the prompted methods and texts, and where a value came from the model's own config."""
    extra: dict[str, Any] = {}
    if enc.method == "prompted":
        extra["encode"] = {
            "corpus": {"method": "encode_document", "prompt": enc.document_prompt},
            "queries": {"method": "encode_query", "prompt": enc.query_prompt},
        }
    if enc.score_from == "model":
        extra["similarity_fn_name"] = enc.similarity_fn_name
    sources = {"max_seq_length": enc.max_seq_length_from, "score": enc.score_from}
    if from_model := sorted(k for k, src in sources.items() if src == "model"):
        extra["from_model"] = from_model
    return extra


# --------------------------------------------------------------------------- orchestration
@dataclass
class PartState:
    ids: list[int] = field(default_factory=list)
    text_hash: Any = field(default_factory=hashlib.sha256)
    shards: list[dict[str, Any]] = field(default_factory=list)


def _chunks(rows: Iterable[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # cache on another file system (or no hard links): copy
        shutil.copyfile(src, dst)


def _write_output(
    out_dir: Path,
    head: dict[str, Any],
    system: str,
    model: str | None,
    enc: Encoding,
    states: dict[str, PartState],
    parts: dict[str, Path],
    dim: int,
    write_shard: Callable[[Path, str, int, dict[str, Any]], None],
) -> None:
    """The output directory of either addressing, written whole or not at all: per part its
    ``ids.npy`` and shards (``write_shard(stage, part, index, entry)`` puts ``entry["file"]``
    under ``stage``), then ``manifest.json``."""
    for part, st in states.items():
        if not st.ids:
            raise DataError(f"{parts[part]}: no rows to encode for part {part!r}")
    with atomic_dir(out_dir) as stage:
        manifest: dict[str, Any] = {
            **head,
            "model": model,
            "system": system,
            "score": enc.score,
            "dim": dim,
            "parts": {},
            **manifest_extra(enc),
        }
        for part, st in states.items():
            ids = np.asarray(st.ids, dtype=np.int64)
            with write_bytes_atomic(stage / part / "ids.npy", gz=False) as fh:
                np.save(fh, ids, allow_pickle=False)
            for index, entry in enumerate(st.shards):
                write_shard(stage, part, index, entry)
            manifest["parts"][part] = {
                "rows": len(ids),
                "text_sha256": st.text_hash.hexdigest(),
                "ids": f"{part}/ids.npy",
                "shards": st.shards,
            }
        write_json(stage / "manifest.json", manifest)


def run(
    system: str,
    params: DenseSystem,
    encode: Encode,
    parts: dict[str, Path],
    out_dir: str | Path,
    cache_dir: str | Path,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Encode every part in ``parts`` (name -> TSV of ``id\\ttext``) into ``out_dir``.

    Returns stats: shards ``computed`` / ``reused``, rows, seconds. A system whose ``model`` is
    null writes a manifest with ``skipped`` and returns ``{"skipped": reason}``.
    """
    out_dir = Path(out_dir)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"parts: unknown part(s) {sorted(unknown)}; known: {', '.join(PARTS)}")
    if params.model is None:
        reason = "no public weights"
        log.warning(
            "system %s skipped: %s. To supply a checkpoint, set systems.%s.model to a local path "
            "or a hub id (and systems.%s.revision to pin it), then rerun.",
            system, reason, system, system,
        )  # fmt: skip
        with atomic_dir(out_dir) as stage:
            write_json(
                stage / "manifest.json", {"system": system, "skipped": reason, "format": FORMAT_VERSION}
            )
        return {"skipped": reason}

    accel = resolve(encode.device, encode.dtype)
    location = model_location(params.model)
    revision = model_revision(params.model, params.revision)
    if not (revision.startswith("dir-sha256:") or is_commit(revision)):
        log.warning(
            "systems.%s.revision is %s and no snapshot of %s is in the local HF cache: cache entries "
            "are keyed %r; pin a hub commit",
            system, params.revision, params.model, revision,
        )  # fmt: skip
    elif revision != params.revision and not revision.startswith("dir-sha256:"):
        log.info("systems.%s: %s resolved to the cached snapshot %s", system, params.model, revision)
    # workers load exactly the snapshot the key names (a hub commit), or the local directory
    load_revision = revision if is_commit(revision) else params.revision
    cpu_kernels = encode.cpu_kernels if accel.device == "cpu" else None
    if cpu_kernels is not None:
        # before anything here runs torch: resolve_encoding loads the model to read its
        # max_seq_length when the system leaves it null, and ATen fixes its kernels at first use
        pin_cpu_kernels(cpu_kernels)
    enc = resolve_encoding(system, params, location, load_revision)
    if executor is not None:  # workers load their own copy: drop the one probed here
        take_probed_model(location, load_revision)
    kernels_key = kernels_id(cpu_kernels)  # what every shard's key and worker check name
    # A local directory is identified by its content hash alone, wherever it lives.
    base = {
        "model": "local-dir" if revision.startswith("dir-sha256:") else params.model,
        "revision": revision,
        "max_seq_length": enc.max_seq_length,
        "device": accel.device,
        "dtype": accel.dtype,
        "cpu_kernels": kernels_key,  # e.g. avx2+MKL_CBWR=AVX2: new settings, new keys
        "batch_size": encode.batch_size,
        "format": FORMAT_VERSION,
    }
    if encode.batch_order != "chars":  # the default adds nothing: every earlier key stays valid
        base["batch_order"] = encode.batch_order
    methods = part_methods(enc)
    if encode.addressing == "text":
        return _run_texts(system, params, encode, parts, Path(out_dir), Path(cache_dir), executor,
                          base, methods, enc, accel, location, load_revision, cpu_kernels)  # fmt: skip
    cache = EmbeddingCache(cache_dir)
    states = {p: PartState() for p in parts}
    stats: dict[str, Any] = {"computed": 0, "reused": 0, "rows": 0}
    t0 = time.perf_counter()
    executor_ = executor or InlineExecutor()
    inline = executor is None
    pending: deque[tuple[str, int, dict[str, Any], Any]] = deque()
    dim: int | None = None
    rows_encoded = [0]  # rows of the shards computed this run (the work log's "done")
    bar = tqdm(desc=f"encode {system}", unit="text", unit_scale=True, dynamic_ncols=True)

    def finish(part: str, index: int, entry: dict[str, Any], fut: Any) -> None:
        nonlocal dim
        result: ShardResult = fut.result()
        if result.key != entry["key"] or result.embeddings.shape[0] != entry["rows"]:
            raise RuntimeError(f"encode {system}: shard {part}/{index} came back with the wrong key or rows")
        _, entry["sha256"] = cache.put(
            result.key, result.embeddings, {**base, **methods[part], "text_sha256": entry["text_sha256"]}
        )
        dim = dim or int(result.embeddings.shape[1])
        stats["computed"] += 1
        rows_encoded[0] += entry["rows"]
        if not inline:
            bar.update(entry["rows"])

    try:
        for part, path in parts.items():
            reader = read_collection(path) if part == "corpus" else read_queries(path)
            st = states[part]
            for index, chunk in enumerate(_chunks(reader, encode.shard_size)):
                blob = "".join(f"{i}\t{t}\n" for i, t in chunk).encode("utf-8")
                st.text_hash.update(blob)
                st.ids.extend(i for i, _ in chunk)
                text_sha = sha256_hex(blob)
                key = shard_key({**base, **methods[part]}, text_sha)
                entry: dict[str, Any] = {
                    "file": f"{part}/{index:05d}.npy",
                    "key": key,
                    "rows": len(chunk),
                    "first_id": chunk[0][0],
                    "last_id": chunk[-1][0],
                    "text_sha256": text_sha,
                }
                st.shards.append(entry)
                stats["rows"] += len(chunk)
                hit = cache.get(key, len(chunk))
                if hit is not None:
                    entry["sha256"] = hit[1]
                    stats["reused"] += 1
                    bar.update(len(chunk))
                    continue
                texts = tuple(t for _, t in chunk)
                spec = ShardSpec(key, location, load_revision, enc.max_seq_length,
                                 accel.device, accel.dtype, encode.batch_size, texts,
                                 cpu_kernels, **_spec_method(methods[part]), batch_order=encode.batch_order,
                                 kernels_key=kernels_key)  # fmt: skip
                if inline:
                    fut = executor_.submit(encode_shard, spec, progress=bar.update)
                else:
                    fut = executor_.submit(encode_shard, spec)
                pending.append((part, index, entry, fut))
                while len(pending) >= (1 if inline else MAX_IN_FLIGHT):
                    finish(*pending.popleft())
        while pending:
            finish(*pending.popleft())
    finally:
        bar.close()

    if dim is None and all(st.shards for st in states.values()):  # everything came from the cache
        first = states[next(iter(states))].shards[0]
        dim = int(np.load(cache.get(first["key"], first["rows"])[0], mmap_mode="r").shape[1])  # type: ignore[index]

    def link_shard(stage: Path, part: str, index: int, entry: dict[str, Any]) -> None:
        _link_or_copy(cache._paths(entry["key"])[0], stage / entry["file"])

    _write_output(out_dir, base, system, params.model, enc, states, parts, dim or 0, link_shard)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    rate = stats["rows"] / stats["seconds"] if stats["seconds"] else 0.0
    log.info(
        "encode %s: %d rows, %d shards encoded, %d reused from cache, %.0f texts/s (%s)",
        system, stats["rows"], stats["computed"], stats["reused"], rate, accel.describe(),
    )  # fmt: skip
    record_work(f"encode@{system}", "texts", done=rows_encoded[0], total=stats["rows"])
    return stats


# --------------------------------------------------------------------------- addressing: text
def text_settings(base: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """What shapes one text's embedding under ``addressing: text``: the shard settings less the
    batch size (every text is encoded alone), the addressing and the part's method and prompt."""
    alone = ("batch_size", "batch_order")  # a batch of one: neither shapes an embedding
    return {**{k: v for k, v in base.items() if k not in alone}, "addressing": "text", **fields}


def text_store_root(cache_dir: str | Path, settings: dict[str, Any]) -> Path:
    """``<embedding_cache>/texts/<hash of the settings>/``: one :class:`RowStore` per setting."""
    return Path(cache_dir) / "texts" / sha256_hex(json.dumps(settings, sort_keys=True).encode())


@dataclass
class _Queue:
    """The texts one store lacks, gathered into work units (digest -> text, in reading order)."""

    store: RowStore
    fields: dict[str, Any]
    buffer: dict[bytes, str] = field(default_factory=dict)
    queued: set[bytes] = field(default_factory=set)  # buffered or in flight: never encoded twice


def _run_texts(
    system: str,
    params: DenseSystem,
    encode: Encode,
    parts: dict[str, Path],
    out_dir: Path,
    cache_dir: Path,
    executor: Executor | None,
    base: dict[str, Any],
    methods: dict[str, dict[str, Any]],
    enc: Encoding,
    accel: Accel,
    location: str,
    load_revision: str | None,
    cpu_kernels: str | None,
) -> dict[str, Any]:
    """:func:`run` under ``addressing: text``: embeddings by text digest, output from the store."""
    if accel.device == "cuda":
        log.warning(
            "encode %s: addressing text encodes each text alone (batch of one): exact and incremental, "
            "but slow on a GPU, which a single text leaves mostly idle; addressing shard batches %d",
            system, encode.batch_size,
        )  # fmt: skip
    head = text_settings(base, {})
    queues: dict[Path, _Queue] = {}
    part_queue: dict[str, _Queue] = {}
    for part in parts:
        root = text_store_root(cache_dir, text_settings(base, methods[part]))
        if root not in queues:
            queues[root] = _Queue(RowStore(root, None, np.float16), methods[part])
        part_queue[part] = queues[root]
    states = {p: PartState() for p in parts}
    part_keys: dict[str, list[np.ndarray]] = {p: [] for p in parts}
    stats: dict[str, Any] = {"computed": 0, "reused": 0, "rows": 0}
    t0 = time.perf_counter()
    executor_ = executor or InlineExecutor()
    inline = executor is None
    pending: deque[tuple[_Queue, list[bytes], Any]] = deque()
    bar = tqdm(desc=f"encode {system}", unit="text", unit_scale=True, dynamic_ncols=True)

    def finish(queue: _Queue, keys: list[bytes], fut: Any) -> None:
        result: ShardResult = fut.result()
        if result.embeddings.shape[0] != len(keys) or result.key != _unit_key(queue, keys):
            raise RuntimeError(f"encode {system}: a work unit came back with the wrong key or rows")
        queue.store.put(np.array(keys, dtype=DIGEST), result.embeddings)  # the resume point
        queue.queued.difference_update(keys)
        stats["computed"] += len(keys)
        if not inline:
            bar.update(len(keys))

    def submit(queue: _Queue) -> None:
        keys, texts = list(queue.buffer), tuple(queue.buffer.values())
        queue.buffer = {}
        spec = ShardSpec(_unit_key(queue, keys), location, load_revision, enc.max_seq_length,
                         accel.device, accel.dtype, 1, texts, cpu_kernels,
                         **_spec_method(queue.fields), kernels_key=base["cpu_kernels"])  # fmt: skip
        if inline:
            fut = executor_.submit(encode_shard, spec, progress=bar.update)
        else:
            fut = executor_.submit(encode_shard, spec)
        pending.append((queue, keys, fut))
        while len(pending) >= (1 if inline else MAX_IN_FLIGHT):
            finish(*pending.popleft())

    try:
        for part, path in parts.items():
            reader = read_collection(path) if part == "corpus" else read_queries(path)
            st, queue = states[part], part_queue[part]
            settings = {**head, **methods[part]}
            for index, chunk in enumerate(_chunks(reader, encode.shard_size)):
                blob = "".join(f"{i}\t{t}\n" for i, t in chunk).encode("utf-8")
                st.text_hash.update(blob)
                st.ids.extend(i for i, _ in chunk)
                text_sha = sha256_hex(blob)
                st.shards.append({
                    "file": f"{part}/{index:05d}.npy",
                    "key": shard_key(settings, text_sha),
                    "rows": len(chunk),
                    "first_id": chunk[0][0],
                    "last_id": chunk[-1][0],
                    "text_sha256": text_sha,
                })  # fmt: skip
                stats["rows"] += len(chunk)
                keys = [digest(t) for _, t in chunk]
                part_keys[part].append(np.array(keys, dtype=DIGEST))
                new = 0
                for j in np.flatnonzero(queue.store.missing(part_keys[part][-1])).tolist():
                    if keys[j] not in queue.queued:
                        queue.queued.add(keys[j])
                        queue.buffer[keys[j]] = chunk[j][1]
                        new += 1
                        if len(queue.buffer) >= encode.shard_size:
                            submit(queue)
                bar.update(len(chunk) - new)
        for queue in queues.values():
            if queue.buffer:
                submit(queue)
        while pending:
            finish(*pending.popleft())
    finally:
        bar.close()

    def shard_from_store(stage: Path, part: str, index: int, entry: dict[str, Any]) -> None:
        rows = part_queue[part].store.get(part_keys[part][index])
        with write_bytes_atomic(stage / entry["file"], gz=False) as fh:
            np.save(fh, np.ascontiguousarray(rows, dtype=np.float16), allow_pickle=False)
        entry["sha256"] = file_digest(stage / entry["file"], "sha256")

    dim = part_queue[next(iter(parts))].store.width
    _write_output(out_dir, head, system, params.model, enc, states, parts, dim or 0, shard_from_store)
    stats["reused"] = stats["rows"] - stats["computed"]
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    log.info(
        "encode %s: %d rows, %d texts encoded (one at a time), %d found in the text store, %.0f texts/s (%s)",
        system, stats["rows"], stats["computed"], stats["reused"],
        stats["rows"] / stats["seconds"] if stats["seconds"] else 0.0, accel.describe(),
    )  # fmt: skip
    record_work(f"encode@{system}", "texts", done=stats["computed"], total=stats["rows"])
    return stats


def _unit_key(queue: _Queue, keys: list[bytes]) -> str:
    """A work unit's name: its store and the digests of its texts, in order."""
    return sha256_hex(str(queue.store.root.name).encode() + b"".join(keys))


# --------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class Embeddings:
    """A part of an encode output: ids and float16 shards (memory-mapped on demand)."""

    root: Path
    part: str
    ids: np.ndarray
    shards: tuple[dict[str, Any], ...]
    dim: int

    def iter_shards(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, vectors float16)`` per shard, in order."""
        start = 0
        for entry in self.shards:
            vec = np.load(self.root / entry["file"], mmap_mode="r")
            if vec.shape != (entry["rows"], self.dim):
                raise DataError(
                    f"{self.root / entry['file']}: shape {vec.shape} != ({entry['rows']}, {self.dim})"
                )
            yield self.ids[start : start + entry["rows"]], vec
            start += entry["rows"]

    def load(self) -> np.ndarray:
        return np.concatenate([v for _, v in self.iter_shards()]) if self.shards else np.zeros((0, self.dim))


def read_manifest(emb_dir: str | Path) -> dict[str, Any]:
    path = Path(emb_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no embeddings manifest; run `python -m tasks.encode` first")
    return read_json(path)


def load_part(emb_dir: str | Path, part: str) -> Embeddings:
    emb_dir = Path(emb_dir)
    manifest = read_manifest(emb_dir)
    if manifest.get("skipped"):
        raise ValueError(f"{emb_dir}: system was skipped at encode time ({manifest['skipped']})")
    if part not in manifest["parts"]:
        raise DataError(f"{emb_dir}/manifest.json: no part {part!r} (has {', '.join(manifest['parts'])})")
    info = manifest["parts"][part]
    ids = np.load(emb_dir / info["ids"])
    if len(ids) != info["rows"]:
        raise DataError(f"{emb_dir / info['ids']}: {len(ids)} ids, manifest says {info['rows']}")
    return Embeddings(emb_dir, part, ids, tuple(info["shards"]), int(manifest["dim"]))


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.encode",
        "Encode the corpus and the train/dev/DL19 queries with one system's bi-encoder into float16 "
        "shards + manifest under paths.embeddings/<system>/. Resumable: complete shards are kept in "
        "paths.embedding_cache and reused (by model, revision and text hash).",
        "python -m tasks.encode --system smoke-bi-cls-dot",
    )
    parser.add_argument("--system", required=True, help="a key of 'systems' in params.yaml")
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        system = cfg.system(args.system)
        parts = {"corpus": cfg.input_path("collection"), "train": cfg.input_path("queries_train")}
        parts.update(cfg.eval_queries())  # dev and dl19, or your own corpus's eval split
        out, cache = cfg.path("embeddings") / args.system, cfg.path("embedding_cache")
        # shards go to the Dask cluster (orchestration.dask_address) or local worker processes;
        # where they run never changes the bytes (a shard depends only on its spec)
        with shard_executor(cfg.orchestration, device=cfg.encode.device) as ex:  # 1 worker per GPU
            stats = run(
                args.system, system, cfg.encode, parts, out, cache,
                executor=None if isinstance(ex, InlineExecutor) else ex,
            )  # fmt: skip
        log.info("stats: %s", json.dumps(stats, sort_keys=True))

    return run_stage(args.params, work, lock=f"encode@{args.system}")  # systems may run side by side


if __name__ == "__main__":
    sys.exit(main())
