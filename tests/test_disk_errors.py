"""OS errors end with one line, exit code 3 and the previous output intact (issue 13, items 5 and 9).

Real faults on a real ``python -m tasks.merge`` process: a file-size limit (``RLIMIT_FSIZE``,
as ``ulimit -f``; the kernel sends SIGXFSZ, which the stage ignores so that ``write`` fails
with EFBIG and is reported), a full disk (a small tmpfs filled up), a read-only file system
(the tmpfs remounted read-only) and a directory the stage may not write (as root, without
CAP_DAC_OVERRIDE through ``setpriv``, since root bypasses file permissions otherwise). The
mounts need root (CAP_SYS_ADMIN); where that is missing those tests are skipped, saying why.
Each run changes the inputs first, so a successful write would change the output's bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.records import hits_table, write_hits
from tests._faults_helpers import HARD_NEGATIVES, error_line, leftovers, make_project, run_cli, snapshot

QUERIES = 2000  # ~60 KB of gzip output: larger than the limits below


def _published(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A project whose merge output is in place, then inputs that would give other bytes."""
    from tasks.merge import main

    params = make_project(tmp_path, queries=QUERIES, negatives=30)
    assert main(["--params", str(params)]) == 0
    out = tmp_path / "out" / HARD_NEGATIVES
    qids = [q for q in range(1, QUERIES + 1) for _ in range(31)]
    pids = [7000 * q + r for q in range(1, QUERIES + 1) for r in range(31)]
    write_hits(tmp_path / "negatives" / "bm25.parquet", hits_table(qids, pids, [1.0] * len(qids)))
    return params, out, snapshot(out)


def _limit_file_size(limit: int):  # type: ignore[no-untyped-def]
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_file_size_limit_is_exit_3_naming_the_file(tmp_path: Path) -> None:
    params, out, before = _published(tmp_path)
    proc = run_cli("merge", params, preexec_fn=_limit_file_size(16 << 10))
    assert proc.returncode == 3, (proc.returncode, proc.stderr)  # not killed by SIGXFSZ (-25)
    line = error_line(proc)
    assert f"{out}: File too large (EFBIG)" in line and "ulimit -f" in line and "then rerun" in line
    assert snapshot(out) == before and leftovers(out.parent) == []
    assert run_cli("merge", params).returncode == 0  # the rerun with room succeeds
    assert snapshot(out) != before


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs at ``tmp_path/out`` (the project's paths.out), unmounted afterwards."""
    mnt = tmp_path / "out"
    mnt.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    """Write a filler file until the file system is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)
    return filler


def test_full_disk_is_exit_3_and_the_output_survives(tmpfs: Path, tmp_path: Path) -> None:
    params, out, before = _published(tmp_path)
    filler = _fill(tmpfs)
    proc = run_cli("merge", params)
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert f"{out}: No space left on device (ENOSPC)" in line
    assert f"free space on the disk holding {tmpfs} (df -h {tmpfs})" in line
    assert snapshot(out) == before and leftovers(tmpfs) == []
    filler.unlink()
    assert run_cli("merge", params).returncode == 0
    assert snapshot(out) != before and leftovers(tmpfs) == []


def test_read_only_file_system_is_exit_3(tmpfs: Path, tmp_path: Path) -> None:
    params, out, before = _published(tmp_path)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        with pytest.raises(OSError) as exc:
            (tmpfs / "probe").write_text("x")
        assert exc.value.errno == errno.EROFS
        proc = run_cli("merge", params)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert f"{out}: Read-only file system (EROFS)" in line
    assert f"remount the file system holding {tmpfs} read-write" in line
    assert snapshot(out) == before and leftovers(tmpfs) == []


def test_permission_denied_is_exit_3(tmp_path: Path) -> None:
    """Root ignores permissions; without CAP_DAC_OVERRIDE (setpriv) it meets them like anyone."""
    drop: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        drop = (setpriv or "setpriv", "--bounding-set", "-dac_override,-dac_read_search")
        if setpriv is None or subprocess.run([*drop, "true"], capture_output=True).returncode:
            pytest.skip("as root, permissions apply only without CAP_DAC_OVERRIDE: setpriv cannot drop it")
    params, out, before = _published(tmp_path)
    out.parent.chmod(0o555)
    try:
        proc = run_cli("merge", params, prefix=drop)
    finally:
        out.parent.chmod(0o755)
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert f"{out}: Permission denied (EACCES)" in line and f"access to {out.parent}" in line
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_full_disk_under_a_native_writer_is_exit_3(tmpfs: Path, tmp_path: Path) -> None:
    """tantivy (Rust) reports a full disk as ``ValueError('... (os error 28)')``: the staging
    directory's writer turns it into the OSError it is, naming the index, not bad input (1)."""
    import yaml

    from tasks.bm25_index import main

    params = make_project(tmp_path)
    data = yaml.safe_load(params.read_text())
    data["paths"]["bm25_index"] = str(tmpfs / "bm25_index")
    params.write_text(yaml.safe_dump(data))
    collection = tmp_path / "raw" / data["inputs"]["collection"]
    collection.parent.mkdir(parents=True, exist_ok=True)
    collection.write_text("".join(f"{p}\tpassage {p} on topic {p % 7}\n" for p in range(1, 200)))
    assert main(["--params", str(params)]) == 0
    index = tmpfs / "bm25_index"
    before = snapshot(index)
    collection.write_text("".join(f"{p}\tother passage {p} words {p % 5}\n" for p in range(1, 400)))
    _fill(tmpfs)
    proc = run_cli("bm25_index", params)
    assert proc.returncode == 3, proc.stderr
    assert f"{index}: No space left on device (ENOSPC); free space on the disk holding" in error_line(proc)
    assert snapshot(index) == before and leftovers(tmpfs) == []
