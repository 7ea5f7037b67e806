"""Kill the incremental-refresh modes for real: ``encode.addressing: text`` and
``cross_encoder.addressing: pair``, each started as a user starts it (``python -m tasks.<stage>``),
signalled once its row store holds a pack it wrote, then rerun to completion.

Each test is a refresh: a complete run on the first half of the input, the input grown, the
refresh killed mid-way. After the kill the previous output is intact under its final name (the
new one appears only when complete); the rerun computes exactly the rows no finished pack holds
(the ``HARDNEGS_WORK_LOG`` line of :func:`tasks.io.record_work`) and writes, byte for byte, what
an uninterrupted run in a fresh directory writes. Ctrl-C (SIGINT) of ``score`` exits 130 with one
log line and leaves a store that the next run opens without a damaged pack.

The reruns and references run in this process (``main([...])``, one torch thread like the child)
to spare a torch import each; only the killed run needs a process of its own.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import pytest

from tasks import encode, score
from tasks.cli import EXIT_INTERRUPTED
from tests._dense_helpers import one_thread
from tests._model_helpers import TinyModels, tiny_models
from tests._refresh_kill_helpers import (
    CE_NAME,
    SYSTEM,
    WORK_LOG_ENV,
    Checkout,
    child_env,
    packs,
    signal_after_packs,
    stage_cmd,
    stored_rows,
    tree_bytes,
    work_lines,
    write_params,
)

pytestmark = pytest.mark.slow  # child processes that import torch (~25 s for the file on 2 cores)

# many small work units, so a signal lands mid-way (the child fails loudly if it ends first)
N_PASSAGES, N_QUERIES, UNIT = 240, 40, 4
ENCODE = {"encode": {"shard_size": UNIT}}
SCORE = {"cross_encoder": {"shard_size": UNIT}}
# what score writes (the pickle's provenance sidecar names paths: it differs between checkouts)
SCORE_OUTPUTS = ("scores/ce-scores.parquet", "scores/manifest.json", f"out/{CE_NAME}-scores.pkl.gz",
                 "metrics/score.json")  # fmt: skip
ENCODE_OUTPUTS = ("manifest.json", "corpus/ids.npy", "corpus/00000.npy", "train/ids.npy", "dl19/ids.npy")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory)


@pytest.fixture
def work_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "work.jsonl"
    monkeypatch.setenv(WORK_LOG_ENV, str(path))
    return path


def _main(module: str, checkout: Checkout) -> None:
    args = ["--params", str(checkout.params)] + (["--system", SYSTEM] if module == "tasks.encode" else [])
    with one_thread():
        rc = (encode if module == "tasks.encode" else score).main(args)
    assert rc == 0, f"{module} on {checkout.root} exited {rc}"


def _encode_outputs(checkout: Checkout) -> dict[str, bytes]:
    """Every file of the encode output (none: {})."""
    return tree_bytes(checkout.path("embeddings") / SYSTEM)


def _score_outputs(checkout: Checkout) -> dict[str, bytes]:
    """The bytes of each of ``SCORE_OUTPUTS`` that exists."""
    return {rel: checkout.path(rel).read_bytes() for rel in SCORE_OUTPUTS if checkout.path(rel).is_file()}


EXPECTED = {"tasks.encode": ENCODE_OUTPUTS, "tasks.score": SCORE_OUTPUTS}


def _halve(checkout: Checkout, module: str) -> bytes:
    """Cut the input the stage grows on to its first half; returns the full input's bytes."""
    if module == "tasks.encode":
        path = checkout.root / "raw" / "collection.tsv"
        full = path.read_bytes()
        path.write_bytes(b"".join(full.splitlines(keepends=True)[: N_PASSAGES // 2]))
        return full
    from tasks.records import read_hard_negatives, write_hard_negatives

    path = checkout.path("out") / "msmarco-hard-negatives.jsonl.gz"
    full = path.read_bytes()
    write_hard_negatives(path, list(read_hard_negatives(path))[: N_QUERIES // 2])
    return full


def _restore(checkout: Checkout, module: str, full: bytes) -> None:
    rel = "raw/collection.tsv" if module == "tasks.encode" else "out/msmarco-hard-negatives.jsonl.gz"
    (checkout.root / rel).write_bytes(full)


CASES = [
    pytest.param("tasks.encode", ENCODE, _encode_outputs, "text_stores", "encode@tiny", id="encode-text"),
    pytest.param("tasks.score", SCORE, _score_outputs, "pair_stores", "score", id="score-pair"),
]


@pytest.mark.parametrize(("module", "section", "outputs", "stores_of", "stage"), CASES)
def test_sigkill_mid_refresh_then_rerun(
    module, section, outputs, stores_of, stage, models: TinyModels, tmp_path: Path, work_log: Path
) -> None:
    killed = write_params(tmp_path / "killed", models, N_PASSAGES, N_QUERIES, **section)
    stores: Path = getattr(killed, stores_of)
    full = _halve(killed, module)
    _main(module, killed)  # the previous complete run, on half the input
    previous = outputs(killed)
    assert set(EXPECTED[module]) <= set(previous) and packs(stores)
    _restore(killed, module, full)

    before = len(packs(stores))
    child_log = tmp_path / "child-work.jsonl"
    stopped = signal_after_packs(stage_cmd(module, killed), child_env(child_log), stores,
                                 tmp_path / "killed.log", signal.SIGKILL, min_packs=before + 2)  # fmt: skip
    assert stopped.returncode == -signal.SIGKILL, stopped.log[-3000:]
    assert work_lines(child_log) == []  # it never got to the end
    assert outputs(killed) == previous  # (c) the previous output, whole, under its final name
    held = stored_rows(stores)  # rows of every finished pack: the previous run's and the killed one's

    _main(module, killed)  # (b) the rerun computes what no finished pack holds, no more
    clean = write_params(tmp_path / "clean", models, N_PASSAGES, N_QUERIES, **section)
    _main(module, clean)
    resumed, fresh = (line for line in work_lines(work_log)[1:] if line["stage"] == stage)
    assert fresh["done"] == stored_rows(getattr(clean, stores_of)) > held
    assert resumed["done"] == fresh["done"] - held > 0, (resumed, fresh, held)
    assert stored_rows(stores) == fresh["done"]  # nothing computed twice, nothing left out
    assert outputs(killed) == outputs(clean)  # (a) byte-identical to the uninterrupted run
    assert outputs(killed) != previous


def test_sigint_of_score_exits_130_and_leaves_an_intact_store(
    models: TinyModels, tmp_path: Path, work_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C of ``python -m tasks.score``: exit 130 (tasks.cli), one log line, no output, and a
    store whose every pack the next run opens (no "damaged" pack removed) and resumes from."""
    checkout = write_params(tmp_path / "int", models, N_PASSAGES, N_QUERIES, **SCORE)
    stopped = signal_after_packs(stage_cmd("tasks.score", checkout), child_env(tmp_path / "child.jsonl"),
                                 checkout.pair_stores, tmp_path / "int.log", signal.SIGINT)  # fmt: skip
    assert stopped.returncode == EXIT_INTERRUPTED, stopped.log[-3000:]  # not 1, bad input's code
    assert "interrupted (SIGINT)" in stopped.log and "Traceback" not in stopped.log, stopped.log[-3000:]
    assert _score_outputs(checkout) == {}
    held, n_packs = stored_rows(checkout.pair_stores), len(packs(checkout.pair_stores))
    assert n_packs >= stopped.packs >= 1

    with caplog.at_level(logging.WARNING, logger="tasks.rowstore"):
        _main("tasks.score", checkout)
    damaged = [r.getMessage() for r in caplog.records if r.name == "tasks.rowstore"]
    assert damaged == [], damaged
    (line,) = work_lines(work_log)
    assert line["done"] == line["total"] - held > 0
    clean = write_params(tmp_path / "clean", models, N_PASSAGES, N_QUERIES, **SCORE)
    _main("tasks.score", clean)
    assert _score_outputs(checkout) == _score_outputs(clean)
    assert set(_score_outputs(clean)) == set(SCORE_OUTPUTS)


def test_a_child_that_ends_before_its_first_pack_fails_loudly(tmp_path: Path) -> None:
    """The guard against a kill test that passes without killing anything: a stage that exits
    (here: a bad params file, exit 2) before any pack is a failure that says so."""
    bad = tmp_path / "params.yaml"
    bad.write_text("encode: {shard_sise: 4}\n")
    cmd = [sys.executable, "-m", "tasks.score", "--params", str(bad)]
    expected = r"tasks.score ended \(exit 2\) with 0 of the 1 pack.*before it could be sent SIGKILL"
    with pytest.raises(AssertionError, match=expected):
        signal_after_packs(cmd, child_env(tmp_path / "w.jsonl"), tmp_path / "stores", tmp_path / "log",
                           signal.SIGKILL)  # fmt: skip
    assert not (tmp_path / "stores").exists()
