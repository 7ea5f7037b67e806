"""flows.supervise.run_group: what the flow records per stage (peak memory, CPU) is the group's."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from flows.supervise import group_rss, run_group

MiB = 1 << 20

# A parent that starts a child holding 300 MiB and burning CPU; the parent itself stays small.
CHILD = textwrap.dedent(
    """
    import time
    block = bytearray(300 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1  # touch every page: resident, not only reserved
    x = 0
    for i in range(4_000_000):
        x += i
    time.sleep(1.5)
    """
)
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {CHILD!r}], check=True)"


def test_peak_rss_and_cpu_cover_the_processes_the_command_starts(tmp_path: Path):
    lines: list[str] = []
    result = run_group(
        [sys.executable, "-c", PARENT], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, on_line=lines.append
    )
    assert result.returncode == 0
    # the child's 300 MiB is seen although the command itself (the parent) holds ~10 MiB
    assert 300 * MiB <= result.peak_rss < 2048 * MiB
    # the child's loop ran in a grandchild of run_group (guard -> parent -> child): counted
    assert result.cpu_s > 0.1


def test_a_failing_command_still_reports_its_exit_code(tmp_path: Path):
    result = run_group([sys.executable, "-c", "import sys; sys.exit(3)"], cwd=tmp_path, env={}, on_line=print)
    assert result.returncode == 3


def test_group_rss_of_no_group_is_zero():
    assert group_rss(2**22 + 12345) == 0  # no process group has that id
