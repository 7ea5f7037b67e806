"""Bad input never replaces good output (issue 13, item 5), through the stage CLIs as DVC runs them.

Each test first runs the stage on good inputs (in-process, to save start-up time), then breaks
ONE input the way it happens in practice (an empty or truncated download, a line with a stray
TAB, an empty query text) and reruns the stage as a real ``python -m tasks.<stage>`` process:
it must end with exit code 1 and one log line naming the file (and line) and what to do, and
every previous output must be byte-identical, with no temporary left.
"""

from __future__ import annotations

import gzip
import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.records import Hit, Qrel, write_qrels, write_run
from tests._faults_helpers import HARD_NEGATIVES, error_line, leftovers, make_project, raw, run_cli, snapshot


def _in_process(stage: str, params: Path, *args: str) -> int:
    main = importlib.import_module(f"tasks.{stage}").main
    return int(main([*args, "--params", str(params)]))


def _merged(tmp_path: Path, **inputs: str) -> tuple[Path, Path, dict[str, str]]:
    params = make_project(tmp_path, queries=200, **inputs)
    assert _in_process("merge", params) == 0
    out = tmp_path / "out" / HARD_NEGATIVES
    return params, out, snapshot(out)


def test_empty_qrels_fail_merge_and_keep_the_published_file(tmp_path: Path, caplog) -> None:
    """The issue's case: an empty qrels.train.tsv used to exit 0 and publish a 0-line file."""
    params, out, before = _merged(tmp_path)
    qrels = raw(tmp_path, None, "qrels_train")
    qrels.write_text("")
    proc = run_cli("merge", params)
    assert proc.returncode == 1
    line = error_line(proc)
    assert f"{qrels}: no judgements (an empty qrels file" in line and "rerun the stage" in line
    assert snapshot(out) == before and leftovers(out.parent) == []
    # qrels of other queries: nothing in common with the mined ones, so nothing is written either
    write_qrels(qrels, [Qrel(10**6 + q, 1, 1) for q in range(5)])
    with caplog.at_level(logging.ERROR):
        assert _in_process("merge", params) == 1
    assert f"{qrels}: none of its 5 judged queries is among the 200 queries mined" in caplog.text
    assert snapshot(out) == before


def test_truncated_inputs_fail_merge_naming_them(tmp_path: Path, caplog) -> None:
    """A gzip input cut short (an interrupted copy) and a hits file cut in half."""
    params, out, before = _merged(tmp_path, qrels_train="collectionandqueries/qrels.train.tsv.gz")
    qrels = raw(tmp_path, None, "qrels_train")
    body = qrels.read_bytes()
    assert body[:2] == b"\x1f\x8b"  # written gzipped, as its name says
    qrels.write_bytes(body[: len(body) // 2])
    proc = run_cli("merge", params)
    assert proc.returncode == 1
    line = error_line(proc)
    assert f"{qrels}: " in line and "gzip" in line
    assert snapshot(out) == before

    qrels.write_bytes(body)
    hits = tmp_path / "negatives" / "bm25.parquet"
    hits.write_bytes(hits.read_bytes()[:100])
    with caplog.at_level(logging.ERROR):
        assert _in_process("merge", params) == 1
    assert f"{hits}: not a readable Parquet file" in caplog.text
    assert snapshot(out) == before and leftovers(out.parent) == []


def _bm25_project(tmp_path: Path) -> Path:
    params = make_project(tmp_path)
    passages = "".join(f"{p}\tpassage number {p} about topic {p % 3}\n" for p in range(1, 30))
    raw(tmp_path, None, "collection").write_text(passages)
    raw(tmp_path, None, "queries_train").write_text("1\ttopic one\n2\ttopic two\n3\tpassage topic\n")
    raw(tmp_path, None, "queries_dev").write_text("7\ttopic one\n")
    raw(tmp_path, None, "queries_dl19").write_text("8\ttopic two\n")
    return params


def test_stray_tab_and_empty_query_keep_index_and_negatives(tmp_path: Path) -> None:
    """A collection line with an extra TAB (bm25_index) and an empty query text (bm25_mine)."""
    params = _bm25_project(tmp_path)
    assert _in_process("bm25_index", params) == 0
    assert _in_process("bm25_mine", params) == 0
    index, negatives, runs = tmp_path / "bm25_index", tmp_path / "negatives", tmp_path / "runs"
    before = snapshot(index, negatives, runs)

    collection = raw(tmp_path, None, "collection")
    good = collection.read_text()
    collection.write_text(good.replace("5\tpassage number 5", "5\tpassage\tnumber 5"))
    proc = run_cli("bm25_index", params)
    assert proc.returncode == 1
    line = error_line(proc)
    assert f"{collection}:5: expected 2 tab-separated fields '<pid>\\t<passage>', found 3 fields" in line
    assert "fix or delete the line" in line
    assert snapshot(index, negatives, runs) == before and leftovers(tmp_path) == []

    collection.write_text(good)
    queries = raw(tmp_path, None, "queries_train")
    queries.write_text("1\ttopic one\n2\t\n3\tpassage topic\n")
    proc = run_cli("bm25_mine", params)
    assert proc.returncode == 1
    assert f"{queries}:2: qid 2 has an empty query; give it a text or delete the line" in error_line(proc)
    assert snapshot(index, negatives, runs) == before and leftovers(negatives) == []


def test_empty_dev_qrels_fail_evaluate_with_exit_1_naming_the_file(tmp_path: Path, caplog) -> None:
    """It used to say ``error: qrels: no judgements`` (no file) and exit 2, the params code."""
    params = make_project(tmp_path)
    write_run(tmp_path / "runs" / "bm25" / "dev.full.trec", [Hit(7, 1, 1, 2.0), Hit(7, 2, 2, 1.0)], "bm25")
    qrels_dev = raw(tmp_path, None, "qrels_dev")
    write_qrels(qrels_dev, [Qrel(7, 2, 1)])
    assert _in_process("evaluate", params, "run") == 0
    metrics, report = tmp_path / "metrics", tmp_path / "report"
    before = snapshot(metrics, report)
    qrels_dev.write_text("")
    proc = run_cli("evaluate", params, "run")
    assert proc.returncode == 1
    assert f"{qrels_dev}: no judgements (an empty qrels file" in error_line(proc)
    assert snapshot(metrics, report) == before
    # judgements of other queries: the metrics' error now names both files
    write_qrels(qrels_dev, [Qrel(99, 2, 1)])
    with caplog.at_level(logging.ERROR):
        assert _in_process("evaluate", params, "run") == 1
    assert f"dev.full.trec against {qrels_dev}: no query of the run is in the qrels" in caplog.text
    assert snapshot(metrics, report) == before


@pytest.mark.parametrize("stage", ["denoise", "export"])
def test_empty_hard_negatives_fail_their_readers(tmp_path: Path, stage: str, caplog) -> None:
    """An empty hard-negatives file (merge no longer writes one) is bad input, not 0 rows."""
    params = make_project(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with gzip.open(out / HARD_NEGATIVES, "wb"):
        pass
    (out / "msmarco-hard-negatives.denoised.jsonl.gz").write_bytes((out / HARD_NEGATIVES).read_bytes())
    if stage == "denoise":  # the scores are read first: give it a real (tiny) scores file
        from tasks.records import scores_table, write_table

        write_table(tmp_path / "scores" / "ce-scores.parquet", scores_table([1], [10], [0.5]))
    with caplog.at_level(logging.ERROR):
        assert _in_process(stage, params) == 1
    assert f"{out}/msmarco-hard-negatives" in caplog.text and "no hard-negative records" in caplog.text


@pytest.mark.slow  # ~15 s: a project copy and three dvc commands
def test_under_dvc_repro_the_failed_stage_is_not_recorded_and_checkout_restores(tmp_path: Path) -> None:
    """DVC deletes a stage's outputs before it runs it, so under ``dvc repro`` the previous file
    is not left in the workspace by anyone; what the stage guarantees there is that the failure
    is not recorded (``dvc.lock`` keeps the good run) and ``dvc checkout`` restores the previous
    output byte for byte from DVC's cache."""
    from tasks.records import hits_table, write_hits
    from tests._deploy_helpers import dvc, project_copy

    proj = project_copy(tmp_path / "p")
    sample = proj / "data" / "sample"
    write_hits(sample / "negatives" / "bm25.parquet", hits_table([1, 1, 2], [5, 6, 7], [3.0, 2.0, 1.0]))
    qrels = sample / "raw" / "collectionandqueries" / "qrels.train.tsv"
    write_qrels(qrels, [Qrel(1, 9, 1), Qrel(2, 9, 1)])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc(["repro", "--single-item", "merge"], proj, env)
    out = sample / "out" / HARD_NEGATIVES
    before, lock = snapshot(out), (proj / "dvc.lock").read_text()

    qrels.write_text("")
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", "merge"]
    proc = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert f"{qrels}: no judgements (an empty qrels file" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (proj / "dvc.lock").read_text() == lock
    dvc(["checkout", "merge"], proj, env)
    assert snapshot(out) == before
