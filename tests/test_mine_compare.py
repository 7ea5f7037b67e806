"""benchmarks/mine_compare.py: its comparison, measuring and report functions on tiny inputs (the
benchmark itself takes minutes: run it by hand), and its CLI's argument errors."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from tests._bench_helpers import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mc() -> ModuleType:
    return load_benchmark("mine_compare")


def triplets(query: str, positive: str, negs: list[str]) -> list[dict[str, str]]:
    return [{"query": query, "positive": positive, "negative": n} for n in negs]


def test_agreement_counts_identical_reordered_missing_and_outside_window(mc: ModuleType) -> None:
    ours = [
        *triplets("q1", "p1", ["a", "b", "c"]),
        *triplets("q2", "p2", ["d", "e"]),
        *triplets("q3", "p3", ["f", "g"]),
        *triplets("q4", "p4a", ["h"]),  # two positives, the same negatives for each
        *triplets("q4", "p4b", ["h"]),
    ]
    peer = [
        *triplets("q1", "p1", ["a", "b", "c"]),  # identical
        *triplets("q2", "p2", ["e", "d"]),  # same set, other order
        *triplets("q4", "p4b", ["h"]),  # row order of the positives does not matter
        *triplets("q4", "p4a", ["h"]),
        *triplets("q5", "p5", ["z"]),  # the peer only; z is beyond our window
    ]
    windows = {"q1": {"a", "b", "c"}, "q2": {"d", "e"}, "q3": {"f", "g"}, "q4": {"h"}}
    ag = mc.agreement(ours, peer, "triplet", windows)
    assert (ag.queries, ag.identical, ag.same_set, ag.only_one_side, ag.outside_window) == (5, 2, 3, 2, 1)


def test_ntuple_negatives_in_column_order(mc: ModuleType) -> None:
    row = {"query": "q", "positive": "p", "negative_10": "j", "negative_2": "b", "negative_1": "a"}
    assert mc.negatives([row], "n-tuple") == {"q": {"p": ["a", "b", "j"]}}
    other = dict(row, negative_2="x")
    assert mc.agreement([row], [other], "n-tuple", {"q": {"a", "b", "j"}}).outside_window == 1


def test_measured_runs_and_kills_the_process_group(mc: ModuleType, tmp_path: Path) -> None:
    env = mc._env(Path(sys.executable).parent)
    done = mc.measured([sys.executable, "-c", "x = bytearray(50 << 20)"], tmp_path, env, tmp_path / "log")
    assert done.rc == 0 and not done.killed and done.peak_rss > 0
    # a child that starts a grandchild: both die with the group
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    t0 = time.monotonic()
    killed = mc.measured([sys.executable, "-c", script], tmp_path, env, tmp_path / "log", kill_after=1.5)
    assert killed.killed and killed.rc == -9 and time.monotonic() - t0 < 10
    try:
        gone = psutil.Process(int(pid_file.read_text())).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        gone = True
    assert gone
    assert "$ " in (tmp_path / "log").read_text()


def _side(seconds: float, again: bool = True) -> dict[str, Any]:
    m = {"seconds": seconds, "peak_rss": 300 << 20, "rc": 0, "killed": False}
    side: dict[str, Any] = {
        "scratch": m,
        "further_s": seconds / 10,
        "texts_encoded": 100,
        "kill": {**m, "seconds": seconds / 2, "killed": again, "rc": -9},
        "kill_note": "in encode",
    }
    if again:
        side |= {"again": {**m, "seconds": seconds / 4}, "again_same": True}
    return side


def test_report_puts_both_sides_in_one_table(mc: ModuleType) -> None:
    names = list(mc.OPTION_SETS)
    ours = _side(40.0) | {"ce_pairs": dict.fromkeys(names, 0) | {names[1]: 1500}}
    peer = _side(10.0, again=False) | {"ce_pairs": dict.fromkeys(names, 0) | {names[1]: 2000}}
    result = {
        "docs": 600, "queries": 150, "seed": 13, "pairs": 159, "load": [0.5], "load_end": [1.0], "top_k": 10,
        "kill_at": 0.5, "ours": ours, "peer": peer,
        "agreement": {
            n: {"queries": 150, "identical": 120, "same_set": 130, "only_one_side": 2, "outside_window": 30}
            for n in names
        },
    }  # fmt: skip
    text = mc.report(result, "mine_hard_negatives (sentence-transformers 6.2.0)")
    header = (
        "| measure | this pipeline | mine_hard_negatives (sentence-transformers 6.2.0) | ratio ours/peer |"
    )
    assert header in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") == 3 for line in rows), rows  # four columns everywhere
    assert f"| wall time from scratch: {names[0]} | 40.0 s | 10.0 s | 4.00 |" in text
    assert f"| CE pairs scored, all {len(names)} option sets | 1,500 | 2,000 | 0.75 |" in text
    assert f"| CE pairs scored: {names[1]} | 1,500 | 2,000 |  |" in text
    assert "with this CPU's native kernels, as ours." in text  # no peer_env: native on both sides
    assert "80.0% (120 of 150 queries)" in text
    assert "restart finished in 10.0 s = 25% of a run from scratch" in text
    assert "finished before the kill (5 s): not measured" in text  # the peer's side here
    assert "alternating rounds" not in text and "each round" not in text  # --rounds 1: no rounds row
    # --rounds 3: the best of each side, and every round's pair in the notes
    ours["scratch_rounds"], peer["scratch_rounds"] = [40.0, 30.0, 36.0], [10.0, 12.0, 15.0]
    text = mc.report(result, "mine_hard_negatives (sentence-transformers 6.2.0)")
    assert "| wall time from scratch, best of 3 alternating rounds | 30.0 s | 10.0 s | 3.00 |" in text
    each = "each round (ours / peer, ratio): 40.0 / 10.0 s, 4.00; 30.0 / 12.0 s, 2.50; 36.0 / 15.0 s, 2.40"
    assert each in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kill-at", "1.5"], "--kill-at must lie between 0 and 1"),
        (["--docs", "100", "--queries", "100"], "--docs must exceed --queries"),
        (["--queries", "0"], "--docs must exceed --queries"),
        (["--rounds", "0"], "--rounds must be 1 or more"),
    ],
)
def test_cli_rejects_bad_arguments(
    mc: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        mc.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_help(mc: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        mc.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--docs", "--queries", "--workdir", "--kill-at", "--markdown", "--json"):
        assert flag in text


def test_resumed_reads_what_the_stages_reused(mc: ModuleType) -> None:
    log = (
        "INFO __main__: encode all-MiniLM-L6-v2: 7800 rows, 3 shards encoded, 2 reused from cache\n"
        "2026 INFO tasks.score: score: 1 shard(s) of 4 reused from data/cache/scores, 3 to compute\n"
        "2026 INFO tasks.score: mine_scores: 2 shard(s) of 2 reused from data/cache/scores, 0 to compute\n"
    )
    assert mc.resumed(log) == [
        "encode: 2 of 5 shards from its cache",
        "score: 1 of 4 shards from its cache",
        "mine_scores: 2 of 2 shards from its cache",
    ]
    assert mc.resumed("Running stage 'mine_export':\n") == []


def test_sets_parse_as_yaml_and_nest_into_the_profile(mc: ModuleType) -> None:
    sets = mc.parse_sets(
        ["encode.cpu_kernels=native", "orchestration.local_workers=1", "search.memory_mb=null", "a.b.c=x=y"]
    )
    assert sets == {
        "encode.cpu_kernels": "native",
        "orchestration.local_workers": 1,
        "search.memory_mb": None,
        "a.b.c": "x=y",  # only the first '=' splits
    }
    profile = {"encode": {"batch_size": 64}, "mine": {"top_k": 10}}
    out = mc.apply_sets(profile, sets)
    assert out["encode"] == {"batch_size": 64, "cpu_kernels": "native"}  # siblings kept
    assert out["orchestration"] == {"local_workers": 1} and out["a"] == {"b": {"c": "x=y"}}
    with pytest.raises(ValueError, match="mine.top_k.x: 'top_k' holds 10"):
        mc.apply_sets(profile, {"mine.top_k.x": 1})


@pytest.mark.parametrize("item", ["encode.cpu_kernels", "=native", "encode..cpu_kernels=native", "x.=1"])
def test_sets_reject_malformed_items(mc: ModuleType, item: str) -> None:
    with pytest.raises(ValueError, match="want KEY=VALUE"):
        mc.parse_sets([item])


def test_cli_rejects_a_malformed_set(mc: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        mc.main(["--set", "encode.cpu_kernels"])
    assert exc.value.code == 2
    assert "want KEY=VALUE" in capsys.readouterr().err


def test_measured_stamps_the_stages_a_dvc_log_starts(mc: ModuleType, tmp_path: Path) -> None:
    env = mc._env(Path(sys.executable).parent)
    script = (
        "import sys, time; "
        "print(\"Running stage 'ingest@x':\", flush=True); time.sleep(0.6); "
        "print(\"Running stage 'encode':\", flush=True); time.sleep(0.6)"
    )
    log = tmp_path / "log"
    log.write_text("Running stage 'old':\n")  # an earlier run's line in the same log: not this run's
    m = mc.measured([sys.executable, "-c", script], tmp_path, env, log)
    assert list(m.stage_starts) == ["ingest@x", "encode"]
    assert m.stage_starts["encode"] - m.stage_starts["ingest@x"] >= 0.4
    spans = mc.stage_seconds(m)
    assert list(spans) == ["(start-up)", "ingest@x", "encode"]
    assert sum(spans.values()) == pytest.approx(m.seconds)
    assert mc.stage_seconds(mc.Measure(1.0, 0, 0, False)) == {}


def test_report_without_kill_runs_names_the_overrides(mc: ModuleType) -> None:
    names = list(mc.OPTION_SETS)
    ours = {k: v for k, v in _side(40.0).items() if k not in ("kill", "kill_note", "again", "again_same")}
    peer = {k: v for k, v in _side(10.0).items() if k not in ("kill", "kill_note", "again", "again_same")}
    result = {
        "docs": 600, "queries": 150, "seed": 13, "pairs": 159, "load": [0.5], "load_end": [1.0], "top_k": 10,
        "kill_at": 0.5, "ours": ours | {"ce_pairs": dict.fromkeys(names, 0)},
        "peer": peer | {"ce_pairs": dict.fromkeys(names, 0)},
        "peer_env": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"},
        "sets": {"orchestration.local_workers": 1, "encode.cpu_kernels": "native"},
        "agreement": {
            n: {"queries": 150, "identical": 120, "same_set": 130, "only_one_side": 2, "outside_window": 30}
            for n in names
        },
    }  # fmt: skip
    text = mc.report(result, "peer")
    assert "SIGKILL" not in text
    assert f"| wall time from scratch: {names[0]} | 40.0 s | 10.0 s | 4.00 |" in text
    assert "overridden (--set): encode.cpu_kernels=native, orchestration.local_workers=1." in text
    assert "with our CPU kernels pinned (ATEN_CPU_CAPABILITY=avx2, MKL_CBWR=AVX2,STRICT)." in text
