"""The content-addressed row store (:mod:`tasks.rowstore`): lookups, reopen, cleanup, and two processes.

Cleanup after a killed writer must never remove a live writer's pack: the concurrency tests use
real processes and the real ``flock`` on ``<root>/.lock``, both as a writer paused inside
:meth:`RowStore.put` (between its renames and its JSON) and as a lock held directly.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks.io import DataError, read_json, write_json
from tasks.rowstore import DIGEST, LOCK_NAME, RowStore, digest, digests

ROOT = Path(__file__).resolve().parents[1]

# A writer paused inside put(): both .npy files renamed into place, its JSON not yet written.
PAUSED_PUT = """
import sys, time
import numpy as np
import tasks.rowstore as rs
def paused_write_json(path, obj):
    print("renamed", flush=True)
    time.sleep(600)
rs.write_json = paused_write_json
store = rs.RowStore(sys.argv[1], 2, np.float32)
store.put(rs.digests([("x",), ("y",)]), np.ones((2, 2), dtype=np.float32))
"""

# Opens the store in another process; prints what it holds.
OPEN = """
import sys
import numpy as np
from tasks.rowstore import RowStore
print(len(RowStore(sys.argv[1], 2, np.float32)))
"""

PUT = """
import sys
import numpy as np
from tasks.rowstore import RowStore, digests
RowStore(sys.argv[1], 2, np.float32).put(digests([("late",)]), np.zeros((1, 2), dtype=np.float32))
print("done", flush=True)
"""


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, **kw
    )


def _keys(*names: str) -> np.ndarray:
    return digests([(n,) for n in names])


def _rows(n: int, width: int = 3) -> np.ndarray:
    return np.arange(n * width, dtype=np.float32).reshape(n, width)


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != LOCK_NAME)


@pytest.fixture
def paused_writer(tmp_path: Path) -> Iterator[subprocess.Popen]:
    proc = _python(PAUSED_PUT, str(tmp_path / "store"))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "renamed"
        yield proc
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- basics
def test_digest_is_length_prefixed() -> None:
    assert digest("ab", "c") != digest("a", "bc")
    assert len(digest("x")) == 16 and digests([("x",)])[0] == digest("x")


def test_put_find_get_missing(tmp_path: Path) -> None:
    store = RowStore(tmp_path / "s", None, np.float32)
    assert len(store) == 0 and store.missing(_keys("a")).all() and not (tmp_path / "s").exists()
    store.put(_keys("a", "b", "c"), _rows(3))
    store.put(_keys("d"), _rows(1) + 100)
    assert len(store) == 4 and store.width == 3
    query = _keys("d", "zz", "a")
    assert store.missing(query).tolist() == [False, True, False]
    assert (store.find(query) >= 0).tolist() == [True, False, True]
    got = store.get(_keys("c", "d", "a"))
    np.testing.assert_array_equal(got, np.stack([_rows(3)[2], _rows(1)[0] + 100, _rows(3)[0]]))
    with pytest.raises(KeyError, match="1 key"):
        store.get(_keys("a", "zz"))


def test_put_rejects_bad_shapes(tmp_path: Path) -> None:
    store = RowStore(tmp_path / "s", 3, np.float32)
    with pytest.raises(ValueError, match="2 keys for rows of shape"):
        store.put(_keys("a", "b"), _rows(3))
    with pytest.raises(ValueError, match="rows are 4 wide, the store 3"):
        store.put(_keys("a"), _rows(1, width=4))
    with pytest.raises(ValueError, match="0 keys"):
        store.put(np.zeros(0, dtype=DIGEST), np.zeros((0, 3), dtype=np.float32))


def test_reopen_reads_every_pack_and_first_pack_wins(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = RowStore(root, 3, np.float32)
    first = store.put(_keys("a", "b"), _rows(2))
    second = store.put(_keys("b", "c"), _rows(2) + 10)
    again = RowStore(root, None, np.float32)
    assert len(again) == 3 and again.width == 3
    # "b" is in both packs: the pack first in name order wins, whatever the write order
    winner = _rows(2)[1] if first.name < second.name else _rows(2)[0] + 10
    np.testing.assert_array_equal(again.get(_keys("b"))[0], winner)
    np.testing.assert_array_equal(again.get(_keys("a", "c")), np.stack([_rows(2)[0], _rows(2)[1] + 10]))
    assert _files(root) == sorted(
        f"{s.name}{x}" for s in (first, second) for x in (".json", ".keys.npy", ".rows.npy")
    )


def test_damaged_pack_removed_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "s"
    store = RowStore(root, 3, np.float32)
    good = store.put(_keys("a"), _rows(1))
    bad = store.put(_keys("b"), _rows(1))
    Path(f"{bad}.rows.npy").write_bytes(b"flipped bits")
    with caplog.at_level(logging.WARNING, logger="tasks.rowstore"):
        again = RowStore(root, 3, np.float32)
    assert f"pack {bad.name} is damaged" in caplog.text
    assert len(again) == 1 and again.missing(_keys("b")).all()
    assert _files(root) == [f"{good.name}{x}" for x in (".json", ".keys.npy", ".rows.npy")]


def test_pack_of_another_dtype_or_width_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "s"
    RowStore(root, 3, np.float32).put(_keys("a"), _rows(1))
    assert len(RowStore(root, 4, np.float32)) == 0 and _files(root) == []


def test_orphans_of_a_killed_writer_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "s"
    kept = RowStore(root, 3, np.float32).put(_keys("a"), _rows(1))
    np.save(root / "deadbeef.rows.npy", _rows(1))  # killed between the renames and the JSON
    np.save(root / "deadbeef.keys.npy", _keys("z"))
    (root / "cafe.keys.npy").write_bytes(b"half")
    with caplog.at_level(logging.WARNING, logger="tasks.rowstore"):
        assert len(RowStore(root, 3, np.float32)) == 1
    assert "removing deadbeef.rows.npy, left by an interrupted write" in caplog.text
    assert _files(root) == [f"{kept.name}{x}" for x in (".json", ".keys.npy", ".rows.npy")]


def test_get_after_a_pack_vanished_names_store_and_pack(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = RowStore(root, 3, np.float32)
    stem = store.put(_keys("a"), _rows(1))
    Path(f"{stem}.rows.npy").unlink()  # removed by hand while this process holds the index
    with pytest.raises(DataError, match=rf"row store {root}: pack {stem.name}\.rows\.npy was removed"):
        store.get(_keys("a"))


def test_get_of_an_unreadable_pack_is_a_data_error(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = RowStore(root, 3, np.float32)
    stem = store.put(_keys("a"), _rows(1))
    Path(f"{stem}.rows.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=rf"pack {stem.name}\.rows\.npy cannot be read"):
        store.get(_keys("a"))


# --------------------------------------------------------------------------- two processes
def test_open_spares_a_paused_writers_pack_then_cleans_after_its_kill(
    tmp_path: Path, paused_writer: subprocess.Popen
) -> None:
    root = tmp_path / "store"
    stem = next(root.glob("*.rows.npy")).name[: -len(".rows.npy")]
    in_flight = [f"{stem}.keys.npy", f"{stem}.rows.npy"]
    assert _files(root) == in_flight  # renamed into place, no JSON: looks like a leftover
    assert len(RowStore(root, 2, np.float32)) == 0  # this (other) process opens the store
    assert _files(root) == in_flight  # ... and leaves the live writer's files alone
    paused_writer.send_signal(signal.SIGKILL)
    paused_writer.wait()
    assert len(RowStore(root, 2, np.float32)) == 0  # the kill dropped the lock: now they are orphans
    assert _files(root) == []


def test_a_held_shared_lock_keeps_orphans_in_another_process(tmp_path: Path) -> None:
    root = tmp_path / "store"
    RowStore(root, 2, np.float32).put(_keys("a"), np.ones((1, 2), dtype=np.float32))
    np.save(root / "feed.rows.npy", np.ones((1, 2), dtype=np.float32))
    np.save(root / "feed.keys.npy", _keys("b"))
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # as put() holds it
        proc = _python(OPEN, str(root))
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == "1"
        assert {"feed.rows.npy", "feed.keys.npy"} <= set(_files(root))
    finally:
        os.close(fd)
    proc = _python(OPEN, str(root))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "1"
    assert not any(n.startswith("feed.") for n in _files(root))


def test_put_waits_while_another_process_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as an open removing orphans holds it
        proc = _python(PUT, str(root))
        time.sleep(1.0)
        assert proc.poll() is None and not list(root.glob("*.json"))
    finally:
        os.close(fd)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "done"
    assert len(RowStore(root, 2, np.float32)) == 1


def test_damaged_pack_left_alone_while_a_write_is_in_flight(tmp_path: Path) -> None:
    root = tmp_path / "store"
    stem = RowStore(root, 2, np.float32).put(_keys("a"), np.ones((1, 2), dtype=np.float32))
    meta = read_json(Path(f"{stem}.json"))
    write_json(Path(f"{stem}.json"), {**meta, "rows_sha256": "0" * 64})  # e.g. a rewrite mid-way
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        proc = _python(OPEN, str(root))
        out, _ = proc.communicate(timeout=60)
        assert out.strip() == "0" and Path(f"{stem}.rows.npy").exists()  # not indexed, not removed
    finally:
        os.close(fd)
    assert len(RowStore(root, 2, np.float32)) == 0 and _files(root) == []
