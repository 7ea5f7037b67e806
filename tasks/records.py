"""Typed records and the one reader/writer of each MS MARCO exchange format.

Formats (kept exactly as users exchange them):

- collection / queries: ``id \\t text`` per line (``collection.tsv``, ``queries.*.tsv``).
- qrels: TREC ``qid 0 pid rel`` (tabs in MS MARCO's files, spaces in TREC DL's).
- run: TREC ``qid Q0 pid rank score tag``.
- top1000: the official re-ranking candidates ``qid<TAB>pid<TAB>query<TAB>passage``
  (``top1000.dev``, ``msmarco-passagetest2019-top1000.tsv``), unscored and in random order:
  read as each query's candidate set, never as a ranking (:func:`read_candidates`).
- hits: the per-system mining artifact, Parquet with columns
  ``qid:int64, rank:int32, pid:int64, score:float32``, sorted by (qid, rank).

Bad input is a :class:`~tasks.io.DataError` naming the file and line, raised before anything
is written (stages fail with exit code 1 and keep their previous outputs):

- an empty file (no record; blank lines do not count): every input here holds records, so an
  empty one was truncated or never filled. A run file is the exception (an empty run is
  reported by ``evaluate`` as "not evaluated").
- a line with the wrong number of fields: collection and queries lines are exactly
  ``id<TAB>text`` (a tab inside a text would shift every column of every reader of the file);
  qrels 4 columns, runs 6.
- an empty query text (nothing to retrieve with). An empty or blank PASSAGE text is allowed,
  counted and reported once per read (a warning naming the first line): published collections
  may carry a few, and the score stage scores them against the query alone (``empty_passages``
  in its metrics), as it always has.
- a truncated or damaged gzip stream or Parquet file.
"""

from __future__ import annotations

import logging
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io import READ_ERRORS, DataError, atomic_path, iter_lines, open_binary, write_text_atomic

log = logging.getLogger(__name__)


class Passage(NamedTuple):
    pid: int
    text: str


class Query(NamedTuple):
    qid: int
    text: str


class Qrel(NamedTuple):
    qid: int
    pid: int
    rel: int


class Hit(NamedTuple):
    qid: int
    pid: int
    rank: int  # 1-based
    score: float


def _int(value: str, path: Path, lineno: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {what} {value!r} is not an integer") from None


def empty_file(path: Path, what: str, kind: str) -> DataError:
    """The error for an input with no records (see the module docstring)."""
    return DataError(
        f"{path}: no {what} (an empty {kind} file, or only blank lines); it was probably "
        "truncated: delete it and rerun the stage that makes it (download or sample)"
    )


def _read_id_text(
    path: str | Path, what: str, text_name: str, empty_text_ok: bool
) -> Iterator[tuple[int, str]]:
    path = Path(path)
    seen: set[int] = set()
    blank: list[int] = []
    for lineno, line in iter_lines(path):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            found = "no tab" if len(fields) == 1 else f"{len(fields)} fields"
            raise DataError(
                f"{path}:{lineno}: expected 2 tab-separated fields '<{what}>\\t<{text_name}>', found {found} "
                f"(a {text_name} may not contain a tab); fix or delete the line"
            )
        ident, text = fields
        value = _int(ident, path, lineno, what)
        if value in seen:
            raise DataError(f"{path}:{lineno}: duplicate {what} {value}")
        seen.add(value)
        if not text or text.isspace():  # isspace: no copy per line (8.8M passages)
            if not empty_text_ok:
                raise DataError(
                    f"{path}:{lineno}: {what} {value} has an empty {text_name}; "
                    "give it a text or delete the line"
                )
            blank.append(lineno)
        yield value, text
    if not seen:
        raise empty_file(path, f"{text_name}s", "collection" if what == "pid" else "queries")
    if blank:
        log.warning(
            "%s: %d empty %s text(s) of %d (first on line %d); kept, as published collections have a few",
            path, len(blank), text_name, len(seen), blank[0],
        )  # fmt: skip


def read_collection(path: str | Path) -> Iterator[Passage]:
    """Passages of ``collection.tsv`` in file order. Duplicate or non-integer pids raise;
    empty passage texts are allowed and counted (module docstring)."""
    for pid, text in _read_id_text(path, "pid", "passage", empty_text_ok=True):
        yield Passage(pid, text)


def read_queries(path: str | Path) -> Iterator[Query]:
    """Queries in file order; an empty query text raises, naming its line."""
    for qid, text in _read_id_text(path, "qid", "query", empty_text_ok=False):
        yield Query(qid, text)


def write_id_text(path: str | Path, rows: Iterable[tuple[int, str]]) -> None:
    """Write ``id \\t text`` lines (collection or queries); tabs/newlines in text raise."""
    with write_text_atomic(path) as fh:
        for ident, text in rows:
            if "\t" in text or "\n" in text:
                raise DataError(f"{path}: text of id {ident} contains a tab or newline")
            fh.write(f"{ident}\t{text}\n")


def read_qrels(path: str | Path) -> Iterator[Qrel]:
    """TREC qrels ``qid iter pid rel``; whitespace (tab or space) separated. An empty file raises."""
    path = Path(path)
    n = 0
    for lineno, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise DataError(
                f"{path}:{lineno}: expected 4 columns 'qid 0 pid rel', found {len(parts)}; "
                "fix or delete the line"
            )
        n += 1
        yield Qrel(
            _int(parts[0], path, lineno, "qid"),
            _int(parts[2], path, lineno, "pid"),
            _int(parts[3], path, lineno, "relevance"),
        )
    if not n:
        raise empty_file(path, "judgements", "qrels")


def qrels_by_query(qrels: Iterable[Qrel], min_rel: int = 1) -> dict[int, list[int]]:
    """Positive pids per qid (relevance >= ``min_rel``), each list sorted, qids sorted."""
    out: dict[int, set[int]] = defaultdict(set)
    for q in qrels:
        if q.rel >= min_rel:
            out[q.qid].add(q.pid)
    return {qid: sorted(out[qid]) for qid in sorted(out)}


def write_qrels(path: str | Path, qrels: Iterable[Qrel], sep: str = "\t") -> None:
    with write_text_atomic(path) as fh:
        for q in qrels:
            fh.write(f"{q.qid}{sep}0{sep}{q.pid}{sep}{q.rel}\n")


class RunArrays(NamedTuple):
    """A TREC run as parallel arrays, in file order (no Python object per row)."""

    qid: np.ndarray  # int64
    pid: np.ndarray  # int64
    rank: np.ndarray  # int64
    score: np.ndarray  # float64

    @classmethod
    def empty(cls) -> RunArrays:
        i = np.zeros(0, dtype=np.int64)
        return cls(i, i, i, np.zeros(0, dtype=np.float64))


def _run_line_format(tag: str) -> str:
    """The ``%``-format of one run line, ``tag`` baked in (scores with 6 decimals: stable bytes)."""
    return "%d Q0 %d %d %.6f " + tag.replace("%", "%%") + "\n"


def write_run(path: str | Path, hits: Iterable[Hit], tag: str) -> None:
    """TREC run file; scores printed with 6 decimals so the bytes are stable."""
    fmt = _run_line_format(tag)
    with write_text_atomic(path) as fh:
        fh.writelines(fmt % (h.qid, h.pid, h.rank, h.score) for h in hits)


def write_run_arrays(
    path: str | Path, qid: np.ndarray, pid: np.ndarray, rank: np.ndarray, score: np.ndarray, tag: str
) -> None:
    """:func:`write_run` from parallel arrays, rows in the order given: the same bytes for the
    same rows (a float32 score prints as the float64 it widens to, as ``write_run`` prints it)."""
    fmt = _run_line_format(tag)
    cols = [np.asarray(c) for c in (qid, pid, rank, score)]
    if len({len(c) for c in cols}) > 1:
        raise ValueError(f"{path}: qid, pid, rank and score must have the same length")
    with write_text_atomic(path) as fh:
        step = 1 << 16  # a block of lines at a time: neither the text nor a Python object per row
        for start in range(0, len(cols[0]), step):  # of the whole run sits in memory
            block = [c[start : start + step].tolist() for c in cols]
            fh.write("".join(map(fmt.__mod__, zip(*block, strict=True))))


class Candidates(NamedTuple):
    """One evaluation set's re-ranking candidates, as the re-ranking stages take them.

    ``sets`` maps each query (qids ascending) to the pids to re-rank. A TREC run is ranked, so
    it is cut at the caller's depth (its pids in rank order); an official ``top1000`` list is
    unordered ("ordered by random"), so nothing is cut: every candidate of every query is kept,
    pids ascending, and the file's order cannot change what is re-ranked.
    """

    path: Path
    ordered: bool  # True: a ranked TREC run cut at ``depth``; False: an unordered list, taken whole
    depth: int | None  # the cut of an ordered run; None for an unordered list
    listed: int  # candidate rows in the file
    sets: dict[int, list[int]]

    @property
    def kept(self) -> int:
        """Candidates handed to the re-ranker (``listed`` for an unordered list)."""
        return sum(len(p) for p in self.sets.values())

    def summary(self) -> dict[str, object]:
        """What was re-ranked, for logs and metrics (JSON-ready, stable keys)."""
        return {
            "candidates": self.path.name,
            "ordered": self.ordered,
            "depth": self.depth,
            "queries": len(self.sets),
            "listed": self.listed,
            "reranked": self.kept,
        }

    def describe(self) -> str:
        """One log line: how many candidates of how many queries are re-ranked, and why."""
        how = f"top {self.depth} of a ranked run" if self.ordered else "all of an unordered list"
        return (
            f"{self.path.name}: re-ranking {self.kept:,} of {self.listed:,} candidates "
            f"({how}) for {len(self.sets):,} queries"
        )


def read_top1000(path: str | Path) -> dict[int, list[int]]:
    """Each query's candidate SET of an official list (``top1000.dev``,
    ``msmarco-passagetest2019-top1000.tsv``: ``qid<TAB>pid<TAB>query<TAB>passage``).

    The lists are unscored and in random order, so a line's position means nothing and no rank
    is returned: qids ascending, each with its pids ascending. A line without the four fields, a
    non-integer id or a pid listed twice for a query raises a DataError naming ``file:line``; so
    does an empty file.
    """
    path = Path(path)
    sets: dict[int, set[int]] = defaultdict(set)
    for lineno, line in iter_lines(path):
        if not line:
            continue
        parts = line.split("\t", 3)
        if len(parts) != 4:
            found = "no tab" if len(parts) == 1 else f"{len(parts)} fields"
            raise DataError(f"{path}:{lineno}: expected 'qid<TAB>pid<TAB>query<TAB>passage', found {found}")
        qid = _int(parts[0], path, lineno, "qid")
        pid = _int(parts[1], path, lineno, "pid")
        pids = sets[qid]
        if pid in pids:
            raise DataError(f"{path}:{lineno}: pid {pid} is listed twice for qid {qid}; delete one line")
        pids.add(pid)
    if not sets:
        raise empty_file(path, "candidates", "top1000")
    return {qid: sorted(sets[qid]) for qid in sorted(sets)}


def is_trec_run(path: str | Path) -> bool:
    """Candidates named ``*.trec`` (``.gz`` or not) are a ranked TREC run; others an official list."""
    return Path(path).name.removesuffix(".gz").endswith(".trec")


def check_candidates(path: str | Path) -> Path:
    """``path`` if the candidates exist, else FileNotFoundError naming the stage that makes them."""
    path = Path(path)
    if not path.exists():
        stage = "the bm25_mine stage" if is_trec_run(path) else "the download stage"
        raise FileNotFoundError(f"{path}: re-ranking candidates not found; run {stage} first")
    return path


def read_candidates(path: str | Path, depth: int) -> Candidates:
    """The re-ranking candidates of one set: a TREC run (``*.trec``) cut at each query's top
    ``depth`` by its rank column, or an official ``top1000`` list taken whole (``depth`` does
    not apply: a randomly ordered list has no top). See :class:`Candidates`."""
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    path = check_candidates(path)
    if not is_trec_run(path):
        sets = read_top1000(path)
        return Candidates(path, False, None, sum(len(p) for p in sets.values()), sets)
    run = read_run_arrays(path)
    order = np.lexsort((run.pid, run.rank, run.qid))  # by query, then rank, ties by pid
    qid, pid = run.qid[order], run.pid[order]
    starts = np.flatnonzero(np.r_[True, qid[1:] != qid[:-1]]) if len(qid) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(qid)])
    cut = {  # each query's first min(size, depth) pids
        int(qid[s]): pid[s : s + k].tolist()
        for s, k in zip(starts.tolist(), np.minimum(sizes, depth).tolist(), strict=True)
    }
    return Candidates(path, True, depth, len(run.qid), cut)


def iter_run_fields(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, [qid, Q0, pid, rank, score, tag])`` of each line of a TREC run, as text
    (blank lines skipped): for rewriting a run without reformatting its numbers (:mod:`tasks.publish`).
    A line without 6 columns raises a DataError naming it."""
    path = Path(path)
    for lineno, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6:
            raise DataError(f"{path}:{lineno}: expected 6 columns 'qid Q0 pid rank score tag'")
        yield lineno, parts


def read_run(path: str | Path) -> Iterator[Hit]:
    """A TREC run, in file order. An empty run yields nothing (``evaluate`` reports it)."""
    path = Path(path)
    for lineno, parts in iter_run_fields(path):
        yield _run_hit(path, lineno, parts)


def _run_hit(path: Path, lineno: int, parts: list[str]) -> Hit:
    """The :class:`Hit` of one run line's 6 fields, or a DataError naming the line."""
    try:
        score = float(parts[4])
    except ValueError:
        raise DataError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
    return Hit(
        _int(parts[0], path, lineno, "qid"),
        _int(parts[2], path, lineno, "pid"),
        _int(parts[3], path, lineno, "rank"),
        score,
    )


_RUN_COLUMNS = ("qid", "q0", "pid", "rank", "score", "tag")
_INT64 = (-(1 << 63), (1 << 63) - 1)


def read_run_arrays(path: str | Path) -> RunArrays:
    """:func:`read_run` as arrays: the same rows, the same errors, ~10x faster on a large run.

    A run as the stages write it (single spaces, visible-ASCII ``Q0`` and tag columns, no CR
    but before a newline) is parsed by pyarrow's CSV reader; anything else, well-formed or not
    (tabs or repeated spaces between columns, a bad line), goes line by line through
    :func:`read_run`, which gives the rows, or the error naming the line.
    """
    path = Path(path)
    fast = _read_run_fast(path)
    if fast is not None:
        return fast
    ids = {"qid": array("q"), "pid": array("q"), "rank": array("q")}  # 8 bytes a value, no object
    score = array("d")
    for lineno, parts in iter_run_fields(path):
        h = _run_hit(path, lineno, parts)
        for what, col in ids.items():
            value = getattr(h, what)
            if not _INT64[0] <= value <= _INT64[1]:
                raise DataError(f"{path}:{lineno}: {what} {value} does not fit in 64 bits")
            col.append(value)
        score.append(h.score)
    if not score:
        return RunArrays.empty()
    qid, pid, rank = (np.frombuffer(c, np.int64) for c in ids.values())
    return RunArrays(qid, pid, rank, np.frombuffer(score, np.float64))


def _read_run_fast(path: Path) -> RunArrays | None:
    """The run through pyarrow's CSV reader, or None where it cannot be sure to read what
    :func:`read_run` reads (then the caller reads it line by line)."""
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    try:
        with open_binary(path) as fh:
            data = fh.read()
    except READ_ERRORS + (ValueError,):
        return None  # missing, truncated, unreadable: the line reader says which line and why
    if not data.strip() or data.count(b"\r") != data.count(b"\r\n"):
        return None  # empty, or a lone CR: str.split() takes it as a space, pyarrow as a line end
    types = {"qid": pa.int64(), "q0": pa.string(), "pid": pa.int64(), "rank": pa.int64(),
             "score": pa.float64(), "tag": pa.string()}  # fmt: skip
    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=list(_RUN_COLUMNS), use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=" ", quote_char=False, escape_char=False),
            convert_options=pcsv.ConvertOptions(
                column_types=types, null_values=[], strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )  # fmt: skip
    except (pa.ArrowException, ValueError):
        return None
    for name in ("q0", "tag"):  # visible ASCII only: no whitespace str.split() would split on
        col = table.column(name)
        if col.null_count or not pc.all(pc.match_substring_regex(col, r"^[\x21-\x7e]+$")).as_py():
            return None
    if any(table.column(c).null_count for c in _RUN_COLUMNS):
        return None
    arrays = [table.column(c).to_numpy() for c in ("qid", "pid", "rank", "score")]
    return RunArrays(*arrays)


HITS_SCHEMA = pa.schema(
    [("qid", pa.int64()), ("rank", pa.int32()), ("pid", pa.int64()), ("score", pa.float32())]
)


def hits_table(qids: np.ndarray, pids: np.ndarray, scores: np.ndarray) -> pa.Table:
    """Build a hits table from parallel arrays already in (qid, rank) order.

    ``rank`` is derived: 1 for the first row of each qid, counting up.
    """
    qids = np.asarray(qids, dtype=np.int64)
    if len(qids):
        starts = np.r_[0, np.flatnonzero(np.diff(qids)) + 1]
        lengths = np.diff(np.r_[starts, len(qids)])
        ranks = np.arange(len(qids)) - np.repeat(starts, lengths) + 1
    else:
        ranks = np.zeros(0, dtype=np.int64)
    return pa.table(
        {
            "qid": qids,
            "rank": ranks.astype(np.int32),
            "pid": np.asarray(pids, dtype=np.int64),
            "score": np.asarray(scores, dtype=np.float32),
        },
        schema=HITS_SCHEMA,
    )


def write_hits(path: str | Path, table: pa.Table) -> None:
    """Write a hits table as Parquet, atomically, with deterministic bytes."""
    if table.schema != HITS_SCHEMA:
        raise ValueError(f"hits table schema {table.schema} != {HITS_SCHEMA}")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True, store_schema=False)


def _damaged_parquet(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path}: not a readable Parquet file ({exc}); delete it and rerun the stage that makes it"
    )


def skipped_reason(path: str | Path) -> str | None:
    """The ``skipped`` reason of a zero-row hits file (a system that could not run), else None
    (also when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        meta = pq.read_metadata(path)
    except pa.ArrowInvalid as exc:
        raise _damaged_parquet(path, exc) from None
    reason = (meta.metadata or {}).get(b"skipped")
    return reason.decode("utf-8") if reason is not None and meta.num_rows == 0 else None


def read_hits(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such hits file; run the mining stage first")
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as exc:
        raise _damaged_parquet(path, exc) from None
    missing = {"qid", "rank", "pid", "score"} - set(table.column_names)
    if missing:
        raise DataError(f"{path}: hits file lacks column(s) {sorted(missing)}")
    return table.select(["qid", "rank", "pid", "score"]).cast(HITS_SCHEMA)


def iter_hits(table: pa.Table) -> Iterator[Hit]:
    cols = [table.column(c).to_numpy() for c in ("qid", "pid", "rank", "score")]
    for qid, pid, rank, score in zip(*cols, strict=True):
        yield Hit(int(qid), int(pid), int(rank), float(score))


# =========================================================================== hard negatives
# (owned by the dense-retrieval / merge area; the one reader and writer of
# msmarco-hard-negatives.jsonl(.gz), ours and the published file alike)


class HardNegatives(NamedTuple):
    """One line of ``msmarco-hard-negatives.jsonl.gz``: a training query, its positives, and
    per system (``bm25``, dense model names) the mined negatives in rank order."""

    qid: int
    pos: list[int]
    neg: dict[str, list[int]]


def _int_list(value: object, path: Path, lineno: int, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DataError(f"{path}:{lineno}: {key!r} must be a list of integers")
    return list(value)


def read_hard_negatives(path: str | Path) -> Iterator[HardNegatives]:
    """Records of a hard-negatives JSONL file (gzip or not), ours or the published one.

    Each line must be ``{"qid": int, "pos": [int...], "neg": {system: [int...]}}``; anything
    else raises :class:`DataError` naming the line, and so does an empty file (merge never
    writes one). Order and systems are kept as in the file.
    """
    for _, rec in iter_hard_negatives(path):
        yield rec


def iter_hard_negatives(path: str | Path) -> Iterator[tuple[int, HardNegatives]]:
    """:func:`read_hard_negatives` with the line number of each record, for errors that name it."""
    import json

    path = Path(path)
    n = 0
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not {"qid", "pos", "neg"} <= set(obj):
            raise DataError(f"{path}:{lineno}: expected an object with keys qid, pos, neg")
        qid = obj["qid"]
        if isinstance(qid, str) and qid.isdigit():
            qid = int(qid)
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise DataError(f"{path}:{lineno}: 'qid' {obj['qid']!r} is not an integer")
        neg = obj["neg"]
        if not isinstance(neg, dict):
            raise DataError(f"{path}:{lineno}: 'neg' must map system names to lists of pids")
        n += 1
        yield (
            lineno,
            HardNegatives(
                qid,
                _int_list(obj["pos"], path, lineno, "pos"),
                {str(s): _int_list(v, path, lineno, f"neg.{s}") for s, v in neg.items()},
            ),
        )
    if not n:
        raise DataError(f"{path}: no hard-negative records (the file is empty); rerun the merge stage")


def write_hard_negatives(path: str | Path, records: Iterable[HardNegatives]) -> int:
    """Write records in the published format (keys qid, pos, neg; gzip mtime 0 for ``.gz``).

    Records must come in strictly increasing qid order (raises ``ValueError`` otherwise).
    Returns the number of lines written.
    """
    last: int | None = None

    def objects() -> Iterator[dict[str, object]]:
        nonlocal last
        for rec in records:
            if last is not None and rec.qid <= last:
                raise ValueError(f"{path}: records must be in increasing qid order ({rec.qid} after {last})")
            last = rec.qid
            yield {"qid": int(rec.qid), "pos": [int(p) for p in rec.pos],
                   "neg": {s: [int(p) for p in pids] for s, pids in rec.neg.items()}}  # fmt: skip

    return _write_jsonl(path, objects(), ensure_ascii=True)


class NamedHardNegatives(NamedTuple):
    """A :class:`HardNegatives` line with your string ids (a corpus of your own, :mod:`tasks.publish`)."""

    qid: str
    pos: list[str]
    neg: dict[str, list[str]]


def write_named_hard_negatives(path: str | Path, records: Iterable[NamedHardNegatives]) -> int:
    """Write string-id records in the published shape (keys qid, pos, neg; gzip mtime 0 for ``.gz``),
    in the given order, non-ASCII ids as UTF-8 (not ``\\u`` escapes). Returns the lines written."""
    objects: Iterator[dict[str, object]] = (
        {"qid": r.qid, "pos": list(r.pos), "neg": {s: list(p) for s, p in r.neg.items()}} for r in records
    )
    return _write_jsonl(path, objects, ensure_ascii=False)


def _write_jsonl(path: str | Path, objects: Iterable[dict[str, object]], ensure_ascii: bool) -> int:
    """One ``json.dumps`` line per object, atomically (gzip mtime 0 for ``.gz``); returns the count."""
    import json

    n = 0
    with write_text_atomic(path) as fh:
        for obj in objects:
            fh.write(json.dumps(obj, ensure_ascii=ensure_ascii) + "\n")
            n += 1
    return n


# --------------------------------------------------------------------------- cross-encoder scores
SCORES_SCHEMA = pa.schema([("qid", pa.int64()), ("pid", pa.int64()), ("score", pa.float32())])


def write_table(path: Path, table: pa.Table) -> None:
    """Write a scores table as Parquet, atomically, with deterministic bytes."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True, store_schema=False)


def scores_table(qids: np.ndarray, pids: np.ndarray, scores: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "qid": np.asarray(qids, np.int64),
            "pid": np.asarray(pids, np.int64),
            "score": np.asarray(scores, np.float32),
        },
        schema=SCORES_SCHEMA,
    )


def read_scores(path: str | Path) -> pa.Table:
    """The canonical CE scores table (``qid, pid, score``), checked for its columns."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no cross-encoder scores; run the score stage first")
    table = pq.read_table(path)
    missing = {"qid", "pid", "score"} - set(table.column_names)
    if missing:
        raise DataError(f"{path}: scores file lacks column(s) {sorted(missing)}")
    return table.select(["qid", "pid", "score"]).cast(SCORES_SCHEMA)


class ScoreLookup:
    """``(qid, pid) -> score`` over the canonical table, without a 160M-entry dict.

    Binary search over the (qid, pid)-sorted columns; a missing pair raises a DataError
    saying that the scores were computed on other negatives.
    """

    def __init__(self, table: pa.Table, source: str | Path = "ce-scores.parquet") -> None:
        self.qids = table.column("qid").to_numpy()
        self.pids = table.column("pid").to_numpy()
        self.scores = table.column("score").to_numpy()
        self.source = source

    def query(self, qid: int, pids: list[int]) -> np.ndarray:
        """Scores (float32) of ``pids`` for ``qid``, in the given order."""
        lo, hi = np.searchsorted(self.qids, [qid, qid + 1])
        row_pids = self.pids[lo:hi]
        want = np.asarray(pids, dtype=np.int64)
        pos = np.searchsorted(row_pids, want)
        found = pos < len(row_pids)
        found[found] = row_pids[pos[found]] == want[found]
        if not found.all():
            missing = want[~found][:5].tolist()
            raise DataError(
                f"{self.source}: no cross-encoder score for qid {qid}, pid(s) {missing}: the scores were "
                "computed on other hard negatives; rerun the score stage (dvc repro score)"
            )
        return self.scores[lo + pos]


def load_texts(
    collection: Path, queries_path: Path, qids: np.ndarray, pids: np.ndarray, what: str
) -> tuple[dict[int, str], dict[int, str]]:
    """Query and passage texts for the ids needed; missing ids raise a DataError."""
    need_p = set(np.unique(pids).tolist())
    need_q = set(np.unique(qids).tolist())
    passages = {p.pid: p.text for p in read_collection(collection) if p.pid in need_p}
    queries = {q.qid: q.text for q in read_queries(queries_path) if q.qid in need_q}
    for kind, need, have, src in (
        ("pid", need_p, passages, collection),
        ("qid", need_q, queries, queries_path),
    ):
        missing = sorted(need - have.keys())
        if missing:
            raise DataError(
                f"{what}: {len(missing)} {kind}(s) are not in {src}, e.g. {missing[:5]}; "
                "were the inputs built from another collection/query set?"
            )
    return queries, passages
