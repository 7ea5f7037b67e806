"""The score pickle: published-compatible bytes, and a loader that never runs code."""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tasks.io import DataError
from tasks.scores_pickle import UnsafePickleError, load_scores_pickle, write_scores_pickle


def _arrays(d: dict[int, dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [(q, p, s) for q in sorted(d) for p, s in sorted(d[q].items())]
    return (
        np.array([r[0] for r in rows], np.int64),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.float32),
    )


def _random_scores(seed: int, n_queries: int, max_pids: int) -> dict[int, dict[int, float]]:
    rng = np.random.default_rng(seed)
    out: dict[int, dict[int, float]] = {}
    for qid in sorted(set(rng.integers(0, 2**33, n_queries).tolist())):
        pids = sorted(set(rng.integers(-(2**35), 2**35, int(rng.integers(1, max_pids))).tolist()))
        out[qid] = {p: float(np.float32(rng.normal(0, 5))) for p in pids}
    return out


CASES = {
    "empty": {},
    "one-query-one-pid": {5: {7: 1.5}},
    "single-item-inner-dicts": {q: {1: -0.25} for q in range(300)},
    "1000-items": {1: {p: 0.5 for p in range(1000)}},
    "1001-items": {1: {p: 0.5 for p in range(1001)}},
    "2000-queries": {q: {0: 1.0, 70000: 2.0} for q in range(2000)},
    "int-widths": {
        -(2**40): {p: 0.125 for p in (-(2**31) - 1, -129, -1, 0, 255, 256, 65535, 65536, 2**31, 2**40)}
    },
    "random": _random_scores(0, 400, 60),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bytes_equal_pickle_dumps_and_round_trip(tmp_path: Path, name: str) -> None:
    d = CASES[name]
    path = tmp_path / "x-scores.pkl.gz"
    assert write_scores_pickle(path, *_arrays(d)) == len(d)
    raw = gzip.decompress(path.read_bytes())
    assert raw == pickle.dumps(d, protocol=2)  # what a plain pickle.dump would write
    assert pickle.loads(raw) == d  # the published reader: plain pickle.load
    assert load_scores_pickle(path) == d


def test_deterministic_gzip(tmp_path: Path) -> None:
    d = CASES["random"]
    a, b = tmp_path / "a.pkl.gz", tmp_path / "b.pkl.gz"
    write_scores_pickle(a, *_arrays(d))
    write_scores_pickle(b, *_arrays(d))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0


def test_writer_refuses_unsorted_duplicate_or_nan(tmp_path: Path) -> None:
    q, p, s = np.array([1, 1]), np.array([5, 5]), np.array([0.1, 0.2], np.float32)
    with pytest.raises(ValueError, match="sorted by \\(qid, pid\\)"):
        write_scores_pickle(tmp_path / "d.pkl.gz", q, p, s)
    with pytest.raises(DataError, match="non-finite"):
        write_scores_pickle(
            tmp_path / "n.pkl.gz", np.array([1]), np.array([2]), np.array([np.nan], np.float32)
        )
    assert not (tmp_path / "d.pkl.gz").exists() and not (tmp_path / "n.pkl.gz").exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 -- the classic pickle payload
        return (os.system, (f"touch {self.marker}",))


def _gz_pickle(path: Path, obj: object) -> Path:
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=4)))
    return path


def test_pickle_carrying_code_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _gz_pickle(tmp_path / "evil-scores.pkl.gz", {1: {2: _Exploit(marker)}})
    with pytest.raises(UnsafePickleError, match=r"refused to load global (posix|nt)\.system"):
        load_scores_pickle(evil)
    assert not marker.exists(), "the payload ran"
    # the payload is real: a plain pickle.load does run it (harmless here: it touches a file)
    pickle.loads(gzip.decompress(evil.read_bytes()))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_scalars_load_as_python_numbers(tmp_path: Path, protocol: int) -> None:
    """What ``scores[qid][pid] = model.predict(...)[i]`` with numpy ids leaves in a pickle."""
    big_endian = np.array([2.25], dtype=">f8")[0]
    obj = {
        np.int64(7): {np.int64(3): np.float32(0.5), 4: np.float64(-1.25), np.int32(5): big_endian},
        8: {np.uint16(9): np.int64(2)},
    }
    path = tmp_path / "np.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=protocol), mtime=0))
    loaded = load_scores_pickle(path)
    assert loaded == {7: {3: 0.5, 4: -1.25, 5: 2.25}, 8: {9: 2.0}}
    assert all(type(q) is int for q in loaded)
    assert all(type(p) is int and type(v) is float for inner in loaded.values() for p, v in inner.items())


class _Reduces:
    """Pickles as ``fn(*args)``: a way to write globals numpy itself never pickles."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.fn, self.args


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([0.5, 0.25]), r"numpy\._core\.multiarray\._reconstruct"),  # an array, not a scalar
        (_Reduces(np.dtype, "O", False, True), r"numpy\.dtype\('O'"),  # object dtype: would be pointers
        (_Reduces(np.dtype, "i4,i4", False, True), "only bool, int and float"),  # structured
        (_Reduces(np.dtype, "f4", True, True), "not a plain numeric dtype"),
        (_Reduces(codecs.encode, "abc", "rot13"), "only latin-1"),
        (_Reduces(np.float32, 0.5), r"numpy\.float32"),
    ],
)
def test_numpy_globals_beyond_numeric_scalars_are_refused(
    tmp_path: Path, value: object, message: str
) -> None:
    path = tmp_path / "bad.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps({1: {2: value}}, protocol=2), mtime=0))
    with pytest.raises(UnsafePickleError, match=message):
        load_scores_pickle(path)


def test_a_crafted_dtype_state_is_refused(tmp_path: Path) -> None:
    """BUILD on the dtype with flags numpy never pickles for a number (63: 'holds objects', 'list
    pickle'...): refused by the stand-in before any numpy code sees the state or the bytes."""
    good = pickle.dumps({1: {2: np.float32(0.5)}}, protocol=2)
    state = b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"  # elsize -1, alignment -1, flags 0
    assert good.count(state) == 1
    crafted = good.replace(state, b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x3ft")  # flags 63
    path = tmp_path / "crafted.pkl.gz"
    path.write_bytes(gzip.compress(crafted, mtime=0))
    with pytest.raises(UnsafePickleError, match="dtype state"):
        load_scores_pickle(path)


def test_pickle_with_other_globals_is_refused(tmp_path: Path) -> None:
    a_set = _gz_pickle(tmp_path / "set.pkl.gz", {1: {2: 0.5}, 3: {4}})
    with pytest.raises(DataError, match=r"scores\[3\] is set"):
        load_scores_pickle(a_set)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "top level is list"),
        ({"1": {2: 0.5}}, "key '1' is str"),
        ({1: {2: "0.5"}}, r"scores\[1\]\[2\] is str"),
        ({1: {2: float("nan")}}, "not finite"),
        ({1: {True: 0.5}}, "key True is bool"),
    ],
)
def test_wrong_shape_is_a_data_error(tmp_path: Path, obj: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_scores_pickle(_gz_pickle(tmp_path / "bad.pkl.gz", obj))


def test_int_scores_are_accepted_as_floats(tmp_path: Path) -> None:
    loaded = load_scores_pickle(_gz_pickle(tmp_path / "int.pkl.gz", {1: {2: 3}}))
    assert loaded == {1: {2: 3.0}} and type(loaded[1][2]) is float


def test_truncated_or_not_a_pickle(tmp_path: Path) -> None:
    good = tmp_path / "good.pkl.gz"
    write_scores_pickle(good, *_arrays(CASES["random"]))
    cut = tmp_path / "cut.pkl.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:-100]))
    with pytest.raises(DataError, match="not a readable score pickle"):
        load_scores_pickle(cut)
    text = tmp_path / "text.pkl.gz"
    text.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(DataError, match="not a readable score pickle"):
        load_scores_pickle(text)
