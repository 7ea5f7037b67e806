"""The cross-encoder score pickle: ``<name>-scores.pkl.gz`` = gzip(pickle(dict[int, dict[int, float]])).

This is the published format of ``cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz``
(``scores[qid][pid] -> score``), read by the sentence-transformers MarginMSE training script
with a plain ``pickle.load``.

Writer: :func:`write_scores_pickle` streams the pickle opcodes query by query from arrays
sorted by (qid, pid), so writing 160M scores never materialises 160M Python floats. The bytes
are exactly those of ``pickle.dumps(d, protocol=2)`` for the dict ``d`` whose insertion order
is sorted by qid then pid (a test checks this), inside a gzip stream with ``mtime=0``: same
scores => same bytes.

Loader: :func:`load_scores_pickle` unpickles with a restricted :class:`pickle.Unpickler`.
Dicts, ints and floats are built by pickle opcodes alone, so a genuine score pickle loads,
while a pickle that would call anything (a ``__reduce__`` to ``os.system``, a class instance)
is refused with an error naming the global it asked for -- nothing is ever executed. One family
of globals is answered, because many real score pickles hold numpy scalars (``np.float32``
scores, ``np.int64`` ids, as ``scores[qid][pid] = model.predict(...)[i]`` leaves them):
``numpy.dtype``, ``numpy[._]core.multiarray.scalar`` and, for protocol 2's bytes,
``_codecs.encode``. They resolve to stand-ins written here, not to numpy's functions: the
dtype stand-in accepts only plain numeric type codes (bool, int, uint, float) with the
state numpy itself pickles for them, the scalar stand-in decodes the raw bytes with that
dtype into a Python int or float, and ``_codecs.encode`` only turns text into latin-1 bytes. No
numpy constructor ever sees bytes from the file. The result is then checked to be
``dict[int, dict[int, float]]`` with finite scores.

String ids (a corpus of your own, :mod:`tasks.publish`): :func:`write_scores_pickle_ids` writes
the same pickle with your string ids, ``scores[qid_str][pid_str] -> float``, through the same
opcode stream: each id is ``BINUNICODE`` + ``BINPUT`` where it first occurs and ``BINGET``
after, exactly as ``pickle.dumps`` writes a dict whose strings are the objects of the two id
lists (so a passage under many queries is one string object after loading, as in the writer's
id list). :func:`load_scores_pickle_ids` is the restricted loader's twin for that shape.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
_BINUNICODE = b"X"


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


_KeyOp = Callable[[int, "_Memo"], bytes]  # (id, memo) -> the opcodes of that dict key


def _int_key(ident: int, memo: _Memo) -> bytes:
    return _int_op(ident)


class _StrKeys:
    """Dict keys as the string ids of an id map (``ids[i]`` is the string of int id ``i``).

    The first occurrence of an id is ``BINUNICODE`` + a memo put, later ones a memo get: what
    ``pickle.dumps`` writes when the same string object is a key in several dicts.
    """

    def __init__(self, ids: Sequence[str], what: str) -> None:
        self.ids, self.what = ids, what
        self.slot = np.full(len(ids), -1, dtype=np.int64)  # memo index of each id once written

    def __call__(self, ident: int, memo: _Memo) -> bytes:
        if not 0 <= ident < len(self.ids):
            raise DataError(
                f"{self.what} {ident} has no string id (the id map holds ids 0..{len(self.ids) - 1})"
            )
        slot = int(self.slot[ident])
        if slot >= 0:
            return b"h" + bytes((slot,)) if slot < 256 else b"j" + struct.pack("<I", slot)
        raw = self.ids[ident].encode("utf-8", "surrogatepass")
        self.slot[ident] = memo.next
        return _BINUNICODE + struct.pack("<I", len(raw)) + raw + memo.put()


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


def _inner_dict(pids: list[int], scores: list[float], memo: _Memo, pid_key: _KeyOp = _int_key) -> bytes:
    buf = io.BytesIO()
    buf.write(_EMPTY_DICT + memo.put())
    items = _DictItems(buf, len(pids))
    for pid, score in zip(pids, scores, strict=True):
        items.add(pid_key(pid, memo), _BINFLOAT + struct.pack(">d", score))
    items.close()
    return buf.getvalue()


def _write_stream(
    path: str | Path,
    n_queries: int,
    groups: Iterable[tuple[int, list[int], list[float]]],
    qid_key: _KeyOp = _int_key,
    pid_key: _KeyOp = _int_key,
) -> None:
    """The pickle of ``{qid: {pid: score}}`` from ``groups`` (one per query, in dict order),
    streamed into a gzip file (mtime 0) written atomically; keys as ``qid_key`` / ``pid_key`` say."""
    memo = _Memo()
    with write_bytes_atomic(path, gz=True) as out:
        out.write(_PROTO + _EMPTY_DICT + memo.put())
        outer = _DictItems(out, n_queries)
        for qid, q_pids, q_scores in groups:
            key = qid_key(qid, memo)  # before the inner dict: pickle saves (and memoises) the key first
            outer.add(key, _inner_dict(q_pids, q_scores, memo, pid_key))
        outer.close()
        out.write(_STOP)


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
    groups = ((q, p.tolist(), s.tolist()) for q, p, s in iter_query_groups(qids, pids, scores))
    _write_stream(path, n_queries, groups)
    return n_queries


def write_scores_pickle_ids(
    path: str | Path,
    scores: Mapping[int, Mapping[int, float]],
    query_ids: Sequence[str],
    corpus_ids: Sequence[str],
) -> int:
    """Write ``scores`` (int ids) as the score pickle of your string ids; returns the number of queries.

    ``{query_ids[qid]: {corpus_ids[pid]: score}}`` in the iteration order of ``scores``, scores as
    Python floats (module docstring: the same opcode stream, strings memoised as ``pickle.dumps``
    memoises them). An id outside its map or a non-finite score raises a :class:`DataError` and
    nothing is written. The caller checks that each map holds distinct ids (two ids mapped to one
    string would merge their entries on loading).
    """
    for qid, inner in scores.items():
        for pid, score in inner.items():
            if not math.isfinite(score):
                raise DataError(
                    f"{path}: refusing to write a non-finite score, scores[{qid}][{pid}] = {score}"
                )
    groups = ((q, list(inner), [float(s) for s in inner.values()]) for q, inner in scores.items())
    _write_stream(path, len(scores), groups, _StrKeys(query_ids, "qid"), _StrKeys(corpus_ids, "pid"))
    return len(scores)


# --------------------------------------------------------------------------- loader
_NUMERIC_KINDS = "biuf"
_BYTE_ORDERS = "<>|="


class _DtypeSpec:
    """What ``numpy.dtype(code, False, True)`` + ``BUILD(state)`` in a pickle asks for, checked.

    Only a plain numeric dtype passes: a type code numpy maps to kind b/i/u/f, and the state
    numpy pickles for it (version 3, a byte order, no subarray / names / fields, elsize and
    alignment -1, flags 0). Anything else (object, structured, void, datetime dtypes) is refused.
    """

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        if not isinstance(code, str) or align is not False:
            raise UnsafePickleError(f"refused numpy.dtype{(code, align, copy)!r}: not a plain numeric dtype")
        try:
            dtype = np.dtype(code)
        except TypeError:
            raise UnsafePickleError(f"refused numpy.dtype({code!r}): not a numpy type code") from None
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise UnsafePickleError(f"refused numpy.dtype({code!r}): only bool, int and float dtypes")
        self.dtype = dtype

    def __setstate__(self, state: object) -> None:
        ok = (
            isinstance(state, tuple)
            and len(state) == 8
            and state[0] == 3
            and isinstance(state[1], str)
            and state[1] in _BYTE_ORDERS
            and state[2:5] == (None, None, None)
            and state[5:] == (-1, -1, 0)
        )
        if not ok:
            raise UnsafePickleError(f"refused numpy dtype state {state!r}: not a plain numeric dtype")
        if state[1] in "<>":  # type: ignore[index]
            self.dtype = self.dtype.newbyteorder(state[1])  # type: ignore[index]


def _scalar(spec: object, data: object) -> int | float | bool:
    """``numpy.core.multiarray.scalar(dtype, raw bytes)`` for a checked numeric dtype, as Python."""
    if not isinstance(spec, _DtypeSpec) or not isinstance(data, bytes) or len(data) != spec.dtype.itemsize:
        raise UnsafePickleError("refused a numpy scalar that is not raw bytes of a numeric dtype")
    return np.frombuffer(data, dtype=spec.dtype)[0].item()  # type: ignore[no-any-return]


def _latin1(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol 2 stores bytes; nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode(..., {encoding!r}): only latin-1 text to bytes")
    return text.encode("latin-1")


_ANSWERED = {
    ("numpy", "dtype"): _DtypeSpec,
    ("numpy._core.multiarray", "scalar"): _scalar,  # numpy 2
    ("numpy.core.multiarray", "scalar"): _scalar,  # numpy 1
    ("_codecs", "encode"): _latin1,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        answer = _ANSWERED.get((module, name))
        if answer is None:
            raise UnsafePickleError(
                f"refused to load global {module}.{name}: a score pickle holds only dicts, ints and "
                "floats (numpy numeric scalars included)"
            )
        return answer

    def persistent_load(self, pid: object) -> object:
        raise UnsafePickleError("refused a persistent id: a score pickle holds only dicts, ints and floats")


def _check(path: Path, obj: object, key_type: type = int) -> dict[int, dict[int, float]]:
    """``obj`` checked to be ``dict[key, dict[key, float]]`` (``key_type`` int, or str for string
    ids) with finite scores; int scores are widened to float in place."""
    article = "an" if key_type is int else "a"
    if not isinstance(obj, dict):
        raise DataError(f"{path}: top level is {type(obj).__name__}, expected dict[qid, dict[pid, score]]")
    for qid, inner in obj.items():
        if type(qid) is not key_type:
            raise DataError(
                f"{path}: key {qid!r} is {type(qid).__name__}, expected {article} {key_type.__name__} qid"
            )
        if not isinstance(inner, dict):
            raise DataError(f"{path}: scores[{qid}] is {type(inner).__name__}, expected dict[pid, score]")
        for pid, score in inner.items():
            if type(pid) is not key_type:
                raise DataError(
                    f"{path}: scores[{qid}] key {pid!r} is {type(pid).__name__}, expected {key_type.__name__}"
                )
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
    return _check(path, _restricted_load(path))


def load_scores_pickle_ids(path: str | Path) -> dict[str, dict[str, float]]:
    """:func:`load_scores_pickle` for a pickle of string ids (:func:`write_scores_pickle_ids`): the
    same restricted unpickler, the result checked to be ``dict[str, dict[str, float]]``."""
    path = Path(path)
    return _check(path, _restricted_load(path), str)  # type: ignore[return-value]


def _restricted_load(path: Path) -> object:
    """Unpickle ``path`` (gzip or not) with :class:`_RestrictedUnpickler`; errors name the file."""
    with open_binary(path) as fh:
        try:
            return _RestrictedUnpickler(fh).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}; not loading it (it may carry code)") from None
        except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable score pickle ({type(exc).__name__}: {exc})") from None
