"""Today's models in the registry: prompts, encode_query / encode_document, score and max length
from the model's own config, and cache keys that change with all of it but not for legacy systems.

The models are the session's tiny smoke bi-encoder re-saved by sentence-transformers with
``prompts`` {"query": "query: ", "document": "passage: "} and a ``similarity_fn_name`` of dot,
cosine or euclidean (and one whose config names none), so every setting is the library's own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from tasks.config import DenseSystem, Encode, Mine, Search
from tasks.encode import load_part, read_manifest, run
from tasks.io import DataError
from tasks.models import model_revision, resolve_encoding
from tasks.records import read_collection, read_queries, write_id_text
from tests._dense_helpers import EncodedSample, encoded_sample
from tests._model_helpers import TINY_PARAMS, TinyModels, cpu_suffix, tiny_models, tiny_texts

PROMPTS = {"query": "query: ", "document": "passage: "}
ENC = Encode(batch_size=16, shard_size=40, device="cpu", dtype="fp32")
# the manifest fields of every release before prompts existed, and only those
LEGACY_MANIFEST_KEYS = {
    "batch_size", "cpu_kernels", "device", "dim", "dtype", "format", "max_seq_length", "model",
    "parts", "revision", "score", "system",
}  # fmt: skip


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="session")
def modern(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny CLS bi-encoder (no Normalize module: cos and dot differ) saved with prompts and a
    similarity per key; ``none`` has no ``similarity_fn_name`` in its config at all."""
    from sentence_transformers import SentenceTransformer

    root = tmp_path_factory.mktemp("modern-models")
    out: dict[str, Path] = {}
    for sim in ("dot", "cosine", "euclidean"):
        model = SentenceTransformer(
            str(models.bi_cls_dot), device="cpu", prompts=dict(PROMPTS), similarity_fn_name=sim
        )
        model.save(str(root / sim), create_model_card=False)
        out[sim] = root / sim
    none = root / "none"
    model.save(str(none), create_model_card=False)
    cfg_path = none / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["similarity_fn_name"]
    cfg_path.write_text(json.dumps(cfg))
    out["none"] = none
    return out


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory, sample_inputs: dict[str, Path]) -> EncodedSample:
    return encoded_sample(tmp_path_factory, sample_inputs)


def _parts(tmp_path: Path) -> dict[str, Path]:
    corpus = tmp_path / "collection.tsv"
    write_id_text(corpus, ((1000 + 3 * i, t) for i, t in enumerate(tiny_texts(90, seed=11))))
    queries = tmp_path / "queries.tsv"
    write_id_text(queries, ((50 + i, t) for i, t in enumerate(tiny_texts(20, seed=12, max_len=8))))
    return {"corpus": corpus, "train": queries}


def _keys(emb_dir: Path) -> dict[str, list[str]]:
    parts = read_manifest(emb_dir)["parts"]
    return {part: [s["key"] for s in info["shards"]] for part, info in parts.items()}


def _legacy_keys(model_dir: Path, parts: dict[str, Path], max_seq_length: int) -> dict[str, list[str]]:
    """The shard keys exactly as the encode stage computed them before prompts existed (its
    formula written out here, not imported, so a change to the stage's keys fails this test)."""
    base = {
        "model": "local-dir",
        "revision": model_revision(str(model_dir), None),
        "max_seq_length": max_seq_length,
        "device": "cpu",
        "dtype": "fp32",
        "cpu_kernels": "avx2+MKL_CBWR=AVX2,STRICT" + cpu_suffix(),  # tasks.accel.kernels_id("avx2")
        "batch_size": ENC.batch_size,
        "format": 1,
    }
    out: dict[str, list[str]] = {}
    for part, path in parts.items():
        rows = (
            [(p.pid, p.text) for p in read_collection(path)] if part == "corpus" else list(read_queries(path))
        )
        out[part] = []
        for start in range(0, len(rows), ENC.shard_size):
            blob = "".join(f"{i}\t{t}\n" for i, t in rows[start : start + ENC.shard_size]).encode("utf-8")
            text_sha = hashlib.sha256(blob).hexdigest()
            key = json.dumps({**base, "text_sha256": text_sha}, sort_keys=True).encode()
            out[part].append(hashlib.sha256(key).hexdigest())
    return out


def _reference(model_dir: Path, texts: list[str], max_seq_length: int) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = max_seq_length
    return model.encode(texts, batch_size=8)


# --------------------------------------------------------------------------- prompts
def test_prompts_are_applied_and_score_auto_resolves(modern: dict[str, Path], tmp_path: Path) -> None:
    parts = _parts(tmp_path)
    system = DenseSystem(model=str(modern["dot"]), score="auto", max_seq_length=32)
    run("modern", system, ENC, parts, tmp_path / "emb", tmp_path / "cache")
    manifest = read_manifest(tmp_path / "emb")
    assert manifest["score"] == "dot" and manifest["similarity_fn_name"] == "dot"
    assert manifest["from_model"] == ["score"]
    assert manifest["encode"] == {
        "corpus": {"method": "encode_document", "prompt": "passage: "},
        "queries": {"method": "encode_query", "prompt": "query: "},
    }
    corpus = [p.text for p in read_collection(parts["corpus"])]
    queries = [t for _, t in read_queries(parts["train"])]
    got_c = load_part(tmp_path / "emb", "corpus").load().astype(np.float32)
    got_q = load_part(tmp_path / "emb", "train").load().astype(np.float32)
    # the same numbers as model.encode(prompt + text): the prompt is applied, once
    ref_c = _reference(modern["dot"], ["passage: " + t for t in corpus], 32)
    ref_q = _reference(modern["dot"], ["query: " + t for t in queries], 32)
    np.testing.assert_allclose(got_c, ref_c, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(got_q, ref_q, atol=2e-3)
    # and it matters (the random-init model moves little, but well beyond float16 rounding)
    err = np.abs(got_q - ref_q).max()
    assert np.abs(got_q - _reference(modern["dot"], queries, 32)).max() > 5 * err
    assert np.abs(got_c - _reference(modern["dot"], corpus, 32)).max() > 5 * np.abs(got_c - ref_c).max()


def test_cosine_model_resolves_to_cos(modern: dict[str, Path]) -> None:
    enc = resolve_encoding(
        "m", DenseSystem(model=str(modern["cosine"]), score=None), str(modern["cosine"]), None
    )
    assert (enc.score, enc.score_from, enc.similarity_fn_name) == ("cos", "model", "cosine")
    assert (enc.method, enc.query_prompt, enc.document_prompt) == ("prompted", "query: ", "passage: ")
    explicit = DenseSystem(model=str(modern["cosine"]), score="dot")  # an explicit value wins
    assert resolve_encoding("m", explicit, str(modern["cosine"]), None).score == "dot"


def test_unsupported_or_missing_similarity_is_a_clear_error(modern: dict[str, Path]) -> None:
    loc = str(modern["euclidean"])
    with pytest.raises(ValueError, match=r"systems\.euc\.score .*euclidean.*set systems\.euc\.score") as err:
        resolve_encoding("euc", DenseSystem(model=loc), loc, None)
    assert loc in str(err.value)  # names the model
    loc = str(modern["none"])
    with pytest.raises(
        ValueError, match=r"names no similarity_fn_name.*set systems\.bare\.score to cos or dot"
    ):
        resolve_encoding("bare", DenseSystem(model=loc, score="auto"), loc, None)
    # the same model is fine once the score is given
    assert resolve_encoding("bare", DenseSystem(model=loc, score="cos"), loc, None).score == "cos"


def test_changed_prompt_changes_the_key(modern: dict[str, Path], tmp_path: Path) -> None:
    parts = _parts(tmp_path)
    model = str(modern["dot"])

    def keys(name: str, **prompts: str) -> dict[str, list[str]]:
        system = DenseSystem(model=model, score="dot", max_seq_length=32, **prompts)
        run(name, system, ENC, parts, tmp_path / name, tmp_path / "cache")
        return _keys(tmp_path / name)

    default = keys("default")
    other_query = keys("other", query_prompt="search_query: ")
    assert other_query["train"] != default["train"]
    assert other_query["corpus"] == default["corpus"]  # the document prompt did not change: reused
    # a prompt name resolves to its text, and the key is by text: the model's "document" prompt
    # named for the queries keys exactly like the same text written out
    by_name = keys("by-name", query_prompt_name="document")
    by_text = keys("by-text", query_prompt="passage: ")
    assert by_name == by_text and by_name["train"] != default["train"]
    assert read_manifest(tmp_path / "by-name")["encode"]["queries"]["prompt"] == "passage: "
    # an empty document prompt set by the system is a different setting than "passage: "
    assert keys("no-doc", document_prompt="")["corpus"] != default["corpus"]
    with pytest.raises(ValueError, match=r"systems\.x\.query_prompt_name: 'nope' is not one of the model's"):
        resolve_encoding("x", DenseSystem(model=model, score="dot", query_prompt_name="nope"), model, None)


def test_prompt_and_prompt_name_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="query_prompt and query_prompt_name are mutually exclusive"):
        DenseSystem(model="m", score="dot", query_prompt="q: ", query_prompt_name="query")
    with pytest.raises(
        ValidationError, match="document_prompt and document_prompt_name are mutually exclusive"
    ):
        DenseSystem(model="m", document_prompt="", document_prompt_name="document")
    assert DenseSystem(model="m", score=None).score == "auto" == DenseSystem(model="m").score
    with pytest.raises(ValidationError, match="score"):
        DenseSystem(model="m", score="euclidean")


# --------------------------------------------------------------------------- legacy systems
def test_legacy_system_keeps_its_keys_and_manifest(models: TinyModels, tmp_path: Path) -> None:
    """A system as every existing profile writes it (explicit score and length, a model without
    prompts) gets the keys and manifest fields of the code before prompts, and the plain encode."""
    parts = _parts(tmp_path)
    system = DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=32)
    run("legacy", system, ENC, parts, tmp_path / "emb", tmp_path / "cache")
    assert _keys(tmp_path / "emb") == _legacy_keys(models.bi_cls_dot, parts, 32)
    manifest = read_manifest(tmp_path / "emb")
    assert set(manifest) == LEGACY_MANIFEST_KEYS and manifest["score"] == "dot"
    sidecar = next((tmp_path / "cache").rglob("*.json"))
    assert not {"encode", "prompt"} & set(json.loads(sidecar.read_text()))
    # score auto on this model (its config says dot) changes nothing in the keys either
    auto = DenseSystem(model=str(models.bi_cls_dot), score="auto", max_seq_length=32)
    stats = run("legacy-auto", auto, ENC, parts, tmp_path / "auto", tmp_path / "cache")
    assert stats["computed"] == 0 and _keys(tmp_path / "auto") == _keys(tmp_path / "emb")
    assert read_manifest(tmp_path / "auto")["score"] == "dot"


def test_max_seq_length_null_is_the_models_own(
    models: TinyModels, modern: dict[str, Path], tmp_path: Path
) -> None:
    parts = _parts(tmp_path)
    own = TINY_PARAMS.max_seq_length  # what the smoke build gave the tokenizer
    system = DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=None)
    run("own", system, ENC, parts, tmp_path / "own", tmp_path / "cache")
    manifest = read_manifest(tmp_path / "own")
    assert manifest["max_seq_length"] == own and manifest["from_model"] == ["max_seq_length"]
    # the resolved value is keyed: the same shards as the length written out
    assert _keys(tmp_path / "own") == _legacy_keys(models.bi_cls_dot, parts, own)
    shorter = DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=8)
    run("short", shorter, ENC, parts, tmp_path / "short", tmp_path / "cache")
    assert _keys(tmp_path / "short")["corpus"] != _keys(tmp_path / "own")["corpus"]
    both = DenseSystem(model=str(modern["cosine"]), max_seq_length=None)
    enc = resolve_encoding("both", both, str(modern["cosine"]), None)
    assert (enc.max_seq_length, enc.max_seq_length_from, enc.score) == (own, "model", "cos")


def test_max_seq_length_null_loads_the_model_once_in_process(
    models: TinyModels, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading the model's own length loads it; encoding in the same process takes that model
    instead of loading the weights again, with the same bits as the length written out."""
    import tasks.encode as encode_mod
    from tasks.models import take_probed_model
    from tasks.scaleout import InlineExecutor

    parts = _parts(tmp_path)
    own = TINY_PARAMS.max_seq_length
    loading = f"model from {models.bi_cls_dot}"
    encode_mod._MODELS.clear()  # earlier tests left this process's model loaded
    with caplog.at_level("INFO", logger="sentence_transformers"):
        run("own", DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=None),
            ENC, parts, tmp_path / "own", tmp_path / "c1")  # fmt: skip
    assert sum(loading in r.getMessage() for r in caplog.records) == 1, caplog.text
    assert take_probed_model(str(models.bi_cls_dot), None) is None  # handed over, not kept
    encode_mod._MODELS.clear()
    run("set", DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=own),
        ENC, parts, tmp_path / "set", tmp_path / "c2")  # fmt: skip
    for part in parts:
        own_bits, set_bits = (load_part(tmp_path / d, part).load().tobytes() for d in ("own", "set"))
        assert own_bits == set_bits, part
    # with an executor the shards run elsewhere: the probed model is not held for them
    run("exec", DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=None),
        ENC, parts, tmp_path / "exec", tmp_path / "c3", executor=InlineExecutor())  # fmt: skip
    assert take_probed_model(str(models.bi_cls_dot), None) is None


# --------------------------------------------------------------------------- dense_mine
def test_mine_takes_the_score_from_the_manifest(sample: EncodedSample, tmp_path: Path) -> None:
    """score: auto mines with the manifest's resolved score (here cos: normalised), byte for
    byte like the explicit value; a params value that disagrees with the manifest fails."""
    from tasks.dense_mine import run as mine_run

    candidates = {name: sample.bm25_runs / f"{name}.full.trec" for name in ("dev", "dl19")}

    def mine(score: str, out: Path) -> None:
        system = DenseSystem(
            model=sample.system.model, score=score, max_seq_length=sample.system.max_seq_length
        )
        mine_run(
            "tiny-cos", system, Search(query_chunk=256), Mine(top_k=5, eval_depth=20), 10, sample.emb_dir,
            sample.inputs["qrels_train"], candidates, out / "neg.parquet", out / "runs",
        )  # fmt: skip

    mine("cos", tmp_path / "cos")
    mine("auto", tmp_path / "auto")
    for rel in ("neg.parquet", "runs/dev.full.trec", "runs/dl19.rerank.trec"):
        assert (tmp_path / "cos" / rel).read_bytes() == (tmp_path / "auto" / rel).read_bytes()
    with pytest.raises(DataError, match=r"score 'cos' != systems\.tiny-cos\.score 'dot'"):
        mine("dot", tmp_path / "dot")
