"""benchmarks/gpu_check.sh, the prepared GPU check, runs end to end here in its dry mode.

The real check needs a CUDA GPU (the device machine); here the dry mode (``--device cpu``)
runs every section on the CPU with tiny sizes through the same code, so the script, its
table and its failure modes are tested on any machine. ``PYTHON`` points the script at this
interpreter (on the device machine it is the plain ``python3``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_check(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH", "GPU_CHECK_SITE")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd="/",  # the script finds the tree itself
        env={**base, "PYTHON": sys.executable, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table_rows(stdout: str) -> list[list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]  # without the header


def test_dry_mode_prints_the_table(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_check("--device", "cpu", "--work", str(tmp_path), env={"OUT": str(out)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^gpu_check: tree \d+ MiB without \.git", proc.stdout, re.M)
    assert "DRY MODE" in proc.stdout
    rows = table_rows(proc.stdout)
    by_check = {(r[0], r[1].split(",")[0]): r for r in rows}
    assert set(by_check) == {
        ("local workers", "CPU stage"),
        ("encode", "smoke bi-encoder (2x64)"),
        ("exact search", "Gaussian"),
        ("exact search", "quantised"),
        ("CE scoring", "smoke cross-encoder (2x64)"),
    }, rows
    for key in [("encode", "smoke bi-encoder (2x64)"), ("CE scoring", "smoke cross-encoder (2x64)")]:
        check, what, n, project, peer, cpu, delta, same, note = by_check[key]
        assert re.fullmatch(r"[\d,]+ \([\d,]+\)", n) and "/s" in project and "/s" in peer and "/s" in cpu
        # the same CPU fp32 shard function on the same texts twice: bit for bit the same
        assert delta.startswith("0.00e+00"), by_check[key]
    for data in ("Gaussian", "quantised"):
        row = by_check[("exact search", data)]
        assert row[7] == "yes" and row[6] == "0.00e+00", row
    assert "tied neighbours" in by_check[("exact search", "quantised")][8]
    workers = by_check[("local workers", "CPU stage")]
    assert "2 local workers on CPU" in workers[3]
    assert "the pinned worker sees CUDA_VISIBLE_DEVICES=0: 0 GPU(s)" in workers[8], workers
    table = "\n".join(ln for ln in proc.stdout.splitlines() if ln.startswith("|"))
    assert (out / "gpu_check.md").read_text(encoding="utf-8").strip() == table


def test_without_cuda_it_refuses_and_says_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = run_check()
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--device cpu" in proc.stderr
    assert "| check |" not in proc.stdout


def test_missing_module_is_named_not_installed(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "isal.py").write_text('raise ModuleNotFoundError("No module named \'isal\'", name="isal")\n')
    proc = run_check("--device", "cpu", env={"PYTHONPATH": str(shadow)})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "isal: tasks/io.py" in proc.stderr
    assert "carry=['.whl']" in proc.stderr and "--prepare" in proc.stderr
