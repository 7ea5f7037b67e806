"""Atomic, deterministic file I/O shared by every stage.

Every artifact is written to a temporary sibling and renamed into place, so a killed
stage never leaves a half-written file under its final name. Gzip output uses
``mtime=0`` and no embedded file name, so the same content gives the same bytes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from isal import igzip, isal_zlib

CHUNK = 1 << 20


class DataError(ValueError):
    """Bad input data; the message names the file and the line, key or column."""


def _tmp_sibling(final: Path, suffix: str = ".tmp") -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}{suffix}")


def fsync_dir(path: Path) -> None:
    """Persist a rename: fsync the directory that holds the entry."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it into place on success.

    The caller writes the file at the yielded path. On an exception the temporary file is
    removed and ``final`` is left untouched (the previous version, if any, survives).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``final`` as a whole.

    A directory cannot be swapped with one ``rename`` when the target exists, so the old
    one is first moved aside, then the new one is renamed in, then the old one is removed.
    A crash between the two renames leaves the old copy under ``.<name>.old`` and no
    directory under the final name, which callers treat as "not done".
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = _tmp_sibling(final, ".staging")
    old = final.with_name(f".{final.name}.old")
    for leftover in (stage, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    stage.mkdir()
    try:
        yield stage
        if final.exists():
            os.replace(final, old)
        os.replace(stage, final)
        fsync_dir(final.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


def _gzip_writer(raw: IO[bytes], level: int = 6) -> gzip.GzipFile:
    # filename="" and mtime=0 keep the header free of names and times: stable bytes.
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=level)


@contextlib.contextmanager
def write_text_atomic(final: str | Path, gz: bool | None = None) -> Iterator[IO[str]]:
    """Open a UTF-8 text stream whose content lands at ``final`` atomically.

    ``gz`` defaults to ``final`` ending in ``.gz``; gzip output is deterministic.
    """
    final = Path(final)
    gz = final.suffix == ".gz" if gz is None else gz
    with atomic_path(final) as tmp, open(tmp, "wb", buffering=CHUNK) as raw:
        if gz:
            with _gzip_writer(raw) as zf, io.TextIOWrapper(zf, encoding="utf-8", newline="\n") as fh:
                yield fh
        else:
            with io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as fh:
                yield fh
                fh.flush()


@contextlib.contextmanager
def write_bytes_atomic(final: str | Path, gz: bool | None = None) -> Iterator[IO[bytes]]:
    """Binary twin of :func:`write_text_atomic`."""
    final = Path(final)
    gz = final.suffix == ".gz" if gz is None else gz
    with atomic_path(final) as tmp, open(tmp, "wb", buffering=CHUNK) as raw:
        if gz:
            with _gzip_writer(raw) as zf:
                yield zf  # type: ignore[misc]
        else:
            yield raw


# Readers decompress with ISA-L (python-isal): the same gzip format, about 3x faster than zlib.
_ISAL_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]  # typed as an instance
GZIP_ERRORS: tuple[type[Exception], ...] = (EOFError, gzip.BadGzipFile, zlib.error, _ISAL_ERROR)
READ_ERRORS: tuple[type[Exception], ...] = (*GZIP_ERRORS, OSError)  # reading a (gzip) input
GZIP_MAGIC = b"\x1f\x8b"


def gzip_reader(fileobj: IO[bytes]) -> IO[bytes]:
    """Decompress the gzip stream ``fileobj`` (ISA-L); errors are in :data:`GZIP_ERRORS`."""
    return igzip.IGzipFile(fileobj=fileobj, mode="rb")  # type: ignore[return-value]


def _open_gzip(path: Path) -> IO[bytes]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic and magic != GZIP_MAGIC:
        raise DataError(
            f"{path}: not a gzip file (named *.gz, but it does not start with the gzip magic bytes)"
        )
    return igzip.open(path, "rb")  # type: ignore[no-any-return]


def open_text(path: str | Path) -> IO[str]:
    """Open a UTF-8 text file for reading, transparently un-gzipping ``*.gz``.

    Invalid UTF-8 raises ``UnicodeDecodeError``; callers that parse line by line turn it
    into a :class:`DataError` naming the line (see :func:`iter_lines`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(_open_gzip(path), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def open_binary(path: str | Path) -> IO[bytes]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return _open_gzip(path)
    return open(path, "rb")


def disk_position(fh: IO[bytes]) -> int:
    """Bytes of the file on disk read so far by ``fh`` from :func:`open_binary` (the compressed
    position for ``*.gz``), for progress bars whose total is the file's size."""
    raw = getattr(fh, "fileobj", None)
    return raw.tell() if raw is not None else fh.tell()


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line_without_newline)`` with errors that name the line.

    Raises :class:`DataError` for invalid UTF-8 and for a truncated gzip stream.
    """
    path = Path(path)
    lineno = 0
    with open_binary(path) as fh:
        try:
            for raw in fh:
                lineno += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: invalid UTF-8 ({exc.reason})") from None
                yield lineno, line.rstrip("\r\n")
        except EOFError:
            raise DataError(
                f"{path}: compressed stream ends early after line {lineno} (truncated gzip); "
                "delete it and run the download stage again"
            ) from None
        except GZIP_ERRORS as exc:
            raise DataError(f"{path}: damaged gzip stream after line {lineno} ({exc})") from None


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def dumps_json(obj: Any) -> str:
    """Canonical JSON for artifacts: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    with write_text_atomic(path, gz=False) as fh:
        fh.write(dumps_json(obj))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open_text(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
