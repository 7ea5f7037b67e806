"""Tiny smoke models for tests, built once per test session.

Used by the dense-retrieval and cross-encoder tests (keep this API stable):

    from tests._model_helpers import tiny_models

    @pytest.fixture(scope="session")
    def models(tmp_path_factory):
        return tiny_models(tmp_path_factory)

``tiny_models`` returns a :class:`TinyModels` with the paths of the three models and of the
small collection their vocabulary was trained on. It is cached per pytest session, so every
test file that calls it shares one build (about a second).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.config import SmokeModels
from tasks.records import write_id_text
from tasks.smoke_models import BI_CLS_DOT, BI_MEAN_COS, CROSS_ENCODER, build_all

TINY_PARAMS = SmokeModels(
    vocab_size=400, hidden_size=32, layers=2, heads=2, intermediate_size=64, max_seq_length=64
)
SEED = 13

_WORDS = (
    "cat dog bird fish river mountain city car train plane music song book paper water fire "
    "earth wind tree flower house door window food bread apple orange green blue red small "
    "large fast slow old new cold hot night day sun moon star rain snow road bridge school"
).split()


@dataclass(frozen=True)
class TinyModels:
    root: Path
    collection: Path  # the TSV the vocabulary was trained on
    bi_cls_dot: Path
    bi_mean_cos: Path
    cross_encoder: Path


def cpu_suffix() -> str:
    """What ``tasks.accel.kernels_id("avx2")`` adds to the Intel key on this CPU, written out (not
    imported) so a change to the key formula fails the key tests: nothing on an Intel CPU, the CPU
    MKL runs ``AUTO`` on elsewhere."""
    fields = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if fields.get("vendor_id") == "GenuineIntel":
        return ""
    return "+MKL_AUTO@" + "-".join(fields.get(k) or "unknown" for k in ("vendor_id", "cpu family", "model"))


def tiny_texts(n: int, seed: int = 0, min_len: int = 3, max_len: int = 40) -> list[str]:
    """``n`` deterministic pseudo-sentences of varied length over a small vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(_WORDS, k=rng.randint(min_len, max_len))) for _ in range(n)]


def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Build (once per session) the three smoke models on a 300-passage tiny collection."""
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    done = root / ".done"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        collection = root / "collection.tsv"
        write_id_text(collection, enumerate(tiny_texts(300, seed=1)))
        build_all(collection, root / "models", TINY_PARAMS, SEED)
        done.write_text("ok")
    models = root / "models"
    return TinyModels(
        root=root,
        collection=root / "collection.tsv",
        bi_cls_dot=models / BI_CLS_DOT,
        bi_mean_cos=models / BI_MEAN_COS,
        cross_encoder=models / CROSS_ENCODER,
    )


def run_stage_without_torch(module: str, params: Path) -> None:
    """``python -m <module> --params <params>`` as a fresh process, failing if it exits non-zero or
    imports torch (a stage with no model work to do must not pay torch's import)."""
    import subprocess
    import sys

    from tasks.config import ROOT

    code = (
        f"import sys; from {module} import main; rc = main(['--params', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    subprocess.run([sys.executable, "-c", code, str(params)], cwd=ROOT, check=True)
