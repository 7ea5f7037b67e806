"""The cross-encoder score pickle: ``<name>-scores.pkl.gz`` = gzip(pickle(dict[int, dict[int, float]])).

This is the published format of ``cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz``
(``scores[qid][pid] -> score``), read by the sentence-transformers MarginMSE training script
with a plain ``pickle.load``.

Writer: :func:`write_scores_pickle` streams the pickle opcodes query by query from arrays
sorted by (qid, pid), so writing 160M scores never materialises 160M Python floats. The bytes
are exactly those of ``pickle.dumps(d, protocol=2)`` for the dict ``d`` whose insertion order
is sorted by qid then pid (a test checks this), inside a gzip stream with ``mtime=0``: same
scores => same bytes.

Loader: :func:`load_scores_pickle` unpickles with a restricted :class:`pickle.Unpickler`
whose ``find_class`` refuses every global. Dicts, ints and floats are built by pickle opcodes
alone, so a genuine score pickle loads, while a pickle that would call anything (a
``__reduce__`` to ``os.system``, a numpy scalar, a class instance) is refused with an error
naming the global it asked for -- nothing is ever executed. The result is then checked to be
``dict[int, dict[int, float]]`` with finite scores.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from tasks.io import DataError, open_binary, write_bytes_atomic

PROTOCOL = 2
_BATCH = 1000  # pickle's _BATCHSIZE: SETITEMS groups of at most 1000 pairs
_PROTO = b"\x80\x02"
_EMPTY_DICT = b"}"
_MARK = b"("
_SETITEMS = b"u"
_SETITEM = b"s"
_STOP = b"."
_BINFLOAT = b"G"


class UnsafePickleError(DataError):
    """The pickle asked for a global (code); it was refused, nothing ran."""


# --------------------------------------------------------------------------- writer
def _int_op(value: int) -> bytes:
    """Opcode for one int, as pickle's ``save_long`` writes it (protocol 2)."""
    if 0 <= value <= 0xFF:
        return b"K" + bytes((value,))
    if 0 <= value <= 0xFFFF:
        return b"M" + struct.pack("<H", value)
    if -0x80000000 <= value <= 0x7FFFFFFF:
        return b"J" + struct.pack("<i", value)
    raw = pickle.encode_long(value)
    return (
        b"\x8a" + bytes((len(raw),)) + raw if len(raw) < 256 else b"\x8b" + struct.pack("<i", len(raw)) + raw
    )


class _Memo:
    """pickle's memo numbering for the dicts (BINPUT below 256, LONG_BINPUT above)."""

    def __init__(self) -> None:
        self.next = 0

    def put(self) -> bytes:
        idx = self.next
        self.next += 1
        return b"q" + bytes((idx,)) if idx < 256 else b"r" + struct.pack("<I", idx)


class _DictItems:
    """Stream one dict's items with the C pickler's batching (``batch_dict_exact``).

    A dict of exactly one item is ``key value SETITEM``; otherwise items go in
    ``MARK ... SETITEMS`` groups of 1000, and a dict whose size is a multiple of 1000 ends
    with an empty ``MARK SETITEMS`` group (exactly what ``pickle.dumps`` emits).
    """

    def __init__(self, out: IO[bytes], size: int) -> None:
        self.out, self.size = out, size
        self.pending: list[bytes] | None = [] if size != 1 else None
        self.count = 0

    def add(self, key_op: bytes, value_op: bytes) -> None:
        self.count += 1
        if self.pending is None:
            self.out.write(key_op + value_op + _SETITEM)
            return
        self.pending.append(key_op + value_op)
        if len(self.pending) == _BATCH:
            self.out.write(_MARK + b"".join(self.pending) + _SETITEMS)
            self.pending = []

    def close(self) -> None:
        if self.count != self.size:
            raise AssertionError(f"dict announced {self.size} items, got {self.count}")
        if self.pending is not None and self.size:
            self.out.write(_MARK + b"".join(self.pending) + _SETITEMS)


def _inner_dict(pids: np.ndarray, scores: np.ndarray, memo: _Memo) -> bytes:
    buf = io.BytesIO()
    buf.write(_EMPTY_DICT + memo.put())
    items = _DictItems(buf, len(pids))
    for pid, score in zip(pids.tolist(), scores.tolist(), strict=True):
        items.add(_int_op(pid), _BINFLOAT + struct.pack(">d", score))
    items.close()
    return buf.getvalue()


def iter_query_groups(
    qids: np.ndarray, pids: np.ndarray, scores: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(qid, pids, scores)`` per query from arrays sorted by (qid, pid)."""
    if len(qids) == 0:
        return
    starts = np.r_[0, np.flatnonzero(np.diff(qids)) + 1, len(qids)]
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        yield int(qids[a]), pids[a:b], scores[a:b]


def write_scores_pickle(path: str | Path, qids: np.ndarray, pids: np.ndarray, scores: np.ndarray) -> int:
    """Write the published score pickle from parallel arrays; returns the number of queries.

    The arrays must be sorted by (qid, pid) with no duplicate pair (the canonical Parquet is).
    Scores are written as Python floats (float64 widening of the float32 values).
    """
    qids = np.asarray(qids, dtype=np.int64)
    pids = np.asarray(pids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (len(qids) == len(pids) == len(scores)):
        raise ValueError("qids, pids and scores must have the same length")
    if len(qids) > 1:
        order_ok = (np.diff(qids) > 0) | ((np.diff(qids) == 0) & (np.diff(pids) > 0))
        if not order_ok.all():
            bad = int(np.flatnonzero(~order_ok)[0]) + 1
            raise ValueError(
                f"pairs must be sorted by (qid, pid) without duplicates; row {bad} "
                f"(qid {qids[bad]}, pid {pids[bad]}) breaks the order"
            )
    if not np.isfinite(scores).all():
        raise DataError(f"{path}: refusing to write {int((~np.isfinite(scores)).sum())} non-finite score(s)")
    n_queries = int(np.count_nonzero(np.diff(qids))) + 1 if len(qids) else 0
    memo = _Memo()
    with write_bytes_atomic(path, gz=True) as out:
        out.write(_PROTO + _EMPTY_DICT + memo.put())
        outer = _DictItems(out, n_queries)
        for qid, q_pids, q_scores in iter_query_groups(qids, pids, scores):
            outer.add(_int_op(qid), _inner_dict(q_pids, q_scores, memo))
        outer.close()
        out.write(_STOP)
    return n_queries


# --------------------------------------------------------------------------- loader
class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        raise UnsafePickleError(
            f"refused to load global {module}.{name}: a score pickle holds only dicts, ints and floats"
        )

    def persistent_load(self, pid: object) -> object:
        raise UnsafePickleError("refused a persistent id: a score pickle holds only dicts, ints and floats")


def _check(path: Path, obj: object) -> dict[int, dict[int, float]]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: top level is {type(obj).__name__}, expected dict[qid, dict[pid, score]]")
    for qid, inner in obj.items():
        if type(qid) is not int:
            raise DataError(f"{path}: key {qid!r} is {type(qid).__name__}, expected an int qid")
        if not isinstance(inner, dict):
            raise DataError(f"{path}: scores[{qid}] is {type(inner).__name__}, expected dict[pid, score]")
        for pid, score in inner.items():
            if type(pid) is not int:
                raise DataError(f"{path}: scores[{qid}] key {pid!r} is {type(pid).__name__}, expected int")
            if type(score) is int:
                inner[pid] = score = float(score)
            if type(score) is not float:
                raise DataError(f"{path}: scores[{qid}][{pid}] is {type(score).__name__}, expected float")
            if not math.isfinite(score):
                raise DataError(f"{path}: scores[{qid}][{pid}] is {score} (not finite)")
    return obj  # type: ignore[return-value]


def load_scores_pickle(path: str | Path) -> dict[int, dict[int, float]]:
    """Load a score pickle (ours or the downloaded published one) without executing code.

    Raises :class:`UnsafePickleError` if the pickle references any global (code), and
    :class:`DataError` if it is not ``dict[int, dict[int, float]]`` or has a non-finite score.
    """
    path = Path(path)
    with open_binary(path) as fh:
        try:
            obj = _RestrictedUnpickler(fh).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}; not loading it (it may carry code)") from None
        except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable score pickle ({type(exc).__name__}: {exc})") from None
    return _check(path, obj)
