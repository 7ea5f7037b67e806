"""Helpers of ``tests/test_refresh_kill.py``: a throwaway params file for ``encode`` (``addressing:
text``) and ``score`` (``addressing: pair``), the stage CLI in a child process, a signal sent once
the row store holds a pack, and what a row store holds (packs are read by their ``*.json``, the
file a writer renames last; nothing else in the store root is assumed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.records import HardNegatives, write_hard_negatives, write_id_text
from tests._model_helpers import TinyModels, tiny_texts

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "tiny"
CE_NAME = "tiny-ce"
WORK_LOG_ENV = "HARDNEGS_WORK_LOG"


@dataclass(frozen=True)
class Checkout:
    """One run's world: ``params.yaml`` whose inputs, outputs and caches all live under ``root``."""

    root: Path
    params: Path

    def path(self, key: str) -> Path:
        return self.root / key

    @property
    def text_stores(self) -> Path:
        """Where ``encode`` keeps its row stores (one per setting below it)."""
        return self.root / "embedding_cache" / "texts"

    @property
    def pair_stores(self) -> Path:
        return self.root / "score_cache" / "pairs"


def corpus_texts(n: int, seed: int = 31) -> list[str]:
    """``n`` distinct short texts (the store dedups by text: distinct, so a row is a text)."""
    out, seen = [], set()
    for text in tiny_texts(4 * n, seed=seed, min_len=4, max_len=14):
        if text not in seen:
            seen.add(text)
            out.append(text)
        if len(out) == n:
            return out
    raise AssertionError(f"tiny_texts gave fewer than {n} distinct texts")


def write_params(root: Path, models: TinyModels, n_passages: int, n_queries: int, **section: Any) -> Checkout:
    """The sample profile over a corpus of ``n_passages`` distinct texts and ``n_queries`` train
    queries (each with 1 positive and 5 negatives: every pair distinct), dev and DL19 of 2
    queries; ``section`` overrides keys of ``encode`` / ``cross_encoder`` (dicts)."""
    from tasks.config import compose

    raw = root / "raw"
    raw.mkdir(parents=True)
    texts = corpus_texts(n_passages)
    write_id_text(raw / "collection.tsv", enumerate(texts))
    qids = [1000 + 7 * i for i in range(n_queries)]
    train = zip(qids, tiny_texts(n_queries, seed=9, max_len=8), strict=True)
    write_id_text(raw / "queries.train.tsv", train)
    for name, seed in (("dev", 3), ("dl19", 4)):
        eval_queries = zip((5, 6), tiny_texts(2, seed=seed, max_len=8), strict=True)
        write_id_text(raw / f"queries.{name}.tsv", eval_queries)
    records = [
        HardNegatives(q, [(6 * i) % n_passages], {"bm25": [(6 * i + j) % n_passages for j in range(1, 6)]})
        for i, q in enumerate(qids)
    ]
    (root / "out").mkdir()
    write_hard_negatives(root / "out" / "msmarco-hard-negatives.jsonl.gz", records)
    (raw / "qrels.train.tsv").write_text("".join(f"{r.qid}\t0\t{r.pos[0]}\t1\n" for r in records))

    data = yaml.safe_load(compose("sample"))
    data["paths"] = {key: str(root / key) for key in data["paths"]}
    data["paths"]["raw"] = str(raw)
    data["inputs"].update(
        collection="collection.tsv",
        queries_train="queries.train.tsv",
        qrels_train="qrels.train.tsv",
        queries_dev="queries.dev.tsv",
        queries_dl19="queries.dl19.tsv",
    )
    data["systems"] = {SYSTEM: {"model": str(models.bi_cls_dot), "score": "dot", "max_seq_length": 32}}
    data["encode"].update(batch_size=8, device="cpu", dtype="fp32", addressing="text")
    data["encode"].update(section.get("encode", {}))
    data["cross_encoder"].update(
        name=CE_NAME, model=str(models.cross_encoder), max_length=64, batch_size=8,
        device="cpu", dtype="fp32", addressing="pair",
    )  # fmt: skip
    data["cross_encoder"].update(section.get("cross_encoder", {}))
    data["orchestration"].update(local_workers=1)  # in the stage process: the one a signal reaches
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return Checkout(root, params)


def child_env(work_log: Path) -> dict[str, str]:
    """The stage's environment: one torch thread (bytes are compared with an in-process run), no
    hub access, its work log at ``work_log``."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        **{WORK_LOG_ENV: str(work_log)},
    )
    env.pop("PYTHONPATH", None)  # cwd is the project root: `python -m tasks.<stage>` as a user runs it
    return env


def stage_cmd(module: str, checkout: Checkout) -> list[str]:
    args = ["--system", SYSTEM] if module == "tasks.encode" else []
    return [sys.executable, "-m", module, "--params", str(checkout.params), *args]


def packs(stores: Path) -> list[Path]:
    """The finished packs of every row store under ``stores``: a JSON (written last) beside its rows."""
    found = sorted(stores.glob("*/*.json")) if stores.is_dir() else []
    return [p for p in found if p.with_name(p.name[: -len(".json")] + ".rows.npy").exists()]


def stored_rows(stores: Path) -> int:
    """Rows in the finished packs under ``stores`` (distinct digests: a run never repeats one)."""
    return sum(json.loads(p.read_text())["rows"] for p in packs(stores))


@dataclass(frozen=True)
class Stopped:
    returncode: int
    packs: int  # finished packs when the signal was sent
    log: str


def signal_after_packs(
    cmd: list[str], env: dict[str, str], stores: Path, log: Path, sig: signal.Signals,
    min_packs: int = 1, timeout: float = 90.0,
) -> Stopped:  # fmt: skip
    """Start ``cmd``, send ``sig`` once ``stores`` holds ``min_packs`` finished packs, wait for it.

    Fails (never passes silently) when the child ends first or ``timeout`` passes; a child the
    signal does not end within 60 s is killed (its exit code then says SIGKILL)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    sent, n, ended = False, 0, None
    try:
        deadline = time.monotonic() + timeout
        while (ended := proc.poll()) is None and time.monotonic() < deadline:
            n = len(packs(stores))
            if n >= min_packs:
                proc.send_signal(sig)
                sent = True
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and not sent:
            proc.kill()  # timed out (or the test failed): nothing outlives it
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)  # a signalled child that ignores it is killed below
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    why = f"ended (exit {ended})" if ended is not None else f"timed out after {timeout:g}s"
    assert sent, (
        f"{cmd[2]} {why} with {n} of the {min_packs} pack(s) awaited, before it could be sent {sig.name}: "
        f"give it more work units (more rows, a smaller shard_size)\n{text[-3000:]}"
    )
    return Stopped(proc.returncode, n, text)


def work_lines(path: Path) -> list[dict[str, Any]]:
    """The :func:`tasks.io.record_work` lines of ``path`` (none: [])."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (missing root: empty)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
