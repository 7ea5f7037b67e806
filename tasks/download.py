"""Download stage: fetch one source of ``sources``, verify it, unpack it into ``paths.raw/<name>/``.

The archive cache is keyed so that no two sources, profiles or versions ever share a path:
``paths.downloads/md5-<md5>/<file name of the URL>`` for a source whose md5 is pinned, and
``paths.downloads/url-<sha256 of the URL, 16 hex>/<file name>`` for one with ``md5: null``.
The sample and the msmarco profile both name a ``collectionandqueries.tar.gz``; each lives in
the directory of its own md5, so switching profiles back and forth finds each archive where it
left it (re-verified, never downloaded twice) and never takes one profile's file for a corrupt
copy of the other's. An archive is streamed to ``<archive>.part`` in its key directory while
its md5 and size are computed, and renamed to its final name only once both match the
registry; an archive already in the cache is re-verified, never trusted because it exists. A
file that fails verification is moved aside to ``<archive>.corrupt`` (in its key directory, so
it really is a bad copy of that md5). Next to each archive ``<archive>.source.json`` keeps what
it was fetched from (URL, ETag, Last-Modified): a cache hit reports the upstream validators of
the bytes it holds, and the refresh (``tasks.sources_check``) can tell whether the file a server
serves now is the one in the cache.

Cache of the old layout (``paths.downloads/<file name>``, before the keys): an archive there whose
size and md5 match the source is moved into its key directory instead of being downloaded again;
one that does not match is left alone (it may be another profile's), never moved aside.

HTTP(S) downloads resume an interrupted ``.part`` with ``Range: bytes=N-`` when the server
answers 206 with a matching ``Content-Range`` (``X-Ms-Version: 2019-12-12`` is sent because the
MS MARCO Azure host honours ranges only with it), and restart from zero when it answers 200;
a retry within one run sends ``If-Range`` with the first response's ETag (or Last-Modified), so
a file replaced upstream mid-download restarts instead of splicing two versions. Connection
errors, drops, stalls (no byte for ``download.stall_timeout_s``), short bodies, 5xx and 429 are
retried with exponential backoff and jitter; 404 and other 4xx fail at once. ``file:`` URLs
(``file:sample/x.tar.gz`` relative to the project root, ``file:///abs/x``) take the same path
through verification, unpacking and the atomic rename: the sample profile uses it.

:func:`fetch_fresh` (used by ``python -m tasks.sources_check accept`` and the refresh's
``repin`` policy) fetches what upstream serves now, whatever the registry pins, and files it
under the key of the md5 it turns out to have: the bytes a re-pinned registry entry names.

Unpacking (``sources.<name>.unpack``): ``none`` hard-links (or copies) the file, ``gunzip``
stream-decompresses ``x.gz`` to ``x``, ``untar`` stream-extracts a tar(.gz), refusing members
with absolute paths, ``..``, links that leave the directory and device files. The result is
staged and renamed as a whole (:func:`tasks.io.atomic_dir`), with ``.source.json`` recording
what was fetched: name, url, file, size, md5, md5_from (``params`` or ``computed``), unpack,
and for HTTP the ``etag`` and ``last_modified`` of the response (no fetch time and no cache
path, so the record is byte-stable for the same upstream file).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import posixpath
import random
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx
from tqdm import tqdm

from tasks.config import ROOT, ConfigError, Download, Source, load_config
from tasks.io import CHUNK, GZIP_ERRORS, DataError, atomic_dir, fsync_dir, gzip_reader, read_json, write_json

log = logging.getLogger(__name__)

MS_VERSION = "2019-12-12"
USER_AGENT = "hardnegs-download/1"
RECORD = ".source.json"


class DownloadError(RuntimeError):
    """A source could not be fetched or failed verification; the message says what to do."""


class _Transient(Exception):
    """A failure worth retrying (the ``.part`` file is kept, so the retry may resume)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Job:
    name: str
    source: Source
    archive: Path
    params: Download
    root: Path
    fresh: bool = False  # fetch_fresh: no pin to verify against (the md5 is what we learn)
    #: validators (ETag / Last-Modified) of the first response, for If-Range on a retry
    seen: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def part(self) -> Path:
        return self.archive.with_name(self.archive.name + ".part")

    @property
    def corrupt(self) -> Path:
        return self.archive.with_name(self.archive.name + ".corrupt")

    @property
    def sidecar(self) -> Path:
        """What the cached archive was fetched from (keeps ETag etc. for cache hits)."""
        return sidecar_of(self.archive)

    @property
    def is_http(self) -> bool:
        return self.source.url.startswith(("http://", "https://"))


# --------------------------------------------------------------------------- names
def archive_name(url: str) -> str:
    """File name the archive of ``url`` is cached under: the last segment of the URL path."""
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    if not name or name in (".", ".."):
        raise ConfigError(f"{url}: the URL path has no file name to cache the download under")
    return name


def cache_key(source: Source) -> str:
    """Directory of ``source`` in the archive cache: ``md5-<md5>``, or ``url-<hash>`` without a pin.

    Keyed by content where the content is known, so two profiles (or two versions of one
    file name) never meet at one path, and the same bytes are stored once whichever source
    or profile names them. A source with ``md5: null`` has no known content: its URL is the key.
    """
    if source.md5 is not None:
        return f"md5-{source.md5}"
    return "url-" + hashlib.sha256(source.url.encode()).hexdigest()[:16]


def archive_path(downloads_dir: Path, source: Source) -> Path:
    """Where the download stage keeps (and looks for) the archive of ``source``."""
    return downloads_dir / cache_key(source) / archive_name(source.url)


def sidecar_of(archive: Path) -> Path:
    return archive.with_name(archive.name + RECORD)


def cached_record(downloads_dir: Path, source: Source) -> dict[str, Any] | None:
    """The fetch record kept next to the cached archive of ``source`` (not re-verified), or None.

    Only a record of the same URL counts: its ETag / Last-Modified describe that URL's bytes.
    """
    archive = archive_path(downloads_dir, source)
    side = sidecar_of(archive)
    if not (archive.exists() and side.exists()):
        return None
    rec = read_json(side)
    if not isinstance(rec, dict) or rec.get("url") != source.url:
        return None
    if rec.get("size") != archive.stat().st_size:
        return None
    return rec


def file_url_path(url: str, root: Path) -> Path:
    """Local path of a ``file:`` URL; relative paths (``file:sample/x``) resolve against ``root``."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ValueError(f"{url}: not a file: URL")
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{url}: file: URLs must name a local path (file:rel/path or file:///abs/path)")
    path = Path(url2pathname(parts.path))
    return path if path.is_absolute() else root / path


def _output_name(archive: str, unpack: str) -> str:
    if unpack == "gunzip":
        if not archive.endswith(".gz"):
            raise ConfigError(f"{archive}: unpack 'gunzip' needs a file ending in .gz")
        return archive[: -len(".gz")]
    if unpack == "untar" and not archive.endswith((".tar.gz", ".tgz", ".tar")):
        raise ConfigError(f"{archive}: unpack 'untar' needs a .tar.gz, .tgz or .tar file")
    return archive


# --------------------------------------------------------------------------- streaming
def _bar(desc: str, total: int | None, initial: int = 0) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        mininterval=1.0,
        leave=False,
        disable=None,  # on a terminal only; logs get one summary line per file instead
    )


def _md5_of(path: Path, desc: str) -> hashlib._Hash:
    h = hashlib.md5()
    with open(path, "rb") as fh, _bar(desc, path.stat().st_size) as bar:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
            bar.update(len(block))
    return h


def _append(chunks: Iterable[bytes], job: _Job, mode: str, h: Any, done: int, total: int | None) -> int:
    """Write ``chunks`` to the ``.part`` file (``mode`` 'ab' or 'wb'), hashing as it goes."""
    with open(job.part, mode) as fh, _bar(job.archive.name, total, done) as bar:
        for chunk in chunks:
            if total is not None and done + len(chunk) > total:
                fh.close()
                os.replace(job.part, job.corrupt)
                raise DownloadError(
                    f"{job.source.url}: the server sent more than the expected {total} bytes; "
                    f"kept as {job.corrupt} for inspection. Check sources.{job.name}.size/md5"
                )
            fh.write(chunk)
            h.update(chunk)
            done += len(chunk)
            bar.update(len(chunk))
        fh.flush()
        os.fsync(fh.fileno())
    return done


def _finish(job: _Job, md5: str, size: int) -> None:
    """Verify the complete ``.part`` file and rename it to the archive's final name."""
    src = job.source
    if src.size is not None and size != src.size:
        problem = f"size mismatch: expected {src.size} bytes, got {size}"
    elif src.md5 is not None and md5 != src.md5:
        problem = f"md5 mismatch: expected {src.md5}, got {md5} ({size} bytes)"
    else:
        problem = ""
    if problem:
        os.replace(job.part, job.corrupt)
        raise DownloadError(
            f"{job.source.url}: {problem}; the bad file is kept as {job.corrupt} for inspection. "
            f"Rerun to download again, or fix sources.{job.name} if the upstream file changed"
        )
    if src.md5 is None and not job.fresh:
        log.warning("%s: sources.%s.md5 is null; recording the computed md5 %s", job.archive, job.name, md5)
    os.replace(job.part, job.archive)
    fsync_dir(job.archive.parent)


def _record(job: _Job, md5: str, size: int, etag: str | None = None, modified: str | None = None) -> dict:
    rec: dict[str, Any] = {
        "name": job.name,
        "url": job.source.url,
        "file": job.archive.name,
        "size": size,
        "md5": md5,
        "md5_from": "params" if job.source.md5 is not None else "computed",
        "unpack": job.source.unpack,
    }
    if job.is_http:
        rec.update(etag=etag, last_modified=modified)
    return rec


# --------------------------------------------------------------------------- fetching
def _fetch_file(job: _Job) -> dict:
    path = file_url_path(job.source.url, job.root)
    if not path.is_file():
        raise DownloadError(f"{job.source.url}: no such file {path}")
    h = hashlib.md5()
    with open(path, "rb") as fh:
        chunks = iter(lambda: fh.read(job.params.chunk_bytes), b"")
        size = _append(chunks, job, "wb", h, 0, path.stat().st_size)
    _finish(job, h.hexdigest(), size)
    return _record(job, h.hexdigest(), size)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a Content-Range header: ``bytes 5-9/10`` or ``bytes */10``."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return (int(m.group(1)) if m.group(1) else None), (int(m.group(2)) if m.group(2) != "*" else None)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _http_attempt(client: httpx.Client, job: _Job) -> dict:
    src, url = job.source, job.source.url
    offset = job.part.stat().st_size if job.part.exists() else 0
    if src.size is not None and offset > src.size:
        log.warning("%s: %d bytes, more than the expected %d; starting over", job.part, offset, src.size)
        job.part.unlink()
        offset = 0
    if offset and offset == src.size:  # killed after the last byte, before the rename
        h = _md5_of(job.part, f"verify {job.part.name}")
        head = client.head(url)  # only for the ETag / Last-Modified of the record
        _finish(job, h.hexdigest(), offset)
        meta = head.headers if head.is_success else httpx.Headers()
        etag, modified = meta.get("etag"), meta.get("last-modified")
        return _record(job, h.hexdigest(), offset, etag, modified)

    headers = {"Range": f"bytes={offset}-"} if offset else {}
    if offset and job.seen.get("validator"):
        headers["If-Range"] = job.seen["validator"]  # changed upstream since? then 200, from zero
    with client.stream("GET", url, headers=headers) as resp:
        status = resp.status_code
        if status == 416 and offset:
            job.part.unlink()
            has = _content_range(resp.headers.get("content-range"))[1]
            if has is not None and src.size is not None and has < src.size:
                raise _Transient(f"short body: the server has only {has} of {src.size} bytes")
            raise _Transient(f"server refused to resume at byte {offset} (HTTP 416); restarting from zero")
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status} {resp.reason_phrase}", _retry_after(resp))
        if status not in (200, 206):
            raise DownloadError(f"{url}: HTTP {status} {resp.reason_phrase}; check sources.{job.name}.url")
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "text/html" and not job.archive.name.endswith((".html", ".htm")):
            raise DownloadError(
                f"{url}: server returned an HTML page, not {job.archive.name} (HTTP {status}, "
                f"Content-Type text/html); the URL is wrong or the host shows an error page: "
                f"check sources.{job.name}.url"
            )
        etag = resp.headers.get("etag", "")
        validator = etag if etag and not etag.startswith("W/") else resp.headers.get("last-modified")
        if status == 206 and validator and job.seen.get("validator", validator) != validator:
            job.part.unlink(missing_ok=True)  # a server that ignored If-Range: never splice versions
            job.seen.clear()
            raise _Transient("the file changed upstream during the download (new ETag); restarting from zero")
        if status == 200 or not job.seen:
            job.seen.clear()
            job.seen.update({"validator": validator} if validator else {})
        if status == 206:
            first, length = _content_range(resp.headers.get("content-range"))
            if first != offset or (src.size and length not in (None, src.size)):
                job.part.unlink(missing_ok=True)
                raise _Transient(
                    f"server answered bytes={offset}- with Content-Range "
                    f"{resp.headers.get('content-range')!r}; restarting from zero"
                )
            log.info("%s: resuming at byte %d", job.archive.name, offset)
            h, mode = _md5_of(job.part, f"rehash {job.part.name}"), "ab"
        else:
            if offset:
                log.info("%s: server ignored the Range request; restarting from zero", job.archive.name)
            offset, h, mode = 0, hashlib.md5(), "wb"
        clen = resp.headers.get("content-length", "")
        total = src.size if src.size is not None else (offset + int(clen) if clen.isdigit() else None)
        try:
            size = _append(resp.iter_raw(), job, mode, h, offset, total)
        except httpx.TimeoutException:
            raise _Transient(f"no data for {job.params.stall_timeout_s:g} s (stalled)") from None
        except httpx.TransportError as exc:
            raise _Transient(f"connection lost ({exc})") from None
        if total is not None and size < total:
            raise _Transient(f"short body: got {size} of {total} bytes")
    _finish(job, h.hexdigest(), size)
    return _record(job, h.hexdigest(), size, resp.headers.get("etag"), resp.headers.get("last-modified"))


def _backoff(params: Download, attempt: int, retry_after: float | None, rng: random.Random) -> float:
    delay = min(params.backoff_max_s, params.backoff_s * 2**attempt)
    delay = delay / 2 + rng.uniform(0, delay / 2)  # "equal jitter": never zero, never in lockstep
    if retry_after is not None:
        delay = max(delay, min(retry_after, params.backoff_max_s))
    return delay


def _fetch_http(job: _Job) -> dict:
    p, rng = job.params, random.Random()
    timeout = httpx.Timeout(p.stall_timeout_s)
    headers = {"X-Ms-Version": MS_VERSION, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    attempts, last = p.retries + 1, ""
    with httpx.Client(headers=headers, timeout=timeout, follow_redirects=True) as client:
        for attempt in range(attempts):
            try:
                return _http_attempt(client, job)
            except httpx.UnsupportedProtocol as exc:
                raise DownloadError(f"{job.source.url}: {exc}") from None
            except httpx.TransportError as exc:
                err = _Transient(f"connection error ({type(exc).__name__}: {exc})")
            except _Transient as exc:
                err = exc
            last = str(err)
            if attempt + 1 < attempts:
                delay = _backoff(p, attempt, err.retry_after, rng)
                log.warning("%s: %s; retry %d/%d in %.2f s", job.name, last, attempt + 1, p.retries, delay)
                time.sleep(delay)
    kept = f"; the partial download is kept as {job.part}, rerun to resume" if job.part.exists() else ""
    raise DownloadError(f"{job.source.url}: failed after {attempts} attempt(s): {last}{kept}")


def _cached(job: _Job) -> dict | None:
    """Re-verify an archive already in the cache; its record, or None (moved aside) if it fails."""
    if not job.archive.exists():
        return None
    side = read_json(job.sidecar) if job.sidecar.exists() else {}
    if not isinstance(side, dict) or side.get("url") != job.source.url:
        side = {}  # fetched from another URL: its md5/ETag say nothing about this one
    want_md5, want_size = job.source.md5 or side.get("md5"), job.source.size or side.get("size")
    size, md5 = job.archive.stat().st_size, ""
    if want_md5 is None:
        problem = "no md5 known to verify it against"
    elif want_size is not None and size != want_size:
        problem = f"size {size}, expected {want_size}"
    else:
        md5 = _md5_of(job.archive, f"verify {job.archive.name}").hexdigest()
        problem = "" if md5 == want_md5 else f"md5 {md5}, expected {want_md5}"
    if problem:
        log.warning("%s: cached archive fails verification (%s); fetching again", job.archive, problem)
        os.replace(job.archive, job.corrupt)
        return None
    log.info("%s: cached archive verified", job.archive)
    if side.get("md5") != md5:
        side = {}
    return _record(job, md5, size, side.get("etag"), side.get("last_modified"))


@contextlib.contextmanager
def _locked(archive: Path) -> Iterator[None]:
    """One process at a time per archive (two writers appending to one .part would corrupt it)."""
    with open(archive.with_name(f".{archive.name}.lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is downloading it; waiting", archive)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _adopt_old_layout(job: _Job, downloads_dir: Path) -> None:
    """Move a matching archive of the pre-key cache layout (``downloads/<file>``) into its key dir.

    Only a file whose size and md5 match the source is moved (the md5 is computed only when
    the size matches); anything else is left where it is, since it may be another profile's.
    """
    old = downloads_dir / job.archive.name
    if job.archive.exists() or not old.is_file():
        return
    side_file = sidecar_of(old)
    side = read_json(side_file) if side_file.exists() else {}
    if not isinstance(side, dict) or side.get("url") != job.source.url:
        side = {}
    want_md5, want_size = job.source.md5 or side.get("md5"), job.source.size or side.get("size")
    size = old.stat().st_size
    if want_md5 is None or (want_size is not None and size != want_size):
        log.info("%s: old-layout cache file left in place (not this source's: %d bytes)", old, size)
        return
    md5 = _md5_of(old, f"verify {old.name}").hexdigest()
    if md5 != want_md5:
        log.info("%s: old-layout cache file left in place (md5 %s, this source is %s)", old, md5, want_md5)
        return
    os.replace(old, job.archive)
    if side:
        os.replace(side_file, job.sidecar)
    fsync_dir(job.archive.parent)
    log.info("%s: adopted from the old cache layout (%s)", job.archive, old)


def _download(job: _Job) -> dict:
    """Fetch ``job`` (HTTP or file:) into its archive path; a full disk is one clear error."""
    start = time.monotonic()
    try:
        record = _fetch_http(job) if job.is_http else _fetch_file(job)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        job.part.unlink(missing_ok=True)
        raise DownloadError(
            f"{job.part}: disk full while downloading {job.source.url} "
            f"({job.source.size or '?'} bytes needed); free space in {job.archive.parent} and rerun"
        ) from None
    secs, mb = max(time.monotonic() - start, 1e-6), record["size"] / 1e6
    log.info("%s: fetched and verified: %.1f MB, %.1f s, %.1f MB/s", job.archive, mb, secs, mb / secs)
    return record


def fetch(name: str, source: Source, downloads_dir: Path, params: Download, root: Path) -> tuple[Path, dict]:
    """Make ``archive_path(downloads_dir, source)`` a verified copy of ``source``; return it, its record."""
    job = _Job(name, source, archive_path(downloads_dir, source), params, root)
    _output_name(job.archive.name, source.unpack)  # a bad unpack setting fails before any download
    job.archive.parent.mkdir(parents=True, exist_ok=True)
    with _locked(job.archive):
        _adopt_old_layout(job, downloads_dir)
        record = _cached(job)
        if record is None:
            record = _download(job)
            write_json(job.sidecar, record)
    return job.archive, record


def fetch_fresh(
    name: str, source: Source, downloads_dir: Path, params: Download, root: Path
) -> tuple[Path, dict]:
    """Fetch what upstream serves now, whatever the registry pins; file it under its own md5.

    The bytes go to a staging path (``downloads/.fresh/url-<hash>/``), are hashed while they
    stream, and are then renamed to ``archive_path`` of ``source`` re-pinned to the md5 they
    have (a source with ``md5: null`` keeps its URL key; the fresh copy replaces the old one).
    Nothing is resumed from an earlier run: upstream may have changed since that ``.part``
    was written, and without a pin a splice of two versions could not be detected. Returns the
    archive and its record (``md5``, ``size``, and over HTTP the ``etag``/``last_modified``).
    """
    unpinned = source.model_copy(update={"md5": None, "size": None})
    stage = downloads_dir / ".fresh" / cache_key(unpinned) / archive_name(source.url)
    _output_name(stage.name, source.unpack)
    stage.parent.mkdir(parents=True, exist_ok=True)
    job = _Job(name, unpinned, stage, params, root, fresh=True)
    with _locked(stage):
        for leftover in (job.part, stage, job.corrupt):
            leftover.unlink(missing_ok=True)
        record = _download(job)
        pinned = source.model_copy(
            update={"md5": record["md5"] if source.md5 is not None else None, "size": record["size"]}
        )
        target = archive_path(downloads_dir, pinned)
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target):
            os.replace(stage, target)
            write_json(sidecar_of(target), record)
            fsync_dir(target.parent)
    log.info("%s: fresh copy of %s: md5 %s, %d bytes", target, source.url, record["md5"], record["size"])
    return target, record


# --------------------------------------------------------------------------- unpacking
class _Counting:
    """File-object wrapper that advances a progress bar by the compressed bytes read."""

    def __init__(self, fh: IO[bytes], bar: tqdm) -> None:
        self._fh, self._bar = fh, bar

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._bar.update(len(data))
        return data

    def readinto(self, buf: Any) -> int:  # what the ISA-L gzip reader calls
        n = self._fh.readinto(buf)  # type: ignore[attr-defined]
        self._bar.update(n)
        return int(n)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        problem = "an absolute path"
    elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
        problem = "a '..' path component"
    elif member.isdev():
        problem = "a device file or FIFO"
    elif member.issym() or member.islnk():
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        escapes = member.linkname.startswith("/") or target.startswith("..")
        problem = "a link leaving the directory" if escapes else ""
    else:
        problem = ""
    if problem:
        raise DataError(f"{archive}: refusing member {name!r}: {problem} (unsafe archive; not extracted)")


UNPACK_ERRORS: tuple[type[Exception], ...] = (*GZIP_ERRORS, tarfile.TarError)


def _untar(archive: Path, dest: Path, fh: IO[bytes]) -> None:
    stream = gzip_reader(fh) if archive.name.endswith((".gz", ".tgz")) else fh
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            _check_member(member, archive)
            try:
                tar.extract(member, dest, filter="data")  # second line of defence, same rules
            except tarfile.FilterError as exc:
                raise DataError(f"{archive}: refusing member {member.name!r}: {exc} (unsafe)") from None
    while stream.read(CHUNK):  # drain: gzip checks its CRC and length only at the very end
        pass


def _gunzip(archive: Path, out: Path, fh: IO[bytes]) -> None:
    with gzip_reader(fh) as zf, open(out, "wb") as dst:
        shutil.copyfileobj(zf, dst, CHUNK)


def _place(archive: Path, out: Path) -> None:
    try:
        os.link(archive, out)  # no second copy of a 1 GB file; the cache copy is re-verified anyway
    except OSError:
        shutil.copyfile(archive, out)


def unpack(archive: Path, dest: Path, how: str) -> None:
    """Unpack ``archive`` into the directory ``dest`` (``none`` | ``gunzip`` | ``untar``)."""
    out = dest / _output_name(archive.name, how)
    if how == "none":
        _place(archive, out)
        return
    try:
        with open(archive, "rb") as raw, _bar(f"unpack {archive.name}", archive.stat().st_size) as bar:
            counted: Any = _Counting(raw, bar)
            if how == "untar":
                _untar(archive, dest, counted)
            else:
                _gunzip(archive, out, counted)
    except UNPACK_ERRORS as exc:
        raise DataError(
            f"{archive}: cannot unpack, the archive is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "delete it and rerun, and check the source's md5"
        ) from None


# --------------------------------------------------------------------------- stage
def run(name: str, source: Source, raw_dir: Path, downloads_dir: Path, params: Download, root: Path) -> Path:
    """Fetch and verify ``source`` into ``downloads_dir``, unpack it to ``raw_dir/<name>/``; return that."""
    archive, record = fetch(name, source, downloads_dir, params, root)
    final = raw_dir / name
    try:
        with atomic_dir(final) as stage:
            unpack(archive, stage, source.unpack)
            write_json(stage / RECORD, record)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise DownloadError(f"{final}: disk full while unpacking {archive.name}; free space, rerun") from None
    log.info("%s: %s -> %s", name, archive.name, final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.download",
        description=(
            "Download one source of params.yaml 'sources' (or all of them) into the archive cache\n"
            "paths.downloads/md5-<md5>/<file> (url-<hash>/<file> for md5: null), verify its md5\n"
            "and size while streaming, and unpack it into paths.raw/<source>/. Profiles never\n"
            "share a cache path, so switching profiles downloads nothing twice. Interrupted\n"
            "downloads resume (HTTP Range); a cached archive is re-verified, not trusted; a file\n"
            "that fails verification is kept aside as <file>.corrupt in its key directory."
        ),
        epilog=(
            "examples:\n"
            "  python -m tasks.download --source collectionandqueries\n"
            "  python -m tasks.download --all --params params.yaml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--source", metavar="NAME", help="one key of 'sources' in params.yaml")
    which.add_argument("--all", action="store_true", help="every source, in params.yaml order")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="default: params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.params)
        if args.source is not None and args.source not in cfg.sources:
            known = ", ".join(cfg.sources) or "none"
            raise ConfigError(f"{args.params}: no source {args.source!r} under 'sources' (known: {known})")
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    names = list(cfg.sources) if args.all else [args.source]
    failed = []
    for name in names:
        try:
            run(name, cfg.sources[name], cfg.path("raw"), cfg.path("downloads"), cfg.download, ROOT)
        except (DownloadError, DataError, ConfigError, OSError) as exc:
            if args.all and cfg.sources[name].optional:
                log.warning("optional source %s skipped: %s", name, exc)
                continue
            sys.stderr.write(f"error: {name}: {exc}\n")
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
