"""Build the tiny SMOKE models of the ``sample`` profile, locally and deterministically.

These are NOT retrievers: each is a randomly initialised, 2-layer BERT with a WordPiece
vocabulary trained on the sample's passages. They exist so that every model-using stage
(encode, mine, cross-encoder scoring, re-ranking) runs end to end offline, in seconds,
with the real sentence-transformers code paths. Their scores carry no meaning.

Three models are written under ``paths.models``:

- ``smoke-bi-cls-dot``: SentenceTransformer (Transformer + CLS pooling), dot product.
- ``smoke-bi-mean-cos``: SentenceTransformer (Transformer + mean pooling + Normalize), cosine.
- ``smoke-cross-encoder``: CrossEncoder (BertForSequenceClassification, ``num_labels=1``).

Same collection + params + seed => byte-identical files (weights, tokenizer, configs). The
configs embed the installed library versions (``transformers_version`` in ``config.json``,
``__version__`` in ``config_sentence_transformers.json``), so a library upgrade changes
those bytes, never the run time, the host, the checkout path or the environment (HF_* /
TRANSFORMERS_* variables, locale, thread count: ``tests/test_env_independence.py``).

A profile where no system and no cross-encoder has ``smoke: true`` (your own corpus with real
models) gets ``paths.models`` with a README only: nothing is built and torch is not imported.

    python -m tasks.smoke_models            # reads inputs.collection, writes paths.models/*
"""

from __future__ import annotations

import itertools
import logging
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from tasks.accel import cpu_flags, pin_cpu_kernels
from tasks.cli import run_stage, stage_parser
from tasks.config import Config, SmokeModels
from tasks.io import atomic_dir, write_text_atomic
from tasks.records import read_collection

log = logging.getLogger(__name__)

BI_CLS_DOT = "smoke-bi-cls-dot"
BI_MEAN_COS = "smoke-bi-mean-cos"
CROSS_ENCODER = "smoke-cross-encoder"
NAMES = (BI_CLS_DOT, BI_MEAN_COS, CROSS_ENCODER)
SPECIAL_TOKENS: list[str] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The freshly written base is always read back with these kwargs, whatever the environment:
# transformers records the loader's ``local_files_only`` in ``tokenizer_config.json``, and
# would otherwise take it from ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` (so a worker
# started without the Makefile's environment wrote different model bytes). True is the
# truth here (the base is a local directory) and the value the committed models carry.
LOCAL = {"local_files_only": True}
LOCAL_KWARGS = ("model_kwargs", "processor_kwargs", "config_kwargs")

README = """# {name} — SMOKE MODEL (not a real retriever)

Randomly initialised BERT ({layers} layers, hidden {hidden}, {heads} heads) with a WordPiece
vocabulary of {vocab} tokens (characters + most frequent words) learnt from the first
{n_texts} passages of the sample collection.
Built by `python -m tasks.smoke_models` (seed {seed}) so that the pipeline's model stages run
offline on the `sample` profile. It was never trained: its scores and rankings are
meaningless. Do not use it for anything but smoke tests.

Kind: {kind}.
"""


def train_vocab(texts: Iterable[str], vocab_size: int) -> list[str]:
    """Learn a lower-casing BERT WordPiece vocabulary; returns tokens in id order.

    Ids 0-4 are ``[PAD] [UNK] [CLS] [SEP] [MASK]``, then every character seen (as a word
    start and as a ``##`` continuation, so no word maps to ``[UNK]``), then whole words by
    frequency (ties alphabetical) up to ``vocab_size``. Text is normalised and split by the
    ``tokenizers`` library's BERT normaliser and pre-tokeniser. ``tokenizers``'
    ``WordPieceTrainer`` is not used: its tie-breaking follows Rust hash-map order, so two runs
    on the same texts give different vocabularies (measured), and the smoke models must be
    byte-identical across runs.
    """
    from tokenizers import normalizers, pre_tokenizers

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"smoke_models.vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    if not counts:
        raise ValueError("train_vocab: no texts to learn a vocabulary from (empty collection?)")
    chars = sorted({c for w in counts for c in w})
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    seen = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    if len(vocab) > vocab_size:
        log.warning(
            "vocab_size %d < %d characters seen: vocabulary holds %d tokens",
            vocab_size,
            len(chars),
            len(vocab),
        )
    return vocab


def _seed_for(seed: int, name: str) -> int:
    # A distinct, stable seed per model (str hash() is salted per process; avoid it).
    return (seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))) % (2**31)


def _hf_base(dir_: Path, vocab: list[str], params: SmokeModels, seed: int, classifier: bool) -> None:
    """Write a random-init BERT (+ tokenizer) in Hugging Face layout to ``dir_``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizer

    dir_.mkdir(parents=True, exist_ok=True)
    # transformers 5 takes the vocabulary as a dict (``vocab_file=`` is silently ignored).
    tokenizer = BertTokenizer(  # tokenizers-backed (fast) in transformers 5
        vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=params.max_seq_length
    )
    if len(tokenizer) != len(vocab):
        raise RuntimeError(
            f"tokenizer has {len(tokenizer)} tokens, expected {len(vocab)} (transformers API change?)"
        )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=params.hidden_size,
        num_hidden_layers=params.layers,
        num_attention_heads=params.heads,
        intermediate_size=params.intermediate_size,
        max_position_embeddings=max(512, params.max_seq_length),
        num_labels=1,  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config) if classifier else BertModel(config)
    model.save_pretrained(dir_, safe_serialization=True)
    tokenizer.save_pretrained(dir_)


def _readme(
    stage: Path, name: str, kind: str, vocab: list[str], params: SmokeModels, seed: int, n_texts: int
) -> None:
    text = README.format(
        name=name,
        layers=params.layers,
        hidden=params.hidden_size,
        heads=params.heads,
        vocab=len(vocab),
        n_texts=n_texts,
        seed=seed,
        kind=kind,
    )
    with write_text_atomic(stage / "README.md", gz=False) as fh:
        fh.write(text)


def build_bi_encoder(
    out_dir: str | Path,
    vocab: list[str],
    pooling: Literal["cls", "mean"],
    params: SmokeModels,
    seed: int,
    n_texts: int | None = None,
) -> Path:
    """Write a SentenceTransformer to ``out_dir`` (atomically replaced as a whole).

    ``cls`` pooling gives a dot-product model; ``mean`` adds a Normalize module (cosine).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as stage:
        base = stage / ".hf-base"
        _hf_base(base, vocab, params, seed, classifier=False)
        transformer = Transformer(
            str(base), max_seq_length=params.max_seq_length, **{k: dict(LOCAL) for k in LOCAL_KWARGS}
        )
        modules = [transformer, Pooling(params.hidden_size, pooling)]
        if pooling == "mean":
            modules.append(Normalize())
        model = SentenceTransformer(
            modules=modules, device="cpu", similarity_fn_name="dot" if pooling == "cls" else "cosine"
        )
        model.save(str(stage), create_model_card=False)
        shutil.rmtree(base)
        kind = (
            "bi-encoder, CLS pooling, dot product" if pooling == "cls" else "bi-encoder, mean pooling, cosine"
        )
        _readme(stage, out_dir.name, f"SentenceTransformer {kind}", vocab, params, seed, n_texts or 0)
    return out_dir


def build_cross_encoder(
    out_dir: str | Path, vocab: list[str], params: SmokeModels, seed: int, n_texts: int | None = None
) -> Path:
    """Write a CrossEncoder (one logit per pair) to ``out_dir`` (atomically)."""
    from sentence_transformers import CrossEncoder

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as stage:
        base = stage / ".hf-base"
        _hf_base(base, vocab, params, seed, classifier=True)
        model = CrossEncoder(str(base), device="cpu", num_labels=1, max_length=params.max_seq_length, **LOCAL)
        model.save(str(stage), create_model_card=False)
        shutil.rmtree(base)
        _readme(
            stage,
            out_dir.name,
            "CrossEncoder (BertForSequenceClassification, 1 label)",
            vocab,
            params,
            seed,
            n_texts or 0,
        )
    return out_dir


def build_all(
    collection_path: str | Path, out_dir: str | Path, params: SmokeModels, seed: int
) -> dict[str, Path]:
    """Train one vocabulary on the first ``params.vocab_passages`` passages, build the three models."""
    texts = [p.text for p in itertools.islice(read_collection(collection_path), params.vocab_passages)]
    log.info("training a %d-token WordPiece vocabulary on %d passages", params.vocab_size, len(texts))
    vocab = train_vocab(texts, params.vocab_size)
    out_dir = Path(out_dir)
    built = {
        BI_CLS_DOT: build_bi_encoder(
            out_dir / BI_CLS_DOT, vocab, "cls", params, _seed_for(seed, BI_CLS_DOT), len(texts)
        ),
        BI_MEAN_COS: build_bi_encoder(
            out_dir / BI_MEAN_COS, vocab, "mean", params, _seed_for(seed, BI_MEAN_COS), len(texts)
        ),
        CROSS_ENCODER: build_cross_encoder(
            out_dir / CROSS_ENCODER, vocab, params, _seed_for(seed, CROSS_ENCODER), len(texts)
        ),
    }
    for name, path in built.items():
        log.info("SMOKE model %s -> %s (random init, not a retriever)", name, path)
    return built


NONE_README = """# No smoke model

No system and no cross-encoder of this profile has `smoke: true`, so `python -m tasks.smoke_models`
built nothing here (it builds the three tiny models only for a profile that uses one).
"""


def needed(cfg: Config) -> bool:
    """Whether any system or the cross-encoder of ``cfg`` is a smoke model (``smoke: true``)."""
    return cfg.cross_encoder.smoke or any(s.smoke for s in cfg.systems.values())


def write_none(out_dir: Path) -> None:
    """``out_dir`` holding only a README that says why it is empty (no torch imported)."""
    log.info("no system or cross-encoder has smoke: true: no smoke model to build (%s)", out_dir)
    with atomic_dir(out_dir) as stage, write_text_atomic(stage / "README.md", gz=False) as fh:
        fh.write(NONE_README)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.smoke_models",
        "Build the sample profile's tiny SMOKE models (random-init BERT + WordPiece vocab trained on "
        "the collection): smoke-bi-cls-dot, smoke-bi-mean-cos, smoke-cross-encoder under paths.models; "
        "a profile without a smoke: true system or cross-encoder gets only a README there. "
        "Deterministic: same collection, params and seed give byte-identical files.",
        "python -m tasks.smoke_models --params params.yaml",
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        if not needed(cfg):
            write_none(cfg.path("models"))
            return
        # The models' bytes do not depend on torch's CPU kernels (the committed dvc.lock's models
        # were reproduced on AVX2 and AVX-512 CPUs), but ATen fixes its kernels at the first op:
        # choosing the model stages' kernels first keeps a process that goes on to encode or
        # score with them (a notebook, a test) able to honour cpu_kernels.
        kernels = {cfg.encode.cpu_kernels, cfg.cross_encoder.cpu_kernels}
        if kernels == {"avx2"} and "avx2" in cpu_flags():
            pin_cpu_kernels("avx2")
        build_all(cfg.input_path("collection"), cfg.path("models"), cfg.smoke_models, cfg.seed)

    return run_stage(args.params, work)


if __name__ == "__main__":
    sys.exit(main())
