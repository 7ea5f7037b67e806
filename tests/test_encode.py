"""encode@<system>: shards, manifest, cache reuse, executors, skipped systems."""

from __future__ import annotations

import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tasks.config import DenseSystem, Encode
from tasks.encode import encode_shard, load_part, read_manifest, run
from tasks.records import read_collection, write_id_text
from tests._dense_helpers import EncodedSample, encoded_sample
from tests._model_helpers import TINY_PARAMS, TinyModels, cpu_suffix, tiny_models, tiny_texts


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory)


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory, sample_inputs: dict[str, Path]) -> EncodedSample:
    return encoded_sample(tmp_path_factory, sample_inputs)


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _small(tmp_path: Path, n: int = 150) -> dict[str, Path]:
    corpus = tmp_path / "collection.tsv"
    write_id_text(corpus, ((1000 + 3 * i, t) for i, t in enumerate(tiny_texts(n, seed=11))))
    queries = tmp_path / "queries.tsv"
    write_id_text(queries, ((50 + i, t) for i, t in enumerate(tiny_texts(20, seed=12, max_len=8))))
    return {"corpus": corpus, "train": queries}


def test_sample_manifest_and_embeddings(sample: EncodedSample) -> None:
    manifest = read_manifest(sample.emb_dir)
    corpus = load_part(sample.emb_dir, "corpus")
    pids = [p.pid for p in read_collection(sample.inputs["collection"])]
    assert manifest["parts"]["corpus"]["rows"] == len(pids) == len(corpus.ids)
    assert corpus.ids.tolist() == pids  # file order
    shards = manifest["parts"]["corpus"]["shards"]
    assert len(shards) == -(-len(pids) // 1000)
    assert shards[0]["first_id"] == pids[0] and shards[-1]["last_id"] == pids[-1]
    assert manifest["model"] == sample.system.model and manifest["revision"].startswith("dir-sha256:")
    assert set(manifest["parts"]) == {"corpus", "train", "dev", "dl19"}
    for entry in shards:
        assert hashlib.sha256((sample.emb_dir / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    vec = corpus.load()
    assert vec.dtype == np.float16 and vec.shape == (len(pids), TINY_PARAMS.hidden_size)
    # same numbers as a plain SentenceTransformer.encode (length-sorted batching changes nothing)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(sample.system.model, device="cpu")
    model.max_seq_length = sample.system.max_seq_length
    texts = [p.text for p in read_collection(sample.inputs["collection"])][:64]
    ref = model.encode(texts, batch_size=32)
    np.testing.assert_allclose(vec[:64].astype(np.float32), ref, atol=2e-3)


def test_rerun_reuses_cache_byte_identical(sample: EncodedSample, tmp_path: Path) -> None:
    from tests._dense_helpers import ENCODE, sample_parts

    stats = run(
        "tiny-cos", sample.system, ENCODE, sample_parts(sample.inputs), tmp_path / "again", sample.cache_dir
    )
    assert stats["computed"] == 0 and stats["reused"] == sample.stats["computed"] + sample.stats["reused"]
    assert _tree(tmp_path / "again") == _tree(sample.emb_dir)


def test_executor_gives_identical_bytes(models: TinyModels, tmp_path: Path) -> None:
    parts = _small(tmp_path)
    system = DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=32)
    params = Encode(batch_size=16, shard_size=40, device="cpu", dtype="fp32")
    a = run("s", system, params, parts, tmp_path / "a", tmp_path / "cache-a")
    with ThreadPoolExecutor(max_workers=2) as pool:
        b = run("s", system, params, parts, tmp_path / "b", tmp_path / "cache-b", executor=pool)
    assert a["computed"] == b["computed"] == 5  # 4 corpus shards + 1 query shard
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_damaged_cache_shard_is_reencoded(models: TinyModels, tmp_path: Path) -> None:
    parts = _small(tmp_path)
    system = DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=32)
    params = Encode(batch_size=16, shard_size=40, device="cpu", dtype="fp32")
    run("s", system, params, parts, tmp_path / "a", tmp_path / "cache")
    before = _tree(tmp_path / "a")
    victim = sorted((tmp_path / "cache").rglob("*.npy"))[0]
    victim.unlink()  # hard link in the output keeps the data; the cache entry is gone
    (tmp_path / "cache" / victim.parent.name / (victim.stem + ".npy")).write_bytes(b"garbage")
    stats = run("s", system, params, parts, tmp_path / "b", tmp_path / "cache")
    assert stats["computed"] == 1 and stats["reused"] == 4
    assert _tree(tmp_path / "b") == before
    assert _tree(tmp_path / "a") == before  # the earlier output is self-contained


def test_encode_shard_restores_order(models: TinyModels) -> None:
    from tasks.encode import ShardSpec

    texts = tuple(tiny_texts(10, seed=3))
    spec = ShardSpec("k", str(models.bi_cls_dot), None, 32, "cpu", "fp32", 3, texts)
    whole = encode_shard(spec).embeddings
    single = np.vstack(
        [encode_shard(ShardSpec("k", spec.model, None, 32, "cpu", "fp32", 1, (t,))).embeddings for t in texts]
    )
    np.testing.assert_allclose(whole.astype(np.float32), single.astype(np.float32), atol=2e-3)


def test_skipped_system_and_bad_args(tmp_path: Path) -> None:
    system = DenseSystem(model=None, score="dot")
    stats = run(
        "nope", system, Encode(), {"corpus": tmp_path / "x.tsv"}, tmp_path / "out", tmp_path / "cache"
    )
    assert stats == {"skipped": "no public weights"}
    assert read_manifest(tmp_path / "out")["skipped"] == "no public weights"
    with pytest.raises(ValueError, match="was skipped"):
        load_part(tmp_path / "out", "corpus")
    with pytest.raises(ValueError, match="unknown part"):
        run("nope", system, Encode(), {"queries": tmp_path / "x.tsv"}, tmp_path / "o2", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="tasks.encode"):
        read_manifest(tmp_path / "missing")


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path, model_dir: Path, repo: str = "smoke-org/tiny-bi") -> Path:
    """A Hugging Face hub cache holding ``model_dir`` as ``repo``'s ``main`` snapshot."""
    storage = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(model_dir, storage / "snapshots" / COMMIT)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    return root


def test_model_revision_resolves_the_cached_hub_snapshot(models: TinyModels, tmp_path: Path) -> None:
    from tasks.encode import model_revision

    cache = _hub_cache(tmp_path / "hub", models.bi_cls_dot)
    assert model_revision("smoke-org/tiny-bi", None, cache) == COMMIT
    assert model_revision("smoke-org/tiny-bi", "main", cache) == COMMIT
    assert model_revision("smoke-org/tiny-bi", "f" * 40, cache) == "f" * 40  # a pin is kept as is
    assert model_revision("smoke-org/absent", None, cache) == "unpinned"
    assert model_revision("smoke-org/absent", "v1", cache) == "v1"
    assert model_revision(str(models.bi_cls_dot), None).startswith("dir-sha256:")


ENCODE_FROM_HUB_CACHE = """\
import json, sys
from pathlib import Path
from tasks.config import DenseSystem, Encode
from tasks.encode import read_manifest, run

out = Path(sys.argv[1])
system = DenseSystem(model="smoke-org/tiny-bi", score="dot", max_seq_length=32)
run("hub", system, Encode(batch_size=8, shard_size=50, device="cpu"), {"corpus": Path(sys.argv[2])},
    out / "emb", out / "cache")
print(json.dumps(read_manifest(out / "emb")))
"""


def test_unpinned_hub_model_is_keyed_by_its_offline_snapshot(models: TinyModels, tmp_path: Path) -> None:
    """Run as users do (HF_HUB_OFFLINE=1, a populated HF cache): the manifest names the commit."""
    import json
    import os
    import subprocess
    import sys

    cache = _hub_cache(tmp_path / "hub", models.bi_cls_dot)
    parts = _small(tmp_path, n=60)
    script = tmp_path / "enc.py"
    script.write_text(ENCODE_FROM_HUB_CACHE)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out"), str(parts["corpus"])],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout.strip().splitlines()[-1])
    assert manifest["revision"] == COMMIT and manifest["model"] == "smoke-org/tiny-bi"
    assert (manifest["device"], manifest["dtype"]) == ("cpu", "fp32")  # resolved, not "auto"
    # a hub system as the msmarco profile writes it (explicit score and length, no prompts): its
    # config is read from the offline snapshot and the keys are those of the code before prompts
    base = {"model": "smoke-org/tiny-bi", "revision": COMMIT, "max_seq_length": 32, "device": "cpu",
            "dtype": "fp32", "cpu_kernels": "avx2+MKL_CBWR=AVX2,STRICT" + cpu_suffix(), "batch_size": 8,
            "format": 1}  # fmt: skip
    for shard in manifest["parts"]["corpus"]["shards"]:
        legacy = json.dumps({**base, "text_sha256": shard["text_sha256"]}, sort_keys=True).encode()
        assert shard["key"] == hashlib.sha256(legacy).hexdigest()
    assert not {"encode", "from_model", "similarity_fn_name"} & set(manifest)
    # the same weights as the local directory (keys differ: they name the model differently)
    from tasks.encode import load_part

    hub = load_part(tmp_path / "out" / "emb", "corpus").load()
    system = DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=32)
    run("dir", system, Encode(batch_size=8, shard_size=50, device="cpu"), {"corpus": parts["corpus"]},
        tmp_path / "dir", tmp_path / "cache-dir")  # fmt: skip
    assert np.array_equal(hub, load_part(tmp_path / "dir", "corpus").load())


IN_PROCESS_CHILD = """
import json, sys
from tasks.accel import torch_cpu_capability
from tasks.config import DenseSystem, Encode
from tasks.encode import run
a = json.loads(sys.argv[1])
stats = run("tiny", DenseSystem(**a["system"]), Encode(**a["encode"]), a["parts"], a["out"], a["cache"])
print(torch_cpu_capability(), stats["rows"])
"""


def test_in_process_encode_pins_kernels_before_reading_the_model(models: TinyModels, tmp_path: Path) -> None:
    """A system that leaves max_seq_length to the model loads it in the stage's own process to read
    it; with shards in-process (local_workers 1, no executor) the kernels must be pinned before
    that, or ATen has chosen the CPU's own and the pin refuses (seen with a --score auto profile
    and local_workers 1). A fresh process with none of the pin variables set, like a user's."""
    import json
    import os
    import subprocess
    import sys

    corpus = tmp_path / "collection.tsv"
    write_id_text(corpus, enumerate(tiny_texts(24, seed=5, max_len=12)))
    args = {
        "system": {"model": str(models.bi_cls_dot), "score": "dot", "max_seq_length": None},
        "encode": {
            "batch_size": 8,
            "shard_size": 16,
            "device": "cpu",
            "dtype": "fp32",
            "cpu_kernels": "avx2",
        },
        "parts": {"corpus": str(corpus)},
        "out": str(tmp_path / "out"),
        "cache": str(tmp_path / "cache"),
    }
    root = Path(__file__).resolve().parent.parent
    pins = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
    env = {k: v for k, v in os.environ.items() if k not in pins} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS_CHILD, json.dumps(args)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["AVX2", "24"], proc.stdout


def test_batches_by_token_count_pad_less_and_are_keyed_apart(models: TinyModels, tmp_path: Path) -> None:
    """``batch_order: tokens`` sorts by the tokenizer's count (not characters), so a batch pads to
    nearly its own length; the embeddings stay the model's (rows in file order, fp16 noise apart);
    its shards get their own keys while ``chars`` keeps the keys it always had."""
    from sentence_transformers import SentenceTransformer

    from tasks.encode import ShardSpec, batch_order, shard_key

    model = SentenceTransformer(str(models.bi_cls_dot), device="cpu")
    model.max_seq_length = 32
    # character length and token count disagree: long words split into word pieces
    texts = tuple(tiny_texts(60, seed=5)) + ("zqxjkvbwp" * 4, "a b", "xqzjv wkpbq zxqjv")
    counts = model.preprocess(list(texts))["attention_mask"].sum(dim=1).tolist()

    def padded(order: list[int], size: int = 8) -> int:
        return sum(max(counts[i] for i in order[s : s + size]) * len(order[s : s + size])
                   for s in range(0, len(order), size))  # fmt: skip

    spec = ShardSpec("k", str(models.bi_cls_dot), None, 32, "cpu", "fp32", 8, texts)
    by_chars = batch_order(model, spec)
    by_tokens = batch_order(model, ShardSpec(**{**spec.__dict__, "batch_order": "tokens"}))
    assert sorted(by_tokens) == list(range(len(texts)))
    assert [counts[i] for i in by_tokens] == sorted(counts, reverse=True)
    assert padded(by_tokens) < padded(by_chars)
    with pytest.raises(ValueError, match="unknown batch order 'words'"):
        batch_order(model, ShardSpec(**{**spec.__dict__, "batch_order": "words"}))

    parts = _small(tmp_path)
    system = DenseSystem(model=str(models.bi_cls_dot), score="dot", max_seq_length=32)
    chars = Encode(batch_size=16, shard_size=40, device="cpu", dtype="fp32")
    tokens = Encode(batch_size=16, shard_size=40, device="cpu", dtype="fp32", batch_order="tokens")
    run("s", system, chars, parts, tmp_path / "chars", tmp_path / "cache")
    stats = run("s", system, tokens, parts, tmp_path / "tokens", tmp_path / "cache")
    assert stats["computed"] == 5 and stats["reused"] == 0  # keyed apart from the chars shards
    again = run("s", system, tokens, parts, tmp_path / "tokens-again", tmp_path / "cache")
    assert again["computed"] == 0 and _tree(tmp_path / "tokens-again") == _tree(tmp_path / "tokens")
    a, b = read_manifest(tmp_path / "chars"), read_manifest(tmp_path / "tokens")
    assert "batch_order" not in a and b["batch_order"] == "tokens"
    first = a["parts"]["corpus"]["shards"][0]
    settings = {k: a[k] for k in ("revision", "max_seq_length", "device", "dtype", "cpu_kernels",
                                  "batch_size", "format")}  # fmt: skip
    settings["model"] = "local-dir"  # a local directory is keyed by its content hash alone
    assert shard_key(settings, first["text_sha256"]) == first["key"]  # chars: the keys of before
    for part in ("corpus", "train"):
        x, y = load_part(tmp_path / "chars", part), load_part(tmp_path / "tokens", part)
        assert x.ids.tolist() == y.ids.tolist()
        np.testing.assert_allclose(x.load().astype(np.float32), y.load().astype(np.float32), atol=2e-3)
