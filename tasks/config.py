"""The one typed, validated view of ``params.yaml``.

``params.yaml`` is composed from ``conf/base.yaml`` and ``conf/profile/<name>.yaml``
(``python -m tasks.config use <name>``) and is the file every stage and DVC read.
Every section is a pydantic model with ``extra="forbid"``: a typo or a bad value fails at
load time with the dotted key and the allowed values.

    python -m tasks.config use msmarco   # switch profile (rewrites params.yaml)
    python -m tasks.config check         # validate params.yaml
    python -m tasks.config show bm25     # print one section, resolved

A profile for a corpus of your own: ``python -m tasks.profile_init mydata --beir path/to/folder``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
CONF = ROOT / "conf"

PositiveInt = Annotated[int, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class ConfigError(ValueError):
    """``params.yaml`` is missing, malformed, or names an unknown or invalid key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- paths / data
class Paths(Section):
    """Every path the pipeline reads or writes, relative to the project root."""

    downloads: str = Field(description="archive cache of raw downloads (re-verified, not DVC-tracked)")
    raw: str = Field(description="one directory per source, extracted: download stage outputs")
    models: str = Field(description="smoke models built locally for the sample profile")
    qa: str = Field(description="QA v2.1 conversions: jsonl, well-formed subsets, stats")
    bm25_index: str
    embeddings: str = Field(description="per-system embedding shards + manifest")
    embedding_cache: str = Field(description="content-addressed embedding cache shared by runs")
    runs: str = Field(description="per-system TREC runs on dev / TREC DL 2019")
    negatives: str = Field(description="per-system mined hits (Parquet: qid, rank, pid, score)")
    out: str = Field(description="published-format outputs (hard negatives, CE score pickle)")
    scores: str = Field(description="cross-encoder scores: canonical Parquet + shard manifest")
    mine_scores: str = Field(
        description="mine_scores: the cross-encoder scores mine_export's options need (Parquet + manifest)"
    )
    score_cache: str = Field(
        description="content-addressed cross-encoder shard cache of score and ce_rerank (the resume point)"
    )
    mine_cache: str = Field(
        "data/cache/mine/{profile}",
        description="mine.incremental: each system's last ranked lists, merged into by the next refresh",
    )
    exports: str = Field(description="training-ready exports")
    metrics: str = Field(description="DVC metrics (JSON) and plots data")
    report: str = Field(description="human-readable evaluation report with PNG figures")
    hf: str = Field(
        description="Hugging Face dataset folders in the published layouts (tasks.hf_export), one per dataset"
    )
    datasets: str = Field(
        description="mine_export: one Hugging Face dataset folder per system (mine_hard_negatives formats)"
    )


class Source(Section):
    """One remote file: where it lives, what it must hash to, and how to unpack it."""

    url: str
    md5: str | None = Field(description="expected md5; null only for files you add yourself")
    size: PositiveInt | None = None
    unpack: Literal["none", "gunzip", "untar"] = "none"
    optional: bool = Field(False, description="skipped (not failed) by the sample profile's stages")

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("https://", "http://", "file:")):
            raise ValueError("url must start with https://, http:// or file:")
        return v

    @field_validator("md5")
    @classmethod
    def _md5(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 32 or any(c not in "0123456789abcdef" for c in v)):
            raise ValueError("md5 must be 32 lowercase hex digits")
        return v


class Inputs(Section):
    """Logical input files, as paths under ``paths.raw``."""

    collection: str
    queries_train: str
    qrels_train: str
    queries_dev: str
    qrels_dev: str
    queries_dl19: str
    qrels_dl19: str
    qa_train: str
    qa_dev: str
    top1000_dev: str = Field(description="official dev re-ranking candidates (evaluate.dev_candidates)")
    top1000_dl19: str = Field(
        description="official TREC DL 2019 re-ranking candidates (evaluate.dl19_candidates)"
    )


class Dataset(Section):
    """A corpus of your own (``datasets.<name>``): read by the ``ingest`` stage into the layout every
    other stage reads (``paths.raw/<name>/``, int ids 0..n-1 plus the maps back to your ids).

    - ``beir``: ``path`` is a BEIR folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
      ``queries.jsonl`` (``_id``, ``text``), ``qrels/<split>.tsv`` (header ``query-id corpus-id score``).
    - ``hf``: ``path`` is a Hugging Face dataset of (query, positive) pairs, as
      ``mine_hard_negatives`` takes it: data files (jsonl/json/csv/parquet) or a ``save_to_disk``
      folder, one split per name. The corpus is the positives plus the optional ``corpus`` file.
      A hub dataset (``hub_id``) is first saved to ``path`` by ``python -m tasks.ingest fetch``.
    - ``ir_datasets``: ``python -m tasks.ingest fetch`` exports the ``ir_id`` dataset (and
      ``ir_eval_id``) to ``path`` as a BEIR folder, which the stage then reads.

    ``path`` is a DVC dependency of the stage, so a changed corpus re-runs everything downstream.
    """

    format: Literal["beir", "hf", "ir_datasets"]
    path: str = Field(
        min_length=1, description="the local folder the stage reads (hf: data files or save_to_disk)"
    )
    train_split: str = Field("train", min_length=1, description="the split whose queries are mined")
    eval_split: str = Field(
        "test", min_length=1, description="the split the evaluate stage measures (NDCG@10, MRR@10, Recall@k)"
    )
    title: Literal["prepend", "drop"] = Field(
        "prepend", description="prepend = 'title text' (BEIR's convention), drop = text only"
    )
    query_column: str = Field("query", min_length=1, description="hf: the query (anchor) column")
    positive_column: str = Field("positive", min_length=1, description="hf: the positive passage column")
    corpus: str | None = Field(None, description="hf: extra corpus file (jsonl/json/csv/parquet)")
    corpus_column: str = Field("text", min_length=1, description="hf: the text column of the extra corpus")
    hub_id: str | None = Field(None, description="hf: hub dataset id that `tasks.ingest fetch` saves")
    revision: str | None = Field(None, description="hf: hub revision (pin it: a commit sha)")
    ir_id: str | None = Field(None, description="ir_datasets: id of the mined (train) dataset")
    ir_eval_id: str | None = Field(None, description="ir_datasets: id of the evaluation dataset")
    empty_passages: Literal["fail", "keep"] = Field(
        "fail",
        description="a document with neither title nor text: fail naming its file, line and id, or keep "
        "it (counted and warned about; some published corpora hold a few)",
    )

    @model_validator(mode="after")
    def _fetchable(self) -> Dataset:
        if self.format == "ir_datasets" and not self.ir_id:
            raise ValueError("ir_datasets needs ir_id (the dataset `python -m tasks.ingest fetch` exports)")
        if self.eval_split == self.train_split:
            raise ValueError(
                f"eval_split {self.eval_split!r} is the train_split: evaluate on held-out queries"
            )
        return self


# Files the ingest stage writes under paths.raw/<name>/ (the layout the other stages read).
DATASET_INPUTS = {
    "collection": "collection.tsv",
    "queries_train": "queries.train.tsv",
    "qrels_train": "qrels.train.tsv",
    "queries_dev": "queries.eval.tsv",
    "qrels_dev": "qrels.eval.tsv",
}
DATASET_MANIFEST = "manifest.json"
CORPUS_IDS = "corpus_ids.txt"  # line i: your id of passage i
QUERY_IDS = "query_ids.txt"  # line i: your id of query i


def dataset_inputs(name: str) -> dict[str, str]:
    """``inputs`` of a profile that reads corpus ``name``: the files ingest writes. A corpus of your
    own has no TREC DL 2019 set, no QA v2.1 files and no official candidate lists; those inputs name
    the ingest manifest, a file that exists, so the stages' static DVC deps stay valid. No stage
    reads them there (:attr:`Config.eval_sets`, ``convert.splits: []``, candidates ``bm25``)."""
    absent = f"{name}/{DATASET_MANIFEST}"
    out = {k: f"{name}/{v}" for k, v in DATASET_INPUTS.items()}
    for key in ("queries_dl19", "qrels_dl19", "qa_train", "qa_dev", "top1000_dev", "top1000_dl19"):
        out[key] = absent
    return out


class Download(Section):
    """How the download stage talks to servers (not what it fetches: that is ``sources``).

    Changing these never changes a downloaded file, so the DVC stage does not list them.
    """

    retries: Annotated[int, Field(ge=0)] = Field(5, description="retries after the first attempt")
    backoff_s: NonNegFloat = Field(1.0, description="first retry delay; doubles per retry, with jitter")
    backoff_max_s: NonNegFloat = Field(60.0, description="cap on one retry delay (and on Retry-After)")
    stall_timeout_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="seconds without a byte (or to connect) before the attempt is retried"
    )
    chunk_bytes: PositiveInt = Field(1 << 20, description="read size when copying file: sources")


# --------------------------------------------------------------------------- stages
class Convert(Section):
    """QA v2.1 conversion (``tasks.convert``): which splits, and where the column spills go."""

    splits: list[str] = Field(["train", "dev"], description="QA splits converted (keys qa_<split>)")
    tmp_dir: str | None = Field(
        None,
        description="scratch directory for column spills (about the uncompressed input size); "
        "null = next to the outputs under paths.qa",
    )

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: list[str]) -> list[str]:
        for split in v:
            if split not in ("train", "dev"):
                raise ValueError(f"unknown split {split!r}: each needs an inputs.qa_<split> (train, dev)")
        if len(set(v)) != len(v):
            raise ValueError("splits must not repeat")
        return v


class Elasticsearch(Section):
    """Connection comes from the environment (ELASTICSEARCH_URL, _API_KEY, _USER/_PASSWORD,
    _CA_CERTS), never from params, so credentials stay out of the repo and the logs."""

    index: str = "msmarco-passages"
    shards: PositiveInt = 1
    replicas: Annotated[int, Field(ge=0)] = 0
    bulk_docs: PositiveInt = 2000
    msearch_batch: PositiveInt = 200
    request_timeout_s: PositiveInt = 120
    max_retries: Annotated[int, Field(ge=0)] = 8


class Bm25(Section):
    """Lucene BM25 (Elasticsearch's defaults k1=1.2, b=0.75). The embedded engine (tantivy) has
    these constants built in; other k1/b re-score its top ``rescore_depth`` candidates exactly."""

    backend: Literal["embedded", "elasticsearch"] = "embedded"
    k1: NonNegFloat = 1.2
    b: Annotated[float, Field(ge=0, le=1)] = 0.75
    analyzer: Literal["english", "standard"] = Field(
        "english", description="english: lowercase+stopwords+stemming; standard: lowercase tokens"
    )
    threads: PositiveInt = Field(2, description="query worker processes of the mining stage")
    index_threads: PositiveInt = Field(
        1,
        description="embedded indexing threads; 1 gives a byte-identical index for the same input, "
        "more index faster but split documents across segments at random (search results stay identical)",
    )
    index_heap_mb: Annotated[int, Field(ge=20, le=4000)] = Field(
        1000,
        description="embedded indexer memory budget per thread (MB); more = fewer segments. The index is "
        "byte-identical while it is written in fewer than 8 segments (a segment holds 89k passages at 40 MB, "
        "600k+ at 200 MB); from 8, tantivy merges them in background threads and the bytes vary (search "
        "results do not)",
    )
    rescore_depth: PositiveInt = Field(1000, description="embedded, k1/b not 1.2/0.75: candidates re-scored")
    query_batch: PositiveInt = Field(256, description="queries per work unit sent to a worker")
    elasticsearch: Elasticsearch = Elasticsearch()


class SmokeModels(Section):
    """Tiny random-init models for the sample profile (smoke tests, not real retrievers)."""

    vocab_size: PositiveInt = 2000
    hidden_size: PositiveInt = 64
    layers: PositiveInt = 2
    heads: PositiveInt = 2
    intermediate_size: PositiveInt = 128
    max_seq_length: PositiveInt = Field(128, description="tokenizer/model max length of the smoke models")
    vocab_passages: PositiveInt = Field(
        50000, description="the vocabulary is trained on the first N passages"
    )


PROMPT_DOC = (
    "literal text put before every {side} (sentence-transformers' `prompt`); null = the model's own "
    "`{side}` prompt. Exclusive with {side}_prompt_name"
)
PROMPT_NAME_DOC = (
    "a key of the model's `prompts` (config_sentence_transformers.json) whose text goes before every "
    "{side}; null = the model's own `{side}` prompt. Exclusive with {side}_prompt"
)


class DenseSystem(Section):
    """One system of the ``neg`` dict: a bi-encoder and how it scores.

    Explicit values are used as given; ``score: auto`` and ``max_seq_length: null`` take the
    model's own settings, and prompts default to the model's ``query`` / ``document`` prompts
    (resolved by :func:`tasks.models.resolve_encoding`, recorded in the embeddings manifest).
    """

    model: str | None = Field(description="hub id or local path; null = no public weights (skipped)")
    revision: str | None = Field(None, description="hub commit to pin; null for local paths")
    score: Literal["cos", "dot", "auto"] = Field(
        "auto",
        description="cos (L2-normalised) or dot; auto (or null) = the model's own similarity_fn_name "
        "(cosine -> cos, dot -> dot; any other, or none, is an error asking to set this key)",
    )
    max_seq_length: PositiveInt | None = Field(
        256, description="tokens kept per text; null = the model's own max sequence length"
    )
    query_prompt: str | None = Field(None, description=PROMPT_DOC.format(side="query"))
    query_prompt_name: str | None = Field(None, description=PROMPT_NAME_DOC.format(side="query"))
    document_prompt: str | None = Field(None, description=PROMPT_DOC.format(side="document"))
    document_prompt_name: str | None = Field(None, description=PROMPT_NAME_DOC.format(side="document"))
    smoke: bool = Field(False, description="a tiny local model built by the smoke_models stage")
    evidence: str | None = Field(
        None,
        description="how `model` is known to be the checkpoint that mined this system's published "
        "list (e.g. the model's config.json `_name_or_path`); null = not evidenced: confirm it with "
        "the parity report against the published file (`python -m tasks.config registry`)",
    )

    @field_validator("score", mode="before")
    @classmethod
    def _score_null_is_auto(cls, v: object) -> object:
        return "auto" if v is None else v

    @model_validator(mode="after")
    def _one_prompt_per_side(self) -> DenseSystem:
        for side in ("query", "document"):
            text, name = getattr(self, f"{side}_prompt"), getattr(self, f"{side}_prompt_name")
            if text is not None and name is not None:
                raise ValueError(
                    f"{side}_prompt and {side}_prompt_name are mutually exclusive: set {side}_prompt "
                    f"(the text) or {side}_prompt_name (a key of the model's prompts), not both"
                )
        return self


CPU_KERNELS_DOC = (
    "CPU kernels of the model (tasks.accel.pin_cpu_kernels): avx2 (default) = the same fp32 bits on every "
    "Intel CPU with AVX2, AVX-512 ones included (on other vendors' CPUs MKL runs its AUTO branch: the bits "
    "of that CPU model, which cache keys name); native = each CPU's widest kernels (other CPUs then "
    "agree only within a tolerance, see the README)"
)
DTYPE_DOC = (
    "fp32 (default) reproduces the published fp32 artifacts on CPU and CUDA; bf16 / fp16 are opt-in "
    "and drift from fp32 (measured in benchmarks/precision_bench.py, see benchmarks/RESULTS.md); "
    "auto: the fastest, bf16 (fp16 without bf16) on CUDA, bf16 on CPUs with AMX/avx512_bf16, else fp32"
)


ADDRESSING_DOC = (
    "shard: embeddings cached per shard of shard_size texts, encoded in length-sorted batches of "
    "batch_size (the published bits); text: cached per text (model + text hash) and each text encoded "
    "alone, so an embedding never depends on its neighbours: a refresh of a changed corpus encodes "
    "only the new texts and ends byte-identical to a full rebuild (about 0.8x batch speed on 2 CPU "
    "cores, measured on 2,000 texts of 5-120 words; far slower on a GPU)"
)


BATCH_ORDER_DOC = (
    "how a shard's texts are grouped into batches (addressing shard): chars = by character length, "
    "as sentence-transformers' encode sorts (the published bits; the default); tokens = by token "
    "count, so a batch pads little (benchmarks/batch_order_bench.py, all-MiniLM-L6-v2, batches of "
    "64: 9.5% more passage tokens and 35% more query tokens computed than the texts hold by chars, "
    "0.6% and 7.1% by tokens; 0.97x and 0.83x the wall time on 2 CPU cores). "
    "Embeddings change in their last bits (batch neighbours), so cache keys change; own-corpus "
    "profiles from tasks.profile_init use tokens"
)


class Encode(Section):
    batch_size: PositiveInt = Field(64, description="texts per forward pass (addressing shard)")
    shard_size: PositiveInt = 2000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("fp32", description=DTYPE_DOC)
    cpu_kernels: Literal["avx2", "native"] = Field("avx2", description=CPU_KERNELS_DOC)
    addressing: Literal["shard", "text"] = Field("shard", description=ADDRESSING_DOC)
    batch_order: Literal["chars", "tokens"] = Field("chars", description=BATCH_ORDER_DOC)


class Search(Section):
    index: Literal["flat", "hnsw", "ivfpq"] = "flat"
    hnsw_m: PositiveInt = 32
    hnsw_ef_search: PositiveInt = 128
    ivf_nlist: PositiveInt = 1024
    ivf_nprobe: PositiveInt = 32
    pq_m: PositiveInt = 48
    query_chunk: PositiveInt = 1024
    memory_mb: PositiveInt = Field(
        4096,
        description="flat search: float32 corpus held at once (host RAM on CPU, GPU memory on CUDA); "
        "a larger corpus streams past the queries in blocks of whole shards, each prepared once",
    )


class Mine(Section):
    top_k: PositiveInt = 50
    eval_depth: PositiveInt = Field(1000, description="hits kept per dev/DL19 query for evaluation")
    incremental: bool = Field(
        False,
        description="keep each query's ranked list (twice the depth) in paths.mine_cache; a rerun on a "
        "changed corpus searches only the new passages and the new or edited queries, merges them in "
        "and re-searches a query only when its list lost too much: byte-identical to a full search "
        "(flat index only)",
    )


class CrossEncoderCfg(Section):
    """The cross-encoder of the ``score`` and ``ce_rerank`` stages (raw logits are stored)."""

    name: str = Field(description="export name: <name>-scores.pkl.gz")
    model: str = Field(description="hub id or a path relative to the project root")
    revision: str | None = Field(None, description="hub commit to pin; null for local paths")
    max_length: PositiveInt = Field(512, description="tokens per (query, passage) pair; longer is truncated")
    batch_size: PositiveInt = Field(64, description="pairs per forward pass (batches are length-bucketed)")
    shard_size: PositiveInt = Field(
        20000, description="pairs per resumable shard; bounds memory per worker and work lost to a kill"
    )
    backend: Literal["torch", "onnx", "openvino"] = Field(
        "torch", description="onnx/openvino: CPU only, need the sentence-transformers[onnx|openvino] extra"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("fp32", description=DTYPE_DOC)
    cpu_kernels: Literal["avx2", "native"] = Field("avx2", description=CPU_KERNELS_DOC)
    smoke: bool = Field(False, description="a tiny local model built by the smoke_models stage")
    addressing: Literal["shard", "pair"] = Field(
        "shard",
        description="shard: scores cached per shard of shard_size pairs, scored in length-sorted batches "
        "(the published bits); pair: cached per (query text, passage text) and each pair scored alone, "
        "so a refresh scores only the pairs it has never seen and ends byte-identical to a full rebuild",
    )


class Denoise(Section):
    """Drop negatives the cross-encoder scores too close to the query's weakest positive.

    ``m = min CE(pos)`` (raw logits), compared in float64; see :mod:`tasks.denoise`.
    """

    rule: Literal["absolute", "relative"] = Field(
        "absolute",
        description="absolute: keep iff CE(neg) <= m - margin (m = min CE(pos), logits); relative "
        "(NV-Retriever's TopK-PercPos on the probability): keep iff sigmoid(CE(neg)) <= relative * "
        "sigmoid(m). denoise.json counts the drops of both rules",
    )
    margin: NonNegFloat = Field(
        3.0, description="absolute rule: logit margin below m (sentence-transformers used 3.0)"
    )
    relative: Annotated[float, Field(gt=0, le=1)] = Field(
        0.95,
        description="relative rule: keep iff sigmoid(CE(neg)) <= relative * sigmoid(m), the "
        "probabilities in float64; 1 keeps a negative that ties m",
    )


class Export(Section):
    """Training-ready Parquet exports (triplets, MarginMSE rows)."""

    negatives_per_system: PositiveInt = Field(1, description="negatives drawn per system and query")
    systems: list[str] | Literal["all"] = Field("all", description="systems to draw from; all = every one")


class HfExport(Section):
    """Hugging Face datasets in sentence-transformers' published layouts (``tasks.hf_export``)."""

    systems: list[str] | Literal["all"] = Field("all", description="systems exported; all = every one")
    margin: NonNegFloat = Field(
        3.0, description="triplet-hard keeps a negative when CE(pos) - CE(neg) > margin (published: 3.0)"
    )
    negatives: PositiveInt = Field(
        50, description="negative columns of triplet-<n> (published: 50); a query with fewer has no row"
    )
    shard_mb: Annotated[float, Field(gt=0)] = Field(
        1024.0,
        description="uncompressed MB of rows per Parquet file; more start the next train-NNNNN-of-NNNNN file",
    )


MINING_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
MiningFormat = Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"]


class MiningOptions(Section):
    """The options of ``mine_export`` that each system may override (``mining.per_system.<system>``).

    They follow ``sentence_transformers.util.mine_hard_negatives``; the exact rules (the order of
    the filters, what the ranks index, how the scores compare) are in :mod:`tasks.mine_export`.
    """

    range_min: Annotated[int, Field(ge=0)] = Field(
        0, description="skip the first range_min candidates that pass the score filters (in selection order)"
    )
    range_max: PositiveInt | None = Field(
        None,
        description="candidates: the system's first range_max hits (positives removed); null = mine.top_k, "
        "more than mine.top_k is an error (the hits files hold only that many)",
    )
    num_negatives: PositiveInt = Field(
        3, description="negatives per query (n-tuple: its negative_1..n columns)"
    )
    sampling_strategy: Literal["top", "random"] = Field(
        "top",
        description="top: the first num_negatives eligible candidates; random: num_negatives of them drawn "
        "without replacement, seeded per (seed, system, qid), kept in selection order",
    )
    seed: int | None = Field(None, description="random sampling seed; null = the params' top-level seed")
    absolute_margin: float | None = Field(
        None, description="keep a candidate iff CE(neg) + absolute_margin <= min CE(pos); null = off"
    )
    relative_margin: float | None = Field(
        None,
        description="keep a candidate iff CE(neg) <= m - |m| * relative_margin, m = min CE(pos); null = off",
    )
    max_score: float | None = Field(None, description="keep a candidate iff CE(neg) <= max_score; null = off")
    min_score: float | None = Field(None, description="keep a candidate iff CE(neg) >= min_score; null = off")
    formats: list[MiningFormat] = Field(
        ["triplet"],
        min_length=1,
        description="output formats, each a dataset config: " + ", ".join(MINING_FORMATS),
    )
    output_scores: bool = Field(
        False,
        description="add the cross-encoder scores: triplet/n-tuple a scores list column; labeled-pair/list "
        "score(s) in place of label(s)",
    )

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        repeated = sorted({f for f in v if v.count(f) > 1})
        if repeated:
            raise ValueError(f"formats lists {repeated} more than once")
        return v

    @property
    def filtered(self) -> bool:
        """Whether a cross-encoder score filter is on (candidates are then ordered by CE score)."""
        filters = (self.absolute_margin, self.relative_margin, self.max_score, self.min_score)
        return any(v is not None for v in filters)


class Mining(MiningOptions):
    """Stage ``mine_export``: sentence-transformers' ``mine_hard_negatives`` options over our mined
    hits and cross-encoder scores, one dataset per system (:mod:`tasks.mine_export`)."""

    systems: list[str] | Literal["all"] = Field(
        "all", description="systems mined: all = bm25 and every dense system (params order), or a list"
    )
    per_system: dict[str, MiningOptions] = Field(
        {}, description="per-system overrides, e.g. {bm25: {num_negatives: 5}}; unset keys keep mining's"
    )

    def options(self, system: str, top_k: int, seed: int) -> MiningOptions:
        """``system``'s resolved options: ``per_system`` over the section's own keys, ``range_max``
        defaulted to ``top_k`` and ``seed`` to the params' ``seed``. A bad combination raises a
        ``ValueError`` naming the keys (``mining[.per_system.<system>].range_max``, ``mine.top_k``)."""
        values = self.model_dump(include=set(MiningOptions.model_fields))
        override = self.per_system.get(system)
        overridden = override.model_fields_set if override is not None else set()
        if override is not None:
            values.update(override.model_dump(include=overridden))

        def key(name: str) -> str:
            return f"mining.per_system.{system}.{name}" if name in overridden else f"mining.{name}"

        lo, hi, n = values["range_min"], values["range_max"], values["num_negatives"]
        if hi is None:
            hi = values["range_max"] = top_k
        elif hi > top_k:
            raise ValueError(
                f"{key('range_max')} ({hi}) > mine.top_k ({top_k}): the hits files hold only mine.top_k "
                f"candidates per query; lower {key('range_max')} or raise mine.top_k"
            )
        if lo >= hi:
            raise ValueError(f"{key('range_min')} ({lo}) must be smaller than range_max ({hi}) for {system}")
        if n > hi - lo:
            raise ValueError(
                f"{key('num_negatives')} ({n}) > range_max - range_min ({hi} - {lo}) for {system}: "
                "not that many candidates; lower it or widen the range"
            )
        if values["seed"] is None:
            values["seed"] = seed
        return MiningOptions.model_validate(values)


class Evaluate(Section):
    """MRR@10 and NDCG@10 keep their official cut-offs; these are the knobs around them."""

    recall_cutoffs: list[PositiveInt] = Field([10, 50, 100, 1000], description="Recall@k in retrieval.json")
    dev_candidates: Literal["bm25", "top1000"] = Field(
        "bm25",
        description="re-ranking candidates of MS MARCO dev: bm25 = our BM25 run (paths.runs/bm25/"
        "dev.full.trec, ranked: cut at rerank_depth / ce_rerank_depth), top1000 = the official list "
        "(inputs.top1000_dev; unscored and in random order, so every candidate is re-ranked)",
    )
    dl19_candidates: Literal["bm25", "top1000"] = Field(
        "top1000",
        description="re-ranking candidates of TREC DL 2019: top1000 = the official list (inputs."
        "top1000_dl19, msmarco-passagetest2019-top1000.tsv: every candidate re-ranked, the setup of the "
        "published NDCG@10 re-ranking figures), bm25 = our BM25 run (paths.runs/bm25/dl19.full.trec, cut "
        "at rerank_depth / ce_rerank_depth)",
    )
    rerank_depth: PositiveInt = Field(
        1000,
        description="dense systems re-rank each query's top N of a BM25 run; an official (unordered) "
        "list is always re-ranked in full",
    )
    ce_rerank_depth: PositiveInt = Field(
        100,
        description="the cross-encoder re-ranks each query's top N of a BM25 run; an official "
        "(unordered) list is always re-ranked in full",
    )
    curve_cutoffs: list[PositiveInt] = Field(
        [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], description="k values of the recall@k curves (plots)"
    )
    score_bins: PositiveInt = Field(50, description="histogram bins of cross-encoder scores (pos vs neg)")


class Parity(Section):
    """The parity stage: this run's hard negatives and CE scores beside another run's (or the
    published files). All null = the stage writes a note and compares nothing."""

    reference_negatives: str | None = Field(
        None, description="the other run's msmarco-hard-negatives.jsonl.gz (relative to the project root "
        "or absolute); null = negatives not compared",
    )  # fmt: skip
    reference_scores: str | None = Field(
        None, description="the other run's score pickle (*.pkl.gz), ce-scores.parquet or scores directory; "
        "null = scores not compared",
    )  # fmt: skip
    reference_label: str = Field("reference", min_length=1, description="the other run's name in the report")
    k: PositiveInt = Field(50, description="list depth of overlap@k and Jaccard")


class Remote(Section):
    """The DVC remote that ``refresh`` pushes to and a second machine pulls from.

    ``python -m tasks.remote configure`` writes it into ``.dvc/config`` as the default remote.
    A relative ``url`` is a directory relative to the project root (the default, a sibling of
    the checkout, is shared by every clone in the same parent directory); ``s3://``, ``gs://``
    and ``azure://`` need DVC's extras (``pip install "dvc[s3]"``, ``dvc[gs]``, ``dvc[azure]``).
    """

    name: str = Field("store", pattern=r"^[A-Za-z0-9_-]+$", description="remote name in .dvc/config")
    url: str = Field("../hardnegs-dvc-remote", min_length=1)


class Orchestration(Section):
    dask_address: str | None = Field(None, description="tcp://host:8786 to scale out; null = local")
    local_workers: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="local processes for a model stage's shard work. auto = in-process on CPU (torch "
        "uses every core; fastest on one machine: one model load, no idle tail) and one worker per "
        "visible GPU on CUDA; N = N processes on CPU sharing the cores (1 = in-process), on CUDA one "
        "worker per visible GPU, at most N (one GPU: in-process, one model copy)",
    )
    remote: Remote = Remote()
    check_timeout_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="per-request timeout of the refresh flow's upstream HEAD checks"
    )
    refresh_on_change: Literal["fail", "repin"] = Field(
        "fail",
        description="a source changed upstream while sources.<name> still pins the old md5: fail = the "
        "refresh ends Failed and names `python -m tasks.sources_check accept <name>`; repin = fetch it, "
        "re-pin md5/size in conf/profile/<profile>.yaml and params.yaml, and rerun what depends on it",
    )
    stage_timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None,
        description="the flow ends a stage running longer than this (SIGTERM to its processes, SIGKILL "
        "after stage_kill_grace_s) and fails its task; null = no limit",
    )
    stage_timeouts: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="per-stage timeouts in seconds, by stage name (`score`, `mine@bm25`) or foreach "
        "base name (`mine`); they override stage_timeout_s",
    )
    stage_kill_grace_s: Annotated[float, Field(gt=0)] = Field(
        10.0, description="after SIGTERM (timeout, Ctrl-C, cancel), how long a stage may take to exit"
    )


# --------------------------------------------------------------------------- root
class Config(Section):
    profile: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 13
    paths: Paths
    sources: dict[str, Source]
    inputs: Inputs
    datasets: dict[str, Dataset] = Field(
        {}, description="your own corpus (at most one); empty = the MS MARCO profiles' downloads"
    )
    download: Download = Download()
    convert: Convert = Convert()
    bm25: Bm25 = Bm25()
    smoke_models: SmokeModels = SmokeModels()
    systems: dict[str, DenseSystem]
    encode: Encode = Encode()
    search: Search = Search()
    mine: Mine = Mine()
    cross_encoder: CrossEncoderCfg
    denoise: Denoise = Denoise()
    export: Export = Export()
    evaluate: Evaluate = Evaluate()
    hf_export: HfExport = HfExport()
    mining: Mining = Mining()
    parity: Parity = Parity()
    orchestration: Orchestration = Orchestration()

    @model_validator(mode="after")
    def _names(self) -> Config:
        if "bm25" in self.systems:
            raise ValueError("systems: 'bm25' is reserved for the BM25 system; rename the dense one")
        for name in self.systems:
            if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise ValueError(f"systems: name {name!r} may hold only letters, digits, '-', '_', '.'")
        return self

    @model_validator(mode="after")
    def _datasets(self) -> Config:
        if len(self.datasets) > 1:
            raise ValueError(f"datasets: one corpus per profile, found {', '.join(self.datasets)}")
        for name in self.datasets:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"datasets: name {name!r} may hold only letters, digits, '-', '_'")
            if name in self.sources:
                raise ValueError(f"datasets: {name!r} is also a source; both would write paths.raw/{name}")
            want = dataset_inputs(name)
            have = {k: getattr(self.inputs, k) for k in want}
            if have != want:
                bad = ", ".join(
                    f"inputs.{k} (is {have[k]!r}, must be {want[k]!r})" for k in want if have[k] != want[k]
                )
                raise ValueError(f"datasets.{name}: the other stages read what ingest writes: {bad}")
            if self.convert.splits:
                raise ValueError(f"datasets.{name}: convert.splits must be [] (QA v2.1 is MS MARCO's)")
            for key in ("dev_candidates", "dl19_candidates"):
                if getattr(self.evaluate, key) != "bm25":
                    raise ValueError(f"datasets.{name}: evaluate.{key} must be bm25 (no official lists)")
        return self

    @property
    def dataset(self) -> tuple[str, Dataset] | None:
        """``(name, Dataset)`` of a profile that reads your own corpus, else ``None`` (MS MARCO)."""
        return next(iter(self.datasets.items()), None)

    @property
    def eval_sets(self) -> tuple[str, ...]:
        """The evaluation sets of this profile: MS MARCO dev and TREC DL 2019, or (your own corpus)
        ``dev``, which holds your ``eval_split``."""
        return ("dev", "dl19") if self.dataset is None else ("dev",)

    def eval_queries(self) -> dict[str, Path]:
        """Query file of each evaluation set of this profile (``inputs.queries_<set>``)."""
        return {name: self.input_path(f"queries_{name}") for name in self.eval_sets}

    def eval_qrels(self) -> dict[str, Path]:
        """Judgements of each evaluation set of this profile (``inputs.qrels_<set>``)."""
        return {name: self.input_path(f"qrels_{name}") for name in self.eval_sets}

    def eval_set_label(self, name: str) -> str:
        """A set's name in reports: "MS MARCO dev", "TREC DL 2019", or your split's name."""
        ds = self.dataset
        if ds is not None and name == "dev":
            return f"{ds[0]} {ds[1].eval_split}"
        return {"dev": "MS MARCO dev", "dl19": "TREC DL 2019"}[name]

    @model_validator(mode="after")
    def _mining(self) -> Config:
        known = ["bm25", *self.systems]
        listed = [] if self.mining.systems == "all" else self.mining.systems
        for where, names in (("mining.systems", listed), ("mining.per_system", list(self.mining.per_system))):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(
                    f"{where} names {unknown}, not a system of this profile ({', '.join(known)})"
                )
        for name in known:
            self.mining.options(name, self.mine.top_k, self.seed)
        return self

    def mining_systems(self) -> list[str]:
        """The systems ``mine_export`` mines: ``mining.systems``, or bm25 and every dense system."""
        if self.mining.systems == "all":
            return ["bm25", *self.systems]
        return list(self.mining.systems)

    def path(self, key: str) -> Path:
        """Absolute path of ``paths.<key>``."""
        return ROOT / getattr(self.paths, key)

    def candidate_kind(self, name: str) -> Literal["bm25", "top1000"]:
        """``evaluate.<name>_candidates`` of evaluation set ``name`` (``dev`` | ``dl19``)."""
        if name not in ("dev", "dl19"):
            raise ConfigError(f"unknown evaluation set {name!r}: re-ranking candidates exist for dev, dl19")
        kind: Literal["bm25", "top1000"] = getattr(self.evaluate, f"{name}_candidates")
        return kind

    def candidates(self, name: str) -> Path:
        """The re-ranking candidates of evaluation set ``name`` (``dev`` | ``dl19``): our BM25 run
        (ranked, cut at the stage's depth) or the official list (``inputs.top1000_<name>``,
        unordered, re-ranked in full), as ``evaluate.<name>_candidates`` says."""
        if self.candidate_kind(name) == "top1000":
            return self.input_path(f"top1000_{name}")
        return self.path("runs") / "bm25" / f"{name}.full.trec"

    def candidates_label(self, name: str, depth: int | None = None) -> str:
        """What the re-ranking figures of evaluation set ``name`` re-rank, for reports: an
        official list is re-ranked whole; a BM25 run to ``depth`` (default ``evaluate.rerank_depth``,
        the dense systems'; the cross-encoder's is ``evaluate.ce_rerank_depth``)."""
        if self.candidate_kind(name) == "top1000":
            return "official top-1000 (all candidates re-ranked)"
        return f"BM25 top-{depth or self.evaluate.rerank_depth} (this run)"

    def input_path(self, key: str) -> Path:
        """Absolute path of a logical input under ``paths.raw`` (``inputs.<key>``)."""
        rel = getattr(self.inputs, key)
        if rel is None:
            raise ConfigError(f"params.yaml: inputs.{key} is not set for profile {self.profile!r}")
        return ROOT / self.paths.raw / rel

    def system(self, name: str) -> DenseSystem:
        try:
            return self.systems[name]
        except KeyError:
            raise ConfigError(
                f"params.yaml: no system {name!r} under 'systems' (known: {', '.join(self.systems)})"
            ) from None


def _format_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path = PARAMS) -> Config:
    """Load and validate ``params.yaml``; raises :class:`ConfigError` naming each bad key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such params file (run 'python -m tasks.config use sample')")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(path, exc)) from None


# --------------------------------------------------------------------------- composition
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _substitute(node: Any, profile: str) -> Any:
    if isinstance(node, str):
        return node.replace("{profile}", profile)
    if isinstance(node, dict):
        return {k: _substitute(v, profile) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, profile) for v in node]
    return node


HEADER = (
    "# Generated by `python -m tasks.config use {profile}` from conf/base.yaml + "
    "conf/profile/{profile}.yaml.\n"
    "# Edit conf/ and re-run that command (or edit here for a one-off `dvc exp run -S`).\n"
)


def dvc_param_keys(dvc_file: Path) -> set[str]:
    """The dotted keys of ``params.yaml`` that ``dvc_file`` reads: each ``${a.b}`` it interpolates
    (not foreach's ``key`` / ``item``) and each entry of a stage's ``params`` (``systems.${key}``
    counts as ``systems``). DVC reads them from the file itself, not from the typed defaults: a
    key missing there fails ``dvc repro`` ("Parameters ... are missing from 'params.yaml'")."""
    text = dvc_file.read_text(encoding="utf-8")
    keys = {r for r in re.findall(r"\$\{([A-Za-z_][\w.]*)\}", text) if r.split(".")[0] not in ("key", "item")}
    for stage in (yaml.safe_load(text) or {}).get("stages", {}).values():
        for entry in stage.get("do", stage).get("params", []):
            if isinstance(entry, str):
                keys.add(entry.split(".${")[0])
    return keys


def _fill_defaults(data: dict[str, Any], defaults: dict[str, Any], keys: Iterable[str]) -> None:
    """Write into ``data`` the typed default of each of ``keys`` that the profile leaves out."""
    for key in sorted(keys):
        node, default = data, defaults
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(default, dict) or part not in default:
                break
            default = default[part]
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            if isinstance(default, dict) and leaf in default and leaf not in node:
                node[leaf] = default[leaf]


def compose(profile: str, conf_dir: Path = CONF) -> str:
    """Return the text of ``params.yaml`` for ``profile`` (validated)."""
    prof_file = conf_dir / "profile" / f"{profile}.yaml"
    if not prof_file.exists():
        known = sorted(p.stem for p in (conf_dir / "profile").glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r}; known: {', '.join(known)}")
    base = yaml.safe_load((conf_dir / "base.yaml").read_text(encoding="utf-8")) or {}
    over = yaml.safe_load(prof_file.read_text(encoding="utf-8")) or {}
    if over.get("datasets"):
        # A corpus of your own: none of MS MARCO's downloads, QA splits or official lists.
        base = {k: v for k, v in base.items() if k not in ("sources", "inputs")}
        name = next(iter(over["datasets"]))  # more than one fails validation below, naming them
        over = _merge(
            {
                "sources": {},
                "inputs": dataset_inputs(name),
                "convert": {"splits": []},
                "evaluate": {"dev_candidates": "bm25", "dl19_candidates": "bm25"},
            },
            over,
        )
    data = _substitute(_merge(base, over), profile)
    data["profile"] = profile
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(prof_file, exc)) from None
    dvc_file = conf_dir.parent / "dvc.yaml"
    if dvc_file.exists():
        _fill_defaults(data, cfg.model_dump(mode="json"), dvc_param_keys(dvc_file))
    ordered = {"profile": data.pop("profile"), **data}
    return HEADER.format(profile=profile) + yaml.safe_dump(ordered, sort_keys=False, width=100)


def registry_markdown(cfg: Config) -> str:
    """The system registry as a Markdown table: system, model, score, and the evidence that the
    model is the checkpoint behind the published system of that name (or what to do without it)."""
    lines = [
        f"System registry of profile `{cfg.profile}`:",
        "",
        "| System | Model | Score | Evidence |",
        "|---|---|---|---|",
    ]
    for name, system in cfg.systems.items():
        if system.model is None:
            evidence = "no public weights: skipped (set `model` to a checkpoint you hold)"
        elif system.smoke:
            evidence = "smoke model built by the pipeline (not a published system)"
        elif system.evidence:
            evidence = system.evidence
        else:
            evidence = (
                "**not evidenced**: compare this system's lists with the published file "
                "(`python -m tasks.parity`, overlap@50 near 1.0 confirms it)"
            )
        model = system.model or "–"
        if system.revision:
            model += f" @ {system.revision[:12]}"
        score = "auto (the model's similarity_fn_name)" if system.score == "auto" else system.score
        lines.append(f"| {name} | {model} | {score} | {evidence} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.config",
        description="Compose, validate and inspect params.yaml.",
        epilog="example: python -m tasks.config use msmarco && dvc repro",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    use = sub.add_parser(
        "use",
        help="write params.yaml for a profile (sample | msmarco | scale; for scale, generate its data "
        "and profile first: python -m tasks.scale_data --passages N)",
    )
    use.add_argument("profile")
    use.add_argument("--output", type=Path, default=PARAMS)
    chk = sub.add_parser("check", help="validate params.yaml and report the active profile")
    chk.add_argument("--params", type=Path, default=PARAMS)
    reg = sub.add_parser(
        "registry",
        help="print the system registry: each system's model, how the mapping to the published "
        "system is evidenced, and which systems are not (confirm those with tasks.parity)",
    )
    reg.add_argument("--params", type=Path, default=PARAMS)
    show = sub.add_parser("show", help="print one section of the validated config as YAML")
    show.add_argument("section", nargs="?")
    show.add_argument("--params", type=Path, default=PARAMS)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "use":
            from tasks.io import write_text_atomic

            text = compose(args.profile)
            with write_text_atomic(args.output, gz=False) as fh:
                fh.write(text)
            sys.stderr.write(f"{args.output}: profile {args.profile}\n")
        elif args.cmd == "check":
            cfg = load_config(args.params)
            sys.stderr.write(
                f"{args.params}: valid (profile {cfg.profile}, systems: {', '.join(cfg.systems)})\n"
            )
            unproven = [n for n, s in cfg.systems.items() if s.model and not s.smoke and not s.evidence]
            if unproven:
                sys.stderr.write(
                    f"note: the model of {', '.join(unproven)} is not evidenced to be the published "
                    "system's checkpoint; see `python -m tasks.config registry`\n"
                )
        elif args.cmd == "registry":
            sys.stdout.write(registry_markdown(load_config(args.params)))
        else:
            cfg = load_config(args.params)
            dump = cfg.model_dump(mode="json")
            if args.section:
                if args.section not in dump:
                    raise ConfigError(f"no section {args.section!r}; sections: {', '.join(dump)}")
                dump = {args.section: dump[args.section]}
            sys.stdout.write(yaml.safe_dump(dump, sort_keys=False))
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
