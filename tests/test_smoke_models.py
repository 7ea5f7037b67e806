"""The smoke models: offline loading, labelled, byte-identical rebuilds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tasks.smoke_models import build_bi_encoder, train_vocab
from tests._model_helpers import (
    SEED,
    TINY_PARAMS,
    TinyModels,
    run_stage_without_torch,
    tiny_models,
    tiny_texts,
)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_models_load_offline_and_are_labelled(models: TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import CrossEncoder, SentenceTransformer

    texts = tiny_texts(5, seed=7)
    cls_dot = SentenceTransformer(str(models.bi_cls_dot), device="cpu")
    mean_cos = SentenceTransformer(str(models.bi_mean_cos), device="cpu")
    a = cls_dot.encode(texts)
    b = mean_cos.encode(texts)
    assert a.shape == b.shape == (5, TINY_PARAMS.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(a, axis=1), 1.0)
    ids = cls_dot.tokenize(["cat dog river"])["input_ids"][0].tolist()
    assert ids[0] == 2 and ids[-1] == 3 and 1 not in ids  # [CLS] ... [SEP], no [UNK]: vocab is real
    assert len(cls_dot.tokenizer) <= TINY_PARAMS.vocab_size
    ce = CrossEncoder(str(models.cross_encoder), device="cpu")
    scores = ce.predict([(texts[0], texts[1]), (texts[2], texts[3])])
    assert np.asarray(scores).shape == (2,)
    for path in (models.bi_cls_dot, models.bi_mean_cos, models.cross_encoder):
        readme = (path / "README.md").read_text()
        assert "SMOKE MODEL (not a real retriever)" in readme
        assert not (path / ".hf-base").exists()


def test_rebuild_is_byte_identical(models: TinyModels, tmp_path: Path) -> None:
    texts = [line.split("\t", 1)[1] for line in models.collection.read_text().splitlines()]
    vocab = train_vocab(texts, TINY_PARAMS.vocab_size)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    from tasks.smoke_models import BI_CLS_DOT, _seed_for

    again = build_bi_encoder(
        tmp_path / BI_CLS_DOT, vocab, "cls", TINY_PARAMS, _seed_for(SEED, BI_CLS_DOT), len(texts)
    )
    assert _digests(again) == _digests(models.bi_cls_dot)
    assert {"model.safetensors", "tokenizer.json", "config.json", "modules.json"} <= set(_digests(again))


def test_bad_params_raise() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_vocab(["a b c"], 3)
    with pytest.raises(ValueError, match="pooling"):
        build_bi_encoder("/nonexistent", ["[PAD]"], "max", TINY_PARAMS, 0)  # type: ignore[arg-type]


def test_a_profile_without_smoke_models_builds_none_and_skips_torch(tmp_path: Path) -> None:
    """A real-models profile (no ``smoke: true``): the CLI writes a README only, in a fresh
    process that never imports torch, and the directory's earlier content is gone."""
    import yaml

    from tasks.config import ROOT

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for system in data["systems"].values():
        system["smoke"] = False
    data["cross_encoder"]["smoke"] = False
    data["mining"]["systems"] = ["bm25"]
    data["paths"]["models"] = str(tmp_path / "models")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "stale").write_text("from an earlier run")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    run_stage_without_torch("tasks.smoke_models", params)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["README.md"]
    assert "No smoke model" in (tmp_path / "models" / "README.md").read_text()
