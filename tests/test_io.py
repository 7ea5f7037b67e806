"""Atomic writes leave nothing half-written; gzip output is byte-stable; errors name lines."""

from __future__ import annotations

import gzip

import pytest

from tasks.io import (
    DataError,
    atomic_dir,
    atomic_path,
    iter_lines,
    read_json,
    write_json,
    write_text_atomic,
)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    final = tmp_path / "d"
    with atomic_dir(final) as stage:
        (stage / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(final) as stage:
            (stage / "b").write_text("2")
            raise ValueError
    assert [p.name for p in final.iterdir()] == ["a"]
    with atomic_dir(final) as stage:
        (stage / "c").write_text("3")
    assert [p.name for p in final.iterdir()] == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_gzip_output_is_deterministic(tmp_path):
    for name in ("a.txt.gz", "b.txt.gz"):
        with write_text_atomic(tmp_path / name) as fh:
            fh.write("héllo\n" * 100)
    assert (tmp_path / "a.txt.gz").read_bytes() == (tmp_path / "b.txt.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.txt.gz").read_bytes()).decode().startswith("héllo")


def test_iter_lines_names_bad_utf8_line(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"1\tok\n2\t\xff\xfe\n")
    with pytest.raises(DataError, match=r"x\.tsv:2: invalid UTF-8"):
        list(iter_lines(path))


def test_iter_lines_detects_truncated_gzip(tmp_path):
    path = tmp_path / "x.tsv.gz"
    data = gzip.compress(b"".join(b"%d\tline\n" % i for i in range(5000)), mtime=0)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated gzip"):
        list(iter_lines(path))


def test_iter_lines_names_a_damaged_or_false_gzip(tmp_path):
    lines = b"".join(b"%d\tline %d\n" % (i, i * i) for i in range(50000))
    data = bytearray(gzip.compress(lines, mtime=0))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeros in the middle of the deflate stream
    path = tmp_path / "x.tsv.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"x\.tsv\.gz: damaged gzip stream after line \d+"):
        list(iter_lines(path))
    path.write_bytes(lines)  # plain text under a .gz name
    with pytest.raises(DataError, match=r"x\.tsv\.gz: not a gzip file"):
        list(iter_lines(path))
    path.write_bytes(gzip.compress(b"a\n", mtime=0) + gzip.compress(b"b\n", mtime=0))  # two members
    assert list(iter_lines(path)) == [(1, "a"), (2, "b")]


def test_json_roundtrip_and_error(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert read_json(tmp_path / "a.json") == {"a": [1, 2], "b": 1}
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(DataError, match=r"bad\.json:1:\d+: invalid JSON"):
        read_json(tmp_path / "bad.json")


def test_os_errors_inside_writers_name_the_final_file(tmp_path):
    """Python gives write/fsync/close errors no file name; users know the final name, not the
    temporary one: the atomic writers attach it, and the temporary is gone."""
    import errno

    from tasks.io import describe_os_error

    final = tmp_path / "out.txt"
    with pytest.raises(OSError) as exc, atomic_path(final):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert exc.value.filename == str(final)
    line = describe_os_error(exc.value)
    assert line.startswith(
        f"{final}: No space left on device (ENOSPC); free space on the disk holding {tmp_path}"
    )
    with pytest.raises(OSError) as exc, atomic_dir(tmp_path / "d") as stage:
        raise PermissionError(errno.EACCES, "Permission denied", str(stage / "sub" / "x.parquet"))
    assert exc.value.filename == str(tmp_path / "d" / "sub" / "x.parquet")
    assert "Permission denied (EACCES); give this user" in describe_os_error(exc.value)
    with pytest.raises(OSError) as exc, atomic_path(final):
        raise OSError(errno.ECONNRESET, "Connection reset")  # not about the file: left unnamed
    assert exc.value.filename is None
    assert list(tmp_path.iterdir()) == []
