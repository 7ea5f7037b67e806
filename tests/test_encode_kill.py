"""Fault injection: SIGKILL during encode, then rerun: identical bytes, only the rest recomputed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.config import DenseSystem, Encode
from tasks.encode import run
from tasks.records import write_id_text
from tests._dense_helpers import one_thread
from tests._model_helpers import TinyModels, tiny_models, tiny_texts

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 24

CHILD = """
import json, sys
from tasks.config import DenseSystem, Encode
from tasks.encode import run
a = json.loads(sys.argv[1])
run("k", DenseSystem(**a["system"]), Encode(**a["encode"]), a["parts"], a["out"], a["cache"])
"""


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory)


@pytest.mark.slow  # a child process that imports torch: ~20 s of CPU
def test_sigkill_then_resume(models: TinyModels, tmp_path: Path) -> None:
    corpus = tmp_path / "collection.tsv"
    write_id_text(corpus, enumerate(tiny_texts(SHARDS * 16, seed=21, max_len=20)))
    system = {"model": str(models.bi_cls_dot), "score": "dot", "max_seq_length": 32}
    encode = {"batch_size": 8, "shard_size": 16, "device": "cpu", "dtype": "fp32"}
    cache = tmp_path / "cache"
    out = str(tmp_path / "killed")
    args = {
        "system": system,
        "encode": encode,
        "parts": {"corpus": str(corpus)},
        "out": out,
        "cache": str(cache),
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if len(list(cache.rglob("*.json"))) >= 2:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the encode child finished before it could be killed"
    assert not (tmp_path / "killed").exists()  # the output appears only when complete
    done_before = len(list(cache.rglob("*.json")))
    assert 2 <= done_before < SHARDS

    with one_thread():
        stats = run(
            "k", DenseSystem(**system), Encode(**encode), {"corpus": corpus}, tmp_path / "resumed", cache
        )
    assert stats["reused"] >= done_before - 1 and 0 < stats["computed"] < SHARDS  # not all recomputed
    assert stats["reused"] + stats["computed"] == SHARDS

    with one_thread():
        clean = run("k", DenseSystem(**system), Encode(**encode), {"corpus": corpus}, tmp_path / "clean",
                    tmp_path / "fresh-cache")  # fmt: skip
    assert clean["computed"] == SHARDS
    assert _tree(tmp_path / "resumed") == _tree(tmp_path / "clean")
