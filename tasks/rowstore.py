"""A content-addressed store of fixed-width rows: one row per digest, kept in immutable packs.

The incremental refresh (``encode.addressing: text``, ``cross_encoder.addressing: pair``) keys
each embedding by its text and each cross-encoder score by its (query, passage) texts, not by
its position in a shard: a passage inserted at the top of the corpus then moves every later
passage without invalidating anything, and a refresh computes only the rows it has never seen.

Layout under ``root`` (one directory per setting, chosen by the caller's settings hash)::

    <pack>.rows.npy    rows x width (the caller's dtype), in the order of its keys
    <pack>.keys.npy    rows x |S16|: the digest of each row (:func:`digest`)
    <pack>.json        rows, width, dtype and the sha256 of both files

A pack is named by the hash of its keys and written temp + rename, the JSON last: a pack whose
JSON is missing (a kill between the renames) or whose hashes differ (a damaged file) is removed
with a warning when the store opens, so a killed writer leaves nothing that counts. Nothing
rewrites a pack: a rerun adds new packs. Two packs may hold the same digest (two runs that both
computed it): the rows are equal, since a row depends only on what its digest names; the first
pack in name order wins, so which one is read never depends on the order packs were written.

Lookups go through one sorted array of every digest (16 bytes a row: 16 MB per million rows),
not a Python dict.

Two processes may share one store (two CLIs run by hand against the same cache). A pack in
flight looks exactly like a killed writer's leftovers (rows and keys renamed into place, no JSON
yet), so the cleanup above must never run while a write is in progress. An advisory ``flock`` on
``<root>/.lock`` (:data:`LOCK_NAME`) tells the two apart: :meth:`RowStore.put` holds a *shared*
lock from before its first rename until its JSON is in place (writers never wait for each
other), and opening the store removes orphans and damaged packs only under an *exclusive* lock
taken without waiting. If any writer holds the lock, the cleanup is skipped (logged at debug):
the candidates are left in place and not indexed, and the next open with no writer running
removes them. Each candidate is checked again under the exclusive lock, since a writer may have
finished it between the scan and the lock. The kernel drops a killed writer's lock with its
process, so a kill never leaves the store locked. A pack removed by hand after the store opened
makes :meth:`RowStore.get` raise :class:`~tasks.io.DataError` naming the store and the pack.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import DataError, file_digest, read_json, write_bytes_atomic, write_json

log = logging.getLogger(__name__)

DIGEST = np.dtype("S16")
FORMAT = 1
LOCK_NAME = ".lock"  # advisory flock: shared while a put is in flight, exclusive to clean up


def digest(*parts: str) -> bytes:
    """16 bytes of sha256 over length-prefixed UTF-8 ``parts`` (so ("ab", "c") != ("a", "bc"))."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()[:16]


def digests(rows: Iterable[tuple[str, ...]]) -> np.ndarray:
    """:func:`digest` of each tuple, as an ``S16`` array."""
    return np.array([digest(*r) for r in rows], dtype=DIGEST)


class RowStore:
    """Rows of ``width`` values of ``dtype`` by digest, under ``root`` (created on first write)."""

    def __init__(self, root: str | Path, width: int | None, dtype: Any):
        self.root = Path(root)
        self.width = width  # None: taken from the first pack read or written
        self.dtype = np.dtype(dtype)
        self._packs: list[Path] = []  # pack stems, in name order
        self._keys = np.zeros(0, dtype=DIGEST)  # sorted, unique
        self._where = np.zeros((0, 2), dtype=np.int64)  # (pack index, row) per sorted key
        self._rows: dict[int, np.ndarray] = {}
        self._open()

    # ------------------------------------------------------------------ locking
    def _lock_fd(self) -> int:
        """An open descriptor of ``<root>/.lock`` (created; the root must exist)."""
        return os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the shared lock: no open removes this process's pack while it is incomplete."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = self._lock_fd()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an open is cleaning up
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def _cleaning(self) -> Iterator[bool]:
        """Try the exclusive lock without waiting; yields whether it is held (no write in flight)."""
        try:
            fd = self._lock_fd()
        except OSError as exc:  # e.g. a read-only store: nothing could be removed anyway
            log.debug("row store %s: cannot open %s (%s); cleanup skipped", self.root, LOCK_NAME, exc)
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reading
    def _open(self) -> None:
        if not self.root.is_dir():
            return
        stems = sorted(p.name[: -len(".json")] for p in self.root.glob("*.json"))
        found: dict[str, np.ndarray] = {}
        damaged = []
        for stem in stems:
            got = self._verify(stem)
            if got is None:
                damaged.append(stem)
            else:
                found[stem] = got
        known = set(stems)
        orphans = sorted(p for p in self.root.glob("*.npy") if p.name.rsplit(".", 2)[0] not in known)
        if damaged or orphans:
            with self._cleaning() as held:
                if not held:
                    log.debug(
                        "row store %s: a write is in progress; %d damaged pack(s) and %d orphan file(s) "
                        "left in place for a later open", self.root, len(damaged), len(orphans),
                    )  # fmt: skip
                else:
                    for stem in damaged:  # checked again: a writer may have rewritten it meanwhile
                        got = self._verify(stem)
                        if got is None:
                            self._remove_pack(stem)
                        else:
                            found[stem] = got
                    self._remove_orphans(orphans)
        keys, where = [], []
        for stem in sorted(found):
            index = len(self._packs)
            self._packs.append(self.root / stem)
            keys.append(found[stem])
            where.append(np.stack([np.full(len(found[stem]), index), np.arange(len(found[stem]))], axis=1))
        if keys:
            self._index(np.concatenate(keys), np.concatenate(where))

    def _verify(self, stem: str) -> np.ndarray | None:
        """The keys of pack ``stem`` if its JSON matches this store and both files; else None."""
        meta_path = self.root / f"{stem}.json"
        rows_path, keys_path = self.root / f"{stem}.rows.npy", self.root / f"{stem}.keys.npy"
        try:
            meta = read_json(meta_path)
            ok = (
                meta.get("format") == FORMAT
                and meta.get("dtype") == self.dtype.str
                and (self.width is None or meta.get("width") == self.width)
                and rows_path.exists()
                and keys_path.exists()
                and file_digest(rows_path, "sha256") == meta.get("rows_sha256")
                and file_digest(keys_path, "sha256") == meta.get("keys_sha256")
            )
            if ok:
                keys = np.load(keys_path, allow_pickle=False)
        except (DataError, OSError, ValueError):
            ok = False
        if not ok:
            return None
        self.width = int(meta["width"])
        return keys

    def _remove_pack(self, stem: str) -> None:
        log.warning("row store %s: pack %s is damaged or incomplete; removing it", self.root, stem)
        for suffix in (".json", ".rows.npy", ".keys.npy"):
            (self.root / f"{stem}{suffix}").unlink(missing_ok=True)

    def _remove_orphans(self, orphans: list[Path]) -> None:
        """Rows/keys files with no JSON: a writer killed before its last rename (lock held)."""
        for p in orphans:
            if (self.root / f"{p.name.rsplit('.', 2)[0]}.json").exists():
                continue  # its writer finished between the scan and the lock
            log.warning("row store %s: removing %s, left by an interrupted write", self.root, p.name)
            p.unlink(missing_ok=True)

    def _index(self, keys: np.ndarray, where: np.ndarray) -> None:
        all_keys = np.concatenate([self._keys, keys])
        all_where = np.concatenate([self._where, where])
        # stable: among equal digests the earlier pack (name order on open, then write order) wins
        order = np.argsort(all_keys, kind="stable")
        all_keys, all_where = all_keys[order], all_where[order]
        first = np.ones(len(all_keys), dtype=bool)
        first[1:] = all_keys[1:] != all_keys[:-1]
        self._keys, self._where = all_keys[first], all_where[first]

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Per key, its position in the index, or -1 where the store does not hold it."""
        keys = np.asarray(keys, dtype=DIGEST)
        if not len(self._keys):
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(self._keys[pos] == keys, pos, -1).astype(np.int64)

    def missing(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask of the keys the store does not hold."""
        return self.find(keys) < 0

    def _pack_rows(self, index: int) -> np.ndarray:
        if index not in self._rows:
            path = Path(f"{self._packs[index]}.rows.npy")
            try:
                self._rows[index] = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError as exc:
                raise DataError(
                    f"row store {self.root}: pack {path.name} was removed after the store was opened "
                    "(by hand, or by another process); rerun to recompute its rows"
                ) from exc
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"row store {self.root}: pack {path.name} cannot be read ({exc}); remove "
                    f"{self._packs[index].name}.* and rerun to recompute its rows"
                ) from exc
        return self._rows[index]

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The rows of ``keys``, in their order; every key must be held (else ``KeyError``)."""
        pos = self.find(keys)
        if (pos < 0).any():
            raise KeyError(f"row store {self.root}: {int((pos < 0).sum())} key(s) not held")
        out = np.empty((len(pos), self.width or 0), dtype=self.dtype)
        where = self._where[pos]
        for index in np.unique(where[:, 0]).tolist():
            sel = np.flatnonzero(where[:, 0] == index)
            out[sel] = self._pack_rows(index)[where[sel, 1]]
        return out

    # ------------------------------------------------------------------ writing
    def put(self, keys: np.ndarray, rows: np.ndarray) -> Path:
        """Store ``rows`` (one per key) as a new pack; returns its stem path."""
        keys = np.ascontiguousarray(keys, dtype=DIGEST)
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or len(rows) != len(keys) or not len(keys):
            raise ValueError(f"row store {self.root}: {len(keys)} keys for rows of shape {rows.shape}")
        if self.width is not None and rows.shape[1] != self.width:
            raise ValueError(f"row store {self.root}: rows are {rows.shape[1]} wide, the store {self.width}")
        self.width = int(rows.shape[1])
        stem = self.root / hashlib.sha256(keys.tobytes()).hexdigest()[:32]
        rows_path, keys_path = Path(f"{stem}.rows.npy"), Path(f"{stem}.keys.npy")
        with self._writing():  # from the first rename until the JSON: no open removes the pack
            for path, arr in ((rows_path, rows), (keys_path, keys)):
                with write_bytes_atomic(path, gz=False) as fh:
                    np.save(fh, arr, allow_pickle=False)
            write_json(
                Path(f"{stem}.json"),
                {
                    "format": FORMAT,
                    "rows": len(keys),
                    "width": self.width,
                    "dtype": self.dtype.str,
                    "rows_sha256": file_digest(rows_path, "sha256"),
                    "keys_sha256": file_digest(keys_path, "sha256"),
                },
            )
        if stem not in self._packs:
            index = len(self._packs)
            self._packs.append(stem)
            self._index(keys, np.stack([np.full(len(keys), index), np.arange(len(keys))], axis=1))
        return stem
