"""A tiny hard-negatives world for the score / denoise / export / rerank tests.

``tiny_world(root, collection)`` writes training queries and a hard-negatives file whose
systems overlap (as real systems do), over the passages of ``collection`` (pids 0..N-1).

``dvc_project(dest, ce, collection)`` builds a throwaway DVC repository that runs the real
``score`` and ``ce_rerank`` stages of ``dvc.yaml`` (with a copy of ``tasks/``) on such a world,
for the fault-injection tests (kill -9 under ``dvc repro``, two writers);
``reference_outputs`` runs the same stages uninterrupted for a byte-for-byte comparison.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.records import (
    HardNegatives,
    read_collection,
    scores_table,
    write_hard_negatives,
    write_id_text,
    write_table,
)
from tests._model_helpers import tiny_texts

SYSTEMS = ("bm25", "sys-a", "sys-b")


@dataclass(frozen=True)
class World:
    collection: Path
    queries: Path
    negatives: Path
    records: list[HardNegatives]


def make_records(n_queries: int, n_passages: int, per_system: int = 8, seed: int = 3) -> list[HardNegatives]:
    """Queries 1000.. with 1-2 positives and ``per_system`` negatives per system, overlapping."""
    rng = random.Random(seed)
    records = []
    for i in range(n_queries):
        qid = 1000 + 7 * i
        pos = sorted(rng.sample(range(n_passages), rng.choice((1, 1, 2))))
        pool = [p for p in rng.sample(range(n_passages), 2 * per_system) if p not in pos]
        neg = {s: rng.sample(pool, min(per_system, len(pool))) for s in SYSTEMS}
        records.append(HardNegatives(qid, pos, neg))
    return records


def tiny_world(root: Path, collection: Path, n_queries: int = 12, per_system: int = 8) -> World:
    root.mkdir(parents=True, exist_ok=True)
    n_passages = sum(1 for _ in read_collection(collection))
    records = make_records(n_queries, n_passages, per_system)
    queries = root / "queries.train.tsv"
    write_id_text(
        queries, zip([r.qid for r in records], tiny_texts(n_queries, seed=9, max_len=8), strict=True)
    )
    negatives = root / "msmarco-hard-negatives.jsonl.gz"
    write_hard_negatives(negatives, records)
    return World(collection, queries, negatives, records)


def synthetic_scores(path: Path, records: list[HardNegatives], seed: int = 0) -> dict[tuple[int, int], float]:
    """Write a CE scores Parquet for every pair of ``records`` (no model); returns the scores."""
    rng = np.random.default_rng(seed)
    scores: dict[tuple[int, int], float] = {}
    for rec in records:
        for pid in rec.pos:
            scores[(rec.qid, pid)] = float(np.float32(rng.uniform(2, 8)))
        for negs in rec.neg.values():
            for pid in negs:
                scores.setdefault((rec.qid, pid), float(np.float32(rng.uniform(-8, 8))))
    keys = sorted(scores)
    write_table(
        path,
        scores_table(
            np.array([k[0] for k in keys]),
            np.array([k[1] for k in keys]),
            np.array([scores[k] for k in keys]),
        ),
    )
    return scores


# --------------------------------------------------------------------------- throwaway DVC project
ROOT = Path(__file__).resolve().parent.parent
CE_DIR = "data/models/smoke-cross-encoder"
STAGES = ("score", "ce_rerank")  # the real dvc.yaml definitions of these stages


@dataclass(frozen=True)
class DvcProject:
    """A copy of ``tasks/`` with the real ``score`` / ``ce_rerank`` stages of ``dvc.yaml``, a tiny
    world under ``data/sample`` and the tiny cross-encoder, in a fresh DVC repository."""

    root: Path
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def cache(self) -> Path:
        return self.root / "data" / "cache" / "scores"

    def cached_shards(self) -> int:
        """Finished shards in the cache (a sidecar JSON is written last)."""
        return len(list(self.cache.rglob("*.json"))) if self.cache.exists() else 0

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``args`` in the project (own session, output to ``log``)."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """Kill what :meth:`spawn` started and is still running (its whole process group)."""
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def run(self, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def dvc(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dvc", *args]

    def cli(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def lock_holder(self, stage: str) -> dict[str, object]:
        """What the live holder of ``stage``'s lock wrote about itself ({} if none is alive).

        Read-only (no flock probe), so it never makes a starting stage see its lock held."""
        from tasks.locks import read_holder

        for path in sorted((self.root / ".dvc" / "tmp" / "locks").glob(f"{stage}-*.lock")):
            holder = read_holder(path)
            if isinstance(holder.get("pid"), int) and alive(holder["pid"]):  # type: ignore[arg-type]
                return holder
        return {}

    def lock_free(self, stage: str) -> bool:
        """True when nobody holds ``stage``'s lock (probes with a non-blocking flock)."""
        import fcntl

        for path in (self.root / ".dvc" / "tmp" / "locks").glob(f"{stage}-*.lock"):
            with open(path, "rb") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
        return True

    def outputs(self, base: str | Path = "data/sample") -> dict[str, bytes]:
        """The bytes of every output of ``score`` and ``ce_rerank`` under ``base``."""
        files = [
            "scores/ce-scores.parquet",
            "scores/manifest.json",
            "out/smoke-cross-encoder-scores.pkl.gz",
            "metrics/score.json",
            "runs/cross-encoder/dev.rerank.trec",
            "runs/cross-encoder/dl19.rerank.trec",
        ]
        return {f: (self.root / base / f).read_bytes() for f in files if (self.root / base / f).exists()}


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie -- dead, not yet reaped by its new parent -- is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def project_env() -> dict[str, str]:
    """The environment the stages run with: this interpreter's ``python``/``dvc`` first on PATH,
    one torch thread (the bytes are compared across processes), no hub access."""
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def _params(data: dict, base: str) -> dict:
    data = copy.deepcopy(data)
    for key in ("scores", "out", "metrics", "runs"):
        data["paths"][key] = f"{base}/{key}"
    return data


def dvc_project(dest: Path, models_ce: Path, collection: Path, n_queries: int = 24) -> DvcProject:
    """Build the project: ~480 distinct pairs in shards of 8 for ``score``, 10 + 6 queries with
    12 candidates each for ``ce_rerank`` (a few dozen shards each, a few seconds of scoring)."""
    import yaml

    from tasks.config import compose
    from tasks.records import Hit, write_run

    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "tasks", dest / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    (dest / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {s: stages[s] for s in STAGES}}, sort_keys=False)
    )
    shutil.copytree(models_ce, dest / CE_DIR)

    data = yaml.safe_load(compose("sample"))
    data["cross_encoder"].update(
        model=CE_DIR, shard_size=8, batch_size=4, max_length=64, device="cpu", dtype="fp32"
    )
    data["evaluate"].update(ce_rerank_depth=12, dev_candidates="bm25", dl19_candidates="bm25")
    data["orchestration"]["local_workers"] = 1
    (dest / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    raw = dest / data["paths"]["raw"]
    inputs = {k: raw / v for k, v in data["inputs"].items()}
    inputs["collection"].parent.mkdir(parents=True)
    shutil.copy(collection, inputs["collection"])
    world = tiny_world(dest / "world", inputs["collection"], n_queries=n_queries)
    shutil.move(world.queries, inputs["queries_train"])
    out = dest / data["paths"]["out"]
    out.mkdir(parents=True)
    shutil.move(world.negatives, out / "msmarco-hard-negatives.jsonl.gz")
    rng = random.Random(5)
    for name, n in (("dev", 10), ("dl19", 6)):
        qids = [50 + 3 * i + len(name) for i in range(n)]
        key = "queries_dev" if name == "dev" else "queries_dl19"
        inputs[key].parent.mkdir(parents=True, exist_ok=True)
        write_id_text(inputs[key], zip(qids, tiny_texts(n, seed=len(name), max_len=8), strict=True))
        hits = [Hit(q, p, r + 1, 20.0 - r) for q in qids for r, p in enumerate(rng.sample(range(300), 16))]
        write_run(dest / data["paths"]["runs"] / "bm25" / f"{name}.full.trec", hits, "bm25")
    inputs["top1000_dev"].parent.mkdir(parents=True, exist_ok=True)
    inputs["top1000_dev"].write_text("")  # a dep of ce_rerank; unused with dev_candidates: bm25
    inputs["top1000_dl19"].parent.mkdir(parents=True, exist_ok=True)
    inputs["top1000_dl19"].write_text("")  # likewise, with dl19_candidates: bm25
    shutil.rmtree(dest / "world")

    # the reference: the same stages, uninterrupted, on other output paths and an empty cache;
    # absolute paths, so that it can run in the test process (tasks.config.ROOT is not dest)
    ref = _params(data, str(dest / "ref"))
    ref["paths"].update(score_cache=str(dest / "ref" / "cache"), raw=str(raw))
    ref["cross_encoder"]["model"] = str(dest / CE_DIR)
    (dest / "ref.yaml").write_text(yaml.safe_dump(ref, sort_keys=False))
    shutil.copytree(out, dest / "ref" / "out")
    shutil.copytree(dest / data["paths"]["runs"], dest / "ref" / "runs")

    project = DvcProject(dest, project_env())
    for args in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"]):
        subprocess.run(project.dvc(*args), cwd=dest, env=project.env, check=True, capture_output=True)
    return project


def reference_outputs(project: DvcProject) -> dict[str, bytes]:
    """Run score then ce_rerank uninterrupted with ``ref.yaml`` (in this process, one torch
    thread like the stage processes); the bytes of their outputs."""
    from tasks import rerank, score
    from tests._dense_helpers import one_thread

    with one_thread():
        assert score.main(["--params", str(project.root / "ref.yaml")]) == 0
        assert rerank.main(["--params", str(project.root / "ref.yaml")]) == 0
    return project.outputs(str(project.root / "ref"))
