"""Artifacts do not depend on the environment they were built in.

Two throwaway checkouts at different paths build the smoke models on the first 800 passages of
the sample and encode it (plus the first queries of each set) with the stage entry points
(``tasks.smoke_models.main``, ``tasks.encode.main``), and score 24 (query, passage) pairs
with the smoke cross-encoder the way the score stage does, each in a fresh process
whose environment is written out in full (nothing inherited):

- ``make``: what the Makefile exports (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1,
  TOKENIZERS_PARALLELISM=false), LANG=C.UTF-8, OMP_NUM_THREADS=2;
- ``bare``: a Prefect worker started without it: no HF_* / TRANSFORMERS_* offline flags, its
  own HF_HOME, HOME and USER, LANG/LC_ALL=de_DE.UTF-8, OMP_NUM_THREADS=1.

(Where shards run, ``orchestration.local_workers`` / Dask, is compared byte for byte by
``tests/test_encode.py`` and ``tests/test_scaleout_stages.py``; here both run in-process.)

Every byte of the models, the embeddings (output and content-addressed cache, keys included)
and the scores must agree. The thread count is part of it on purpose: with ``cpu_kernels: avx2``
(MKL's strict CNR mode, :mod:`tasks.accel`) 1 and 2 torch threads give identical fp32 bits, also
for all-MiniLM-L6-v2 (without strict mode they did not: tests/test_accel.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# One process runs the smoke_models and encode stages (their CLI entry points) and scores the
# pairs: each interpreter start costs seconds (torch + transformers imports) on 2 busy cores.
STAGES = """\
import sys
import numpy as np
from tasks import encode, smoke_models
from tasks.config import ROOT, load_config
from tasks.records import read_collection, read_queries
from tasks.score import ModelSpec, resolve_model, score_pairs

assert smoke_models.main(["--params", "params.yaml"]) == 0
assert encode.main(["--system", "smoke-bi-mean-cos", "--params", "params.yaml"]) == 0
cfg = load_config("params.yaml")
queries = [q.text for q in read_queries(cfg.input_path("queries_train"))][:12]
passages = [p.text for p in read_collection(cfg.input_path("collection"))][:24]
pairs = [(queries[i % 12], passages[i]) for i in range(24)]
spec = ModelSpec.from_cfg(cfg.cross_encoder, resolve_model(cfg.cross_encoder.model, ROOT))
scores = score_pairs(spec, [q for q, _ in pairs], [p for _, p in pairs])
np.save(sys.argv[1], scores.astype(np.float32), allow_pickle=False)
"""

MAKEFILE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _checkout(dest: Path, sample_inputs: dict[str, Path]) -> tuple[Path, dict]:
    """A minimal copy of the project at ``dest`` with the sample's inputs where params.yaml says."""
    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "tasks", dest / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["orchestration"]["local_workers"] = 1  # in-process (executors: test_encode, test_scaleout_*)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    raw = dest / params["paths"]["raw"]
    for key, rows in (("collection", 800), ("queries_train", 100), ("queries_dev", 50), ("queries_dl19", 50)):
        target = raw / params["inputs"][key]
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = sample_inputs[key].read_text(encoding="utf-8").splitlines(keepends=True)
        target.write_text("".join(lines[:rows]), encoding="utf-8")  # the sample's first rows
    (dest / "stages.py").write_text(STAGES)
    return dest, params


def _build(checkout: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "stages.py", "ce_scores.npy"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"stages failed in {checkout}:\n{proc.stderr[-3000:]}"


def _digests(root: Path, params: dict) -> dict[str, str]:
    """sha256 of every artifact file, keyed by its path relative to the checkout."""
    dirs = [params["paths"][k] for k in ("models", "embeddings", "embedding_cache")]
    files = [p for d in dirs for p in sorted((root / d).rglob("*")) if p.is_file()]
    files.append(root / "ce_scores.npy")
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.slow
def test_same_bytes_with_and_without_the_makefile_environment(
    tmp_path: Path, sample_inputs: dict[str, Path]
) -> None:
    path = os.environ.get("PATH", "/usr/bin:/bin")
    a, params = _checkout(tmp_path / "a" / "proj", sample_inputs)
    b, _ = _checkout(tmp_path / "elsewhere" / "deeper" / "checkout-b", sample_inputs)
    env_a = {"PATH": path, "HOME": str(tmp_path / "home-a"), "USER": "alice", "LANG": "C.UTF-8"}
    env_a |= {**MAKEFILE_ENV, "OMP_NUM_THREADS": "2"}
    env_b = {"PATH": path, "HOME": str(tmp_path / "home-b"), "USER": "bob", "LOGNAME": "bob"}
    env_b |= {"LANG": "de_DE.UTF-8", "LC_ALL": "de_DE.UTF-8", "OMP_NUM_THREADS": "1"}
    env_b |= {"HF_HOME": str(tmp_path / "hf-b"), "DO_NOT_TRACK": "1"}
    _build(a, env_a)
    _build(b, env_b)
    got_a, got_b = _digests(a, params), _digests(b, params)
    assert len(got_a) > 20 and any("tokenizer_config.json" in k for k in got_a)
    assert any(k.endswith(".npy") and "cache" in k for k in got_a)
    differing = sorted(k for k in got_a.keys() | got_b.keys() if got_a.get(k) != got_b.get(k))
    assert not differing, f"artifacts differ between the environments: {differing}"
