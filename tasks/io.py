"""Atomic, deterministic file I/O shared by every stage.

Every artifact is written to a temporary sibling and renamed into place, so a killed
stage never leaves a half-written file under its final name. Gzip output uses
``mtime=0`` and no embedded file name, so the same content gives the same bytes.

Leftovers. A temporary sibling is named ``.<name>.<pid>.tmp`` (a file),
``.<name>.<pid>.staging`` (a directory) or ``.<name>.<pid>.scratch`` (spill space, see
:func:`scratch_dir`) and its writer holds an exclusive ``flock`` on it
until it is renamed into place or removed. A process killed with ``kill -9`` cannot remove
its temporaries, so the next :func:`atomic_path` / :func:`atomic_dir` call for the same final
name removes every sibling whose writer is gone (:func:`remove_leftovers`): the lock is free
AND the pid in its name is not running, or is running but started after the temporary was
last modified (the pid was reused). A temporary whose lock is held, or whose pid belongs to a
live process that may have written it (an older writer that took no lock), is never touched.

Errors. An ``OSError`` from a write, ``fsync`` or ``close`` carries no file name in Python;
the atomic writers attach the final name to it (disk full, file too large, read-only, ...),
so :func:`describe_os_error` can say which file failed and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import io
import json
import logging
import os
import pwd
import re
import shutil
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from isal import igzip, isal_zlib

log = logging.getLogger(__name__)

CHUNK = 1 << 20
LEFTOVER_KINDS = ("tmp", "staging", "scratch")  # suffixes of temporary siblings (module docstring)
START_SLACK_S = 2.0  # process start times are known to ~1 s (boot time in whole seconds)


class DataError(ValueError):
    """Bad input data; the message names the file and the line, key or column."""


class EnvironmentMismatch(RuntimeError):
    """The process or machine cannot run the stage as its params ask (e.g. torch's CPU kernels
    chosen before ``cpu_kernels`` could pin them); the message says how to start it instead.
    The stage CLIs report it in one line and exit 3 (:mod:`tasks.cli`)."""


def _tmp_sibling(final: Path, suffix: str = ".tmp") -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}{suffix}")


# --------------------------------------------------------------------------- leftovers
def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _process_start(pid: int) -> float | None:
    """Wall-clock start time of ``pid`` from ``/proc`` (Linux), or None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])  # field 22 of stat(5), counted after "pid (comm)"
        lines = Path("/proc/stat").read_text().splitlines()
        btime = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False when another holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _remove_if_abandoned(path: Path, pid: int) -> bool:
    """Remove the temporary ``path`` (named with writer ``pid``) if its writer is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False  # removed meanwhile
    except OSError as exc:
        log.warning("%s: cannot check whether it is a leftover (%s); left in place", path, exc)
        return False
    try:
        if not _try_lock(fd):
            return False  # its writer is alive and holds it
        st = os.fstat(fd)
        if _pid_running(pid):
            started = _process_start(pid)
            if started is None or started <= st.st_mtime + START_SLACK_S:
                log.debug("%s: pid %d is running and may be writing it; left in place", path, pid)
                return False
        try:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:  # someone else's leftover must not fail this write
            log.warning("%s: a leftover of a killed writer, but it cannot be removed (%s)", path, exc)
            return False
        return True
    finally:
        os.close(fd)


def remove_leftovers(final: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``final`` left by dead writers; returns what it removed.

    Called by :func:`atomic_path` and :func:`atomic_dir` before they write, so the next run of
    a stage cleans up after a killed one. See the module docstring for when a sibling counts
    as abandoned; a live writer's temporary is never removed.
    """
    final = Path(final)
    prefix = f".{final.name}."
    try:
        names = [n for n in os.listdir(final.parent) if n.startswith(prefix)]
    except FileNotFoundError:
        return []
    removed: list[Path] = []
    for name in sorted(names):
        pid, _, kind = name[len(prefix) :].partition(".")
        if kind in LEFTOVER_KINDS and pid.isdigit():
            path = final.with_name(name)
            if _remove_if_abandoned(path, int(pid)):
                removed.append(path)
    if removed:
        log.info(
            "removed %d leftover(s) of killed writers of %s: %s",
            len(removed), final, ", ".join(p.name for p in removed),
        )  # fmt: skip
    return removed


def _recover_old(final: Path, old: Path) -> None:
    """Settle an interrupted directory swap (see :func:`atomic_dir`)."""
    try:
        fd = os.open(old, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        if not _try_lock(fd):
            return  # a live writer is in the middle of its swap
        if final.exists():
            log.info("%s: removing %s, the previous copy of an interrupted swap", final, old.name)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(old, final)
            log.warning("%s: restored the previous version from %s (a swap was interrupted)", final, old.name)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- OS errors
# errnos that, raised with no file name inside a writer, concern the file being written
_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def _name_the_file(exc: OSError, final: Path, temp: Path) -> None:
    """Point ``exc`` at ``final`` (or the file under it) when it names no file or a temporary.

    Users know the final name, not ``.<name>.<pid>.tmp``; a file inside a staging directory
    is named as it will be in place (``final/<relative path>``).
    """
    if exc.filename is None:
        if exc.errno in _WRITE_ERRNOS:
            exc.filename = str(final)
        return
    name = os.fsdecode(exc.filename)
    if name == str(temp):
        exc.filename = str(final)
    elif name.startswith(f"{temp}{os.sep}"):
        exc.filename = str(final / name[len(str(temp)) + 1 :])


_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _native_os_error(exc: Exception, final: Path) -> OSError | None:
    """The ``OSError`` behind a Rust library's error, named after ``final``, or None.

    Rust bindings such as tantivy's report a full disk as ``ValueError("An IO error occurred:
    'No space left on device (os error 28)'")``: bad input (exit 1) to anyone who catches it,
    and no file named. Written inside an atomic writer, it concerns the output being written.
    """
    if isinstance(exc, DataError):
        return None
    match = _NATIVE_OS_ERROR.search(str(exc))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code), str(final))


def _named_io_error(exc: Exception, final: Path, temp: Path) -> Exception:
    """What an atomic writer raises for ``exc``: an OSError pointed at ``final``, a native
    library's I/O ``ValueError`` turned into that OSError, anything else ``exc`` itself."""
    if isinstance(exc, OSError):
        _name_the_file(exc, final, temp)
        return exc
    return _native_os_error(exc, final) or exc


_ADVICE = {
    errno.ENOSPC: "free space on the disk holding {dir} (df -h {dir}) or point paths in params.yaml "
    "at a bigger one",
    errno.EDQUOT: "free space under your quota on the disk holding {dir} (quota -s) or ask for a bigger one",
    errno.EFBIG: "the file outgrew the file-size limit (ulimit -f) or what the file system holding {dir} "
    "allows: raise the limit or point paths in params.yaml at another file system",
    errno.EROFS: "remount the file system holding {dir} read-write or point paths in params.yaml "
    "at a writable directory",
    errno.EACCES: "give this user ({user}) access to {dir} (ls -ld {dir}) or run as its owner",
    errno.EPERM: "check the attributes (lsattr -d {dir}) and permissions (ls -ld {dir}) of {dir}",
    errno.EIO: "check the device holding {dir} (dmesg) before trusting it again",
    errno.EMFILE: "raise the open-files limit (ulimit -n)",
    errno.ENFILE: "close files elsewhere on this machine or raise fs.file-max",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an ``OSError``: the file, what failed, and what to do."""
    code = exc.errno
    what = exc.strerror or str(exc)
    name = f"{exc.filename}" if exc.filename is not None else "(no file named)"
    if exc.filename2 is not None:
        name += f" -> {exc.filename2}"
    where = Path(os.fsdecode(exc.filename)) if exc.filename is not None else Path.cwd()
    folder = where if where.is_dir() else where.parent
    symbol = errno.errorcode.get(code, "") if code is not None else ""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    advice = _ADVICE.get(code, "fix the cause") if code is not None else "fix the cause"
    advice = advice.format(dir=folder, user=user)
    return (
        f"{name}: {what}" + (f" ({symbol})" if symbol else "") + f"; {advice}, then rerun "
        "(writes are atomic: nothing was half-written, the previous output is unchanged)"
    )


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
    tmp = _tmp_sibling(final)
    lock = -1
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(final)
        # created (empty) and locked before the caller writes it: the lock marks it as alive
        lock = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except (OSError, ValueError) as exc:
        named = _named_io_error(exc, final, tmp)
        if named is exc:
            raise
        raise named from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s: could not remove the temporary file (%s)", tmp, exc)
        if lock >= 0:
            os.close(lock)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``final`` as a whole.

    A directory cannot be swapped with one ``rename`` when the target exists, so the old
    one is first moved aside, then the new one is renamed in, then the old one is removed.
    A crash between the two renames leaves the old copy under ``.<name>.old`` and no
    directory under the final name, which readers treat as "not done". The next call for the
    same name first puts that copy back (so if this run fails too, the previous version is
    in place, as after any other failed run), or removes it when the final directory exists
    (the crash came after the second rename). The writer holds a lock on the old copy during
    the swap, so a live swap is never undone. Staging directories of dead writers are removed
    (:func:`remove_leftovers`).
    """
    final = Path(final)
    stage = _tmp_sibling(final, ".staging")
    old = final.with_name(f".{final.name}.old")
    locks: list[int] = []
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(final)
        _recover_old(final, old)
        if stage.exists():  # ours by name: left by an earlier process that had this pid
            shutil.rmtree(stage)
        stage.mkdir()
        locks.append(os.open(stage, os.O_RDONLY | os.O_CLOEXEC))
        fcntl.flock(locks[-1], fcntl.LOCK_EX)
        yield stage
        if final.exists():
            locks.append(os.open(final, os.O_RDONLY | os.O_CLOEXEC))
            fcntl.flock(locks[-1], fcntl.LOCK_EX)  # held while it is the ".old" copy
            os.replace(final, old)
        os.replace(stage, final)
        fsync_dir(final.parent)
        if old.exists():
            shutil.rmtree(old)
    except (OSError, ValueError) as exc:
        named = _named_io_error(exc, final, stage)
        if named is exc:
            raise
        raise named from exc
    finally:
        try:
            if stage.exists():
                shutil.rmtree(stage)
        except OSError as exc:
            log.warning("%s: could not remove the staging directory (%s)", stage, exc)
        for fd in locks:
            os.close(fd)


@contextlib.contextmanager
def scratch_dir(root: str | Path, name: str) -> Iterator[Path]:
    """A private scratch directory ``root/.<name>.<pid>.scratch``, removed on exit.

    For spills that never become an output. Like a staging directory it is locked while in
    use, so the next call with the same ``root`` and ``name`` removes those of killed
    processes (:func:`remove_leftovers`), where a random ``tempfile`` name would stay forever.
    """
    root = Path(root)
    path = root / f".{name}.{os.getpid()}.scratch"
    lock = -1
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_leftovers(root / name)
        if path.exists():  # ours by name: left by an earlier process that had this pid
            shutil.rmtree(path)
        path.mkdir()
        lock = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path
    finally:
        try:
            if path.exists():
                shutil.rmtree(path)
        except OSError as exc:
            log.warning("%s: could not remove the scratch directory (%s)", path, exc)
        if lock >= 0:
            os.close(lock)


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
        except OSError as exc:  # a read error (EIO...) names no file in Python: name it
            if exc.filename is None:
                exc.filename = str(path)
            raise


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


WORK_LOG_ENV = "HARDNEGS_WORK_LOG"


def record_work(stage: str, unit: str, done: int, total: int, **extra: Any) -> None:
    """Append how much of a stage's work was done this run (``done`` of ``total`` ``unit``s).

    Only when ``$HARDNEGS_WORK_LOG`` names a file: one JSON line per call, outside every DVC
    output (whose bytes never depend on what was reused). ``benchmarks/refresh_bench.py`` reads
    it to put the share of work redone beside the share of the data changed.
    """
    path = os.environ.get(WORK_LOG_ENV)
    log.info(
        "work %s: %d of %d %s%s", stage, done, total, unit, "".join(f", {k}={v}" for k, v in extra.items())
    )
    if not path:
        return
    line = json.dumps(
        {"stage": stage, "unit": unit, "done": int(done), "total": int(total), **extra}, sort_keys=True
    )
    with open(path, "a", encoding="utf-8") as fh:  # O_APPEND: whole lines from concurrent stages
        fh.write(line + "\n")
