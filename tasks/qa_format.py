"""Readers and writers of MS MARCO QA v2.1 files, streaming and validated.

Two layouts hold the same rows (one per query):

- **column JSON** (the official ``train_v2.1.json``): one object per column, each mapping a
  row key ``"0".."n-1"`` to that row's value::

      {"answers": {"0": [...], ...}, "passages": {"0": [...]}, "query": {...},
       "query_id": {...}, "query_type": {...}, "wellFormedAnswers": {...}}

- **JSONL**: one object per line, ``{"answers": [...], "passages": [...], "query": ..., ...}``.

Columns arrive one after another in the column layout, so a row-wise reader cannot hold them
all. :class:`RowReader` has two ways through a column JSON file, with the same results:

- the **fast path** (:mod:`tasks.qa_compact`) for the compact layout of the released files:
  chunks of whole entries decoded and validated in C, the row keys and each value's length
  spilled, and the rows zipped by reading every column's entries again from the input (from a
  copy of them for a ``.gz`` input). Anything it does not recognise, it hands over:
- the **exact scanner** (:class:`_Scanner`, the stdlib decoder on one value at a time) reads
  any valid JSON layout, validates every value, spills each column to a temporary file (sorted
  when the keys are out of order) and zips the spills in ascending key order. Every data error
  is reported by this scanner, with the line, column and key.

Memory does not grow with the file; disk use is at most about the size of the uncompressed
input. Values travel between reader and writers as compact JSON text (``Row``), as the input
writes them (escapes such as ``\\/`` survive; equal as parsed JSON).

Eval files have no ``answers``/``wellFormedAnswers``; the well-formed subsets have ``answers``
and no ``wellFormedAnswers``. ``wellFormedAnswers`` holds a list of strings or, for "none",
the *string* ``"[]"`` (:data:`NO_WELL_FORMED`), as in the official data.
"""

from __future__ import annotations

import array
import codecs
import contextlib
import hashlib
import heapq
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from tasks.io import READ_ERRORS, DataError, disk_position, iter_lines, open_binary, write_text_atomic

log = logging.getLogger(__name__)

COLUMNS = ("answers", "passages", "query", "query_id", "query_type", "wellFormedAnswers")
REQUIRED = ("passages", "query", "query_id", "query_type")
NO_WELL_FORMED = "[]"
NO_WELL_FORMED_JSON = json.dumps(NO_WELL_FORMED)
MAX_VALUE_CHARS = 16 << 20  # one row's value; anything longer is a malformed file
CHUNK_BYTES = 1 << 20
SORT_RUN_LINES = 200_000
ZIP_BLOCK_BYTES = 1 << 16  # keys read at a time when zipping the fast path's columns

# One row: its integer key and {column: the value as compact JSON text}.
Row = tuple[int, dict[str, str]]
OnValue = Callable[[str, str, Any], None]  # (column, key, parsed value)

_DECODER = json.JSONDecoder()
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_NON_WS = re.compile(r"[^ \t\n\r]")
_SIMPLE_STRING = re.compile(r'"([^"\\\x00-\x1f]*)"')
_ROW_KEY = re.compile(r'[ \t\n\r]*"(0|[1-9][0-9]*)"[ \t\n\r]*:[ \t\n\r]*')


def layout_of(path: str | Path) -> str:
    """``"json"`` for ``*.json[.gz]``, ``"jsonl"`` for ``*.jsonl[.gz]``; else ValueError."""
    name = Path(path).name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    raise ValueError(f"{path}: cannot tell the layout; name it *.json[.gz] (columns) or *.jsonl[.gz] (rows)")


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_value(column: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``column`` value, or None when it is."""
    if column in ("query", "query_type"):
        return None if isinstance(value, str) else "must be a string"
    if column == "query_id":
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if column == "answers":
        return None if _is_str_list(value) else "must be a list of strings"
    if column == "wellFormedAnswers":
        if value == NO_WELL_FORMED or _is_str_list(value):
            return None
        return f'must be a list of strings or the string "{NO_WELL_FORMED}"'
    if column == "passages":
        if not isinstance(value, list):
            return "must be a list of passages"
        for p in value:  # the common case in one tight loop; details below
            if (
                type(p) is not dict
                or type(p.get("is_selected")) is not int
                or type(p.get("passage_text")) is not str
                or type(p.get("url")) is not str
            ):
                break
        else:
            return None
        for n, p in enumerate(value):
            if not isinstance(p, dict):
                return f"passage {n} must be an object"
            sel, text, url = p.get("is_selected"), p.get("passage_text"), p.get("url")
            if not isinstance(sel, int) or isinstance(sel, bool):
                return f"passage {n}: is_selected must be an integer"
            if not isinstance(text, str) or not isinstance(url, str):
                return f"passage {n}: passage_text and url must be strings"
        return None
    return f"unknown column (expected one of {', '.join(COLUMNS)})"


def check_columns(path: Path, columns: list[str] | set[str], where: str = "") -> None:
    unknown = sorted(set(columns) - set(COLUMNS))
    missing = [c for c in REQUIRED if c not in columns]
    if unknown or missing:
        parts = [f"unknown column(s) {unknown}"] if unknown else []
        parts += [f"missing required column(s) {missing}"] if missing else []
        raise DataError(f"{path}{where}: {'; '.join(parts)} (QA v2.1 columns: {', '.join(COLUMNS)})")


def _canonical_key(key: str) -> int | None:
    if key.isascii() and key.isdigit() and (key == "0" or key[0] != "0"):
        return int(key)
    return None


def format_row(row: dict[str, str]) -> str:
    """One JSONL line (with newline) from a row's JSON texts, columns in canonical order."""
    return "{" + ",".join(f'"{c}":{row[c]}' for c in COLUMNS if c in row) + "}\n"


# --------------------------------------------------------------------------- column JSON scanner
class _Scanner:
    """Incremental tokenizer of the two-level column object; values go to the stdlib decoder."""

    def __init__(self, path: Path, progress: tqdm | None = None) -> None:
        self.path = path
        self.column: str | None = None
        self.key: str | None = None
        self.fh = open_binary(path)
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.i, self.eof = "", 0, False
        self.offset, self.line = 0, 1  # characters and newlines before buf[0]
        self.bytes_read = 0
        self.where = "at the top level"
        self.bad_utf8 = ""
        self.progress = progress

    def close(self) -> None:
        self.fh.close()

    def error(self, msg: str, pos: int | None = None) -> DataError:
        pos = self.i if pos is None else pos
        pos = max(0, min(pos, len(self.buf)))
        line = self.line + self.buf.count("\n", 0, pos)
        where = self.where if self.key is None else f"column {self.column!r}, key {self.key!r}"
        return DataError(f"{self.path}: line {line}, character {self.offset + pos + 1}: {msg} ({where})")

    def fill(self) -> None:
        if self.bad_utf8:
            raise self.error(self.bad_utf8, len(self.buf))
        try:
            raw = self.fh.read(CHUNK_BYTES)
        except READ_ERRORS as exc:
            raise self.error(f"compressed stream is damaged or truncated ({exc})", len(self.buf)) from None
        pending = len(self.decoder.getstate()[0])
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:
            # Parse up to the bad byte first, so the error names the column and key it is in.
            byte = self.bytes_read - pending + exc.start
            self.bad_utf8 = f"invalid UTF-8 at byte {byte} ({exc.reason})"
            text = exc.object[: exc.start].decode("utf-8")
            raw = raw or b"\0"  # not the end of the file
        self.bytes_read += len(raw)
        if self.progress is not None:
            self.progress.update(disk_position(self.fh) - self.progress.n)
        self.eof = not raw
        if self.buf.find("\n", 0, self.i) != -1:  # memchr; released files are a single line
            self.line += self.buf.count("\n", 0, self.i)
        self.offset += self.i
        self.buf, self.i = self.buf[self.i :] + text, 0

    def peek(self) -> str | None:
        """Skip whitespace; the next character, or None at the end of the file."""
        while True:
            m = _NON_WS.search(self.buf, self.i)
            if m is not None:
                self.i = m.start()
                return self.buf[self.i]
            self.i = len(self.buf)
            if self.eof:
                return None
            self.fill()

    def expect(self, char: str, what: str) -> None:
        got = self.peek()
        if got != char:
            found = "the end of the file (truncated JSON?)" if got is None else repr(got)
            raise self.error(f"expected {what} but found {found}")
        self.i += 1

    def value(self) -> tuple[Any, str]:
        """The next JSON value, parsed, and its text as it stands in the file."""
        if (self.i >= len(self.buf) or self.buf[self.i] in " \t\n\r") and self.peek() is None:
            raise self.error("file ends where a value should start (truncated JSON?)")
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.i)
            except json.JSONDecodeError as exc:
                more = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 64
                if more and not self.eof:
                    self._grow()
                    continue
                if self.eof and more:
                    raise self.error(
                        f"file ends inside a value (truncated JSON?): {exc.msg}", exc.pos
                    ) from None
                raise self.error(f"invalid JSON: {exc.msg}", exc.pos) from None
            if end >= len(self.buf) and not self.eof:
                self._grow()
                continue
            text = self.buf[self.i : end]
            self.i = end
            return value, text

    def _grow(self) -> None:
        if len(self.buf) - self.i > MAX_VALUE_CHARS:
            raise self.error(f"a single value runs over {MAX_VALUE_CHARS} characters: malformed JSON")
        self.fill()

    def string(self, what: str) -> str:
        if self.peek() != '"':
            self.expect('"', what)
        m = _SIMPLE_STRING.match(self.buf, self.i)
        if m is not None:
            self.i = m.end()
            return m.group(1)
        value, _ = self.value()
        if not isinstance(value, str):
            raise self.error(f"expected {what}")
        return value

    def columns(self) -> Iterator[tuple[str, str | None, Any, str]]:
        """Yield ``(column, None, None, "")`` at each column start, then ``(column, key, value, text)``."""
        if self.peek() is None:
            raise self.error("empty file: expected a QA v2.1 JSON object of columns")
        self.expect("{", "'{' opening the object of columns")
        if self.peek() == "}":
            raise self.error("the object has no columns")
        while True:
            column = self.string("a column name")
            self.where = f"column {column!r}"
            self.expect(":", "':' after the column name")
            self.expect(
                "{", "'{': each column must map row keys to values (JSON lines must be named *.jsonl)"
            )
            yield column, None, None, ""
            if self.peek() == "}":
                self.i += 1
            else:
                while True:
                    m = _ROW_KEY.match(self.buf, self.i)
                    if m is not None and m.end() < len(self.buf):  # fast path: "123":
                        key = m.group(1)
                        self.i = m.end()
                        self.column, self.key = column, key
                    else:
                        key = self.string("a row key")
                        self.column, self.key = column, key
                        self.expect(":", "':' after the row key")
                    value, text = self.value()
                    yield column, key, value, text
                    i = self.i
                    sep = self.buf[i] if i < len(self.buf) else self.peek()
                    if sep not in (",", "}"):
                        sep = self.peek()
                    self.i += 1
                    if sep == "}":
                        break
                    if sep != ",":
                        self.i -= 1
                        self.expect(",", "',' or '}' after a row value")
            self.where, self.key = f"after column {column!r}", None
            sep = self.peek()
            self.i += 1
            if sep == "}":
                break
            if sep != ",":
                self.i -= 1
                self.expect(",", "',' or '}' after a column")
        if self.peek() is not None:
            raise self.error("unexpected data after the top-level object")


# --------------------------------------------------------------------------- readers
def _sort_spill(path: Path, column: str, src: Path) -> None:
    """Sort one spill file by integer key (external merge sort, bounded memory)."""
    runs: list[Path] = []
    with open(path, encoding="utf-8", newline="\n") as fh:
        while True:
            lines = [ln for _, ln in zip(range(SORT_RUN_LINES), fh, strict=False)]
            if not lines:
                break
            lines.sort(key=lambda ln: int(ln[: ln.index("\t")]))
            run = path.with_name(f"{path.name}.run{len(runs)}")
            run.write_text("".join(lines), encoding="utf-8")
            runs.append(run)
    with contextlib.ExitStack() as stack, open(path, "w", encoding="utf-8", newline="\n") as out:
        files = [stack.enter_context(open(r, encoding="utf-8", newline="\n")) for r in runs]
        prev = None
        for ln in heapq.merge(*files, key=lambda ln: int(ln[: ln.index("\t")])):
            key = ln[: ln.index("\t")]
            if key == prev:
                raise DataError(f"{src}: column {column!r} has key {key!r} twice")
            prev = key
            out.write(ln)
    for r in runs:
        r.unlink()


class RowReader:
    """Rows of a QA v2.1 file (column JSON or JSONL), validated, in key order.

    Use as a context manager; ``columns`` is known on entry, iteration yields :data:`Row`.
    ``on_value(column, key, value)`` sees every parsed value once (for statistics).
    ``work_dir`` receives the column spills of a column JSON input (removed on exit).
    A value that sits on one line in a column JSON file is passed on as the file writes it
    (escapes such as ``\\/`` survive; equal as parsed JSON); other values are re-encoded.
    ``keep_values=False`` validates everything but yields rows of empty texts (statistics).
    When the fast path gives up part-way, ``on_restart()`` is called before the exact scanner
    starts over, so that whoever counts ``on_value`` calls can forget them. Passages reach
    ``on_value`` as :class:`tasks.qa_compact.Passage` objects from the fast path and as dicts
    from the exact scanner (:func:`tasks.qa_compact.passage_texts` reads both).
    ``compact=False`` skips the fast path.
    """

    def __init__(
        self,
        path: str | Path,
        work_dir: str | Path,
        on_value: OnValue | None = None,
        keep_values: bool = True,
        on_restart: Callable[[], None] | None = None,
        compact: bool = True,
    ) -> None:
        self.path = Path(path)
        self.keep_values = keep_values
        self.layout = layout_of(self.path)
        self.work_dir = Path(work_dir)
        self.on_value = on_value
        self.on_restart = on_restart
        self.compact = compact
        self.columns: list[str] = []
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._spills: dict[str, Path] = {}
        self._keys: Path | None = None  # set by the fast path: its spills have no keys
        self._sources: dict[str, tuple[Path, int]] = {}  # fast path: where each column's entries are
        self._first: Row | None = None
        self._lines: Iterator[tuple[int, str]] | None = None

    def __enter__(self) -> RowReader:
        try:
            if self.layout == "json":
                self._spill()
            else:
                self._lines = iter_lines(self.path)
                self._first = self._next_jsonl()
                if self._first is None:
                    raise DataError(f"{self.path}: empty file: expected one JSON object per line")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def __iter__(self) -> Iterator[Row]:
        if self.layout == "json" and self._keys is not None:
            order = [c for c in COLUMNS if c in self._spills]
            for bkey, btexts in self._zip_compact():
                yield int(bkey), {c: t.decode() for c, t in zip(order, btexts, strict=True)}
            return
        if self.layout == "json":
            order = [c for c in COLUMNS if c in self._spills]
            for key, texts in self._zip():
                yield int(key), dict(zip(order, texts, strict=True))
            return
        row = self._first
        while row is not None:
            yield row
            row = self._next_jsonl()

    # ---- column JSON
    def _spill(self) -> None:
        size = self.path.stat().st_size
        bar = self._stack.enter_context(
            tqdm(total=size, unit="B", unit_scale=True, desc=f"read {self.path.name}", mininterval=2)
        )
        if self.compact:
            from tasks.qa_compact import NotCompact  # it imports this module's schema constants

            try:
                self._spill_compact(bar)
                return
            except NotCompact as exc:
                log.info("%s: %s; reading it with the exact scanner", self.path, exc)
            self.columns, self._spills, self._sources = [], {}, {}
            if self.on_restart is not None:
                self.on_restart()
            bar.reset()
        self._spill_exact(bar)

    def _scratch(self, name: str) -> Path:
        """A spill file in ``work_dir``, removed on exit."""
        path = self.work_dir / name
        self._stack.callback(path.unlink, missing_ok=True)
        return path

    @property
    def fast(self) -> bool:
        """Whether the column JSON input was read by the fast path (:mod:`tasks.qa_compact`)."""
        return self._keys is not None

    def _spill_compact(self, bar: tqdm) -> None:
        """The fast path (:mod:`tasks.qa_compact`); raises NotCompact, having written only spills.

        Spills: ``keys`` (the row keys, a line each), and per column the byte length of each
        value (``<column>.lengths``, uint32). The values themselves are read again from the
        input when the rows are zipped; a compressed input has each column's entries copied
        to ``<column>.spill`` instead. The other columns' key sequences are checked by digest:
        any difference sends the file to the exact scanner, whose error names the key.
        """
        from tasks.qa_compact import NotCompact, read_chunks

        compressed = self.path.suffix == ".gz"
        digests: dict[str, bytes] = {}
        sources: dict[str, tuple[Path, int]] = {}
        with contextlib.ExitStack() as stack:
            fh = stack.enter_context(open_binary(self.path))
            keys_out = stack.enter_context(open(self._scratch("keys.spill"), "wb"))
            lengths_out: IO[bytes] | None = None
            body_out: IO[bytes] | None = None
            digest = hashlib.blake2b(digest_size=16)
            try:
                for chunk in read_chunks(fh, progress=lambda: bar.update(disk_position(fh) - bar.n)):
                    column = chunk.column
                    if not chunk.keys:  # a column starts
                        if self.columns:  # (read_chunks refuses a duplicate column)
                            digests[self.columns[-1]] = digest.digest()
                        self.columns.append(column)
                        self._spills[column] = self._scratch(f"{column}.lengths")
                        lengths_out = stack.enter_context(open(self._spills[column], "wb"))
                        if compressed and self.keep_values:
                            sources[column] = (self._scratch(f"{column}.spill"), 0)
                            body_out = stack.enter_context(open(sources[column][0], "wb"))
                        else:
                            sources[column] = (self.path, chunk.offset)
                        digest = hashlib.blake2b(digest_size=16)
                        continue
                    if self.on_value is not None:
                        on_value = self.on_value
                        for key, value in zip(chunk.keys, chunk.values, strict=True):
                            on_value(column, key, value)
                    joined = "\n".join(chunk.keys).encode() + b"\n"
                    digest.update(joined)
                    if len(self.columns) == 1:
                        keys_out.write(joined)
                    assert lengths_out is not None
                    lengths_out.write(array.array("I", chunk.lengths).tobytes())
                    if body_out is not None:
                        body_out.write(chunk.body)
                        body_out.write(b",")
            except READ_ERRORS as exc:
                raise NotCompact(f"compressed stream: {exc}") from None
            if self.columns:
                digests[self.columns[-1]] = digest.digest()
        if len(set(digests.values())) > 1:
            raise NotCompact("the columns do not hold the same row keys")
        check_columns(self.path, self.columns)
        self._keys, self._sources = self.work_dir / "keys.spill", sources

    def _spill_exact(self, bar: tqdm) -> None:
        scanner = _Scanner(self.path, progress=bar)
        self._stack.callback(scanner.close)
        out: IO[str] | None = None
        unsorted: set[str] = set()
        prev = -1
        column = ""
        for column, key, value, text in scanner.columns():
            if key is None:
                if column in self._spills:
                    raise scanner.error("duplicate column")
                if column not in COLUMNS:
                    raise scanner.error(f"unknown column (QA v2.1 columns: {', '.join(COLUMNS)})")
                if out is not None:
                    out.close()
                self._spills[column] = self._scratch(f"{column}.spill")
                out = self._stack.enter_context(
                    open(self._spills[column], "w", encoding="utf-8", newline="\n")
                )
                self.columns.append(column)
                prev = -1
                continue
            k = _canonical_key(key)
            if k is None:
                raise scanner.error('row keys must be non-negative integers written as strings, e.g. "0"')
            if k <= prev:
                if k == prev:
                    raise scanner.error("duplicate row key")
                unsorted.add(column)
            prev = k
            problem = check_value(column, value)
            if problem is not None:
                raise scanner.error(f"{column} {problem}")
            if self.on_value is not None:
                self.on_value(column, key, value)
            assert out is not None
            if not self.keep_values:
                text = ""
            elif value == NO_WELL_FORMED:  # the marker however it was escaped, so filters can compare text
                text = NO_WELL_FORMED_JSON
            elif "\n" in text or "\r" in text:  # spread over lines: re-encode compactly
                text = _encode(value)
            out.write(f"{key}\t{text}\n")
        if out is not None:
            out.close()
        check_columns(self.path, self.columns)
        for column in sorted(unsorted):
            _sort_spill(self._spills[column], column, self.path)

    def _zip_compact(self) -> Iterator[tuple[bytes, list[bytes]]]:
        """``(key, [value text per column in COLUMNS order])`` from the fast path's spills.

        Each column's entries are read in sequence from its source: skip ``"<key>":``, take
        the value's length in bytes, skip the comma.
        """
        assert self._keys is not None
        order = [c for c in COLUMNS if c in self._spills]
        with contextlib.ExitStack() as stack:
            keys = stack.enter_context(open(self._keys, "rb"))
            if not self.keep_values:
                for key in keys:
                    self.rows += 1
                    yield key[:-1], [b""] * len(order)
                return
            sources, lengths = [], []
            for c in order:
                path, offset = self._sources[c]
                src = stack.enter_context(open(path, "rb", buffering=CHUNK_BYTES))
                src.seek(offset)
                sources.append(src.read)
                lengths.append(stack.enter_context(open(self._spills[c], "rb")))
            while True:
                block = keys.readlines(ZIP_BLOCK_BYTES)
                if not block:
                    return
                sizes = [array.array("I", fh.read(4 * len(block))) for fh in lengths]
                for n, key in enumerate(block):
                    skip = len(key) + 2  # '"' + key + '":', less the newline
                    texts = []
                    for read, size in zip(sources, sizes, strict=True):
                        length = size[n]
                        texts.append(read(skip + length + 1)[skip : skip + length])
                    self.rows += 1
                    yield key[:-1], texts

    def _zip(self) -> Iterator[tuple[str, list[str]]]:
        """``(key, [value text per column of self.columns in COLUMNS order])``, checking keys."""
        order = [c for c in COLUMNS if c in self._spills]
        with contextlib.ExitStack() as stack:
            files = [
                stack.enter_context(open(self._spills[c], encoding="utf-8", newline="\n")) for c in order
            ]
            first = files[0]
            others = list(zip(order[1:], files[1:], strict=True))
            for line in first:
                tab = line.index("\t")
                key = line[:tab]
                texts = [line[tab + 1 : -1]]
                for column, fh in others:
                    other = fh.readline()
                    otab = other.find("\t")
                    if other[:otab] != key:
                        self._mismatch(order[0], key, column, other[:otab] if other else None)
                    texts.append(other[otab + 1 : -1])
                self.rows += 1
                yield key, texts
            for column, fh in others:
                other = fh.readline()
                if other:
                    self._mismatch(order[0], None, column, other[: other.index("\t")])

    def lines(self) -> Iterator[bytes]:
        """The rows as JSONL lines (UTF-8, with newline), columns in canonical order: ``tojsonl``."""
        if self.layout == "jsonl":
            for _, row in self:
                yield format_row(row).encode()
            return
        order = [c for c in COLUMNS if c in self._spills]
        heads = [f'{"{" if n == 0 else ","}"{c}":' for n, c in enumerate(order)]
        if self._keys is not None:
            bheads = [h.encode() for h in heads]
            for _, btexts in self._zip_compact():
                yield b"".join([part for pair in zip(bheads, btexts, strict=True) for part in pair]) + b"}\n"
            return
        for _, texts in self._zip():
            line = "".join([part for pair in zip(heads, texts, strict=True) for part in pair]) + "}\n"
            yield line.encode()

    def _mismatch(self, a: str, key_a: str | None, b: str, key_b: str | None) -> None:
        if key_b is None or (key_a is not None and int(key_a) < int(key_b)):
            key, has, lacks = key_a, a, b
        else:
            key, has, lacks = key_b, b, a
        raise DataError(
            f"{self.path}: row key {key!r} is in column {has!r} but not in column {lacks!r}: "
            "every column must hold the same row keys"
        )

    # ---- JSONL
    def _next_jsonl(self) -> Row | None:
        assert self._lines is not None
        for lineno, line in self._lines:
            where = f"{self.path}:{lineno}"
            if not line.strip():
                raise DataError(f"{where}: blank line; expected one JSON object per line")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON at character {exc.pos + 1}: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, found {type(obj).__name__}")
            if not self.columns:
                check_columns(self.path, list(obj), where=f":{lineno}")
                self.columns = [c for c in COLUMNS if c in obj]
            elif len(obj) != len(self.columns) or any(c not in obj for c in self.columns):
                raise DataError(
                    f"{where}: columns {sorted(obj)} differ from the first line's {self.columns}: "
                    "every row must have the same columns"
                )
            key = self.rows
            row = {}
            for column in self.columns:
                value = obj[column]
                problem = check_value(column, value)
                if problem is not None:
                    raise DataError(f"{where}: {column} {problem}")
                if self.on_value is not None:
                    self.on_value(column, str(key), value)
                row[column] = _encode(value)
            self.rows += 1
            return key, row
        return None


# --------------------------------------------------------------------------- writers
class ColumnJsonWriter:
    """Write rows in the official column layout, atomically, through per-column spills.

    Rows must all have the same columns. Keys are written as given (the well-formed subset
    keeps the original keys, like the official ``converttowellformed.py``).
    """

    def __init__(self, final: str | Path, work_dir: str | Path) -> None:
        self.final = Path(final)
        self.work_dir = Path(work_dir)
        self.columns: list[str] | None = None
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._files: dict[str, IO[str]] = {}

    def __enter__(self) -> ColumnJsonWriter:
        return self

    def set_columns(self, columns: list[str]) -> None:
        """The columns to write (named even when no row arrives); default: the first row's."""
        if self.columns is None:
            self.columns = [c for c in COLUMNS if c in columns]

    def add(self, key: int, row: dict[str, str]) -> None:
        if self.columns is None:
            self.set_columns(list(row))
        assert self.columns is not None
        if not self._files:
            for c in self.columns:
                path = self.work_dir / f"out.{self.final.name}.{c}.spill"
                self._files[c] = self._stack.enter_context(open(path, "w+", encoding="utf-8", newline="\n"))
        if len(row) != len(self.columns) or any(c not in row for c in self.columns):
            raise DataError(f"{self.final}: row {key} has columns {sorted(row)}, expected {self.columns}")
        sep = "," if self.rows else ""
        for c, fh in self._files.items():
            fh.write(f'{sep}"{key}":{row[c]}')
        self.rows += 1

    def __exit__(self, exc_type: object, *exc: object) -> None:
        with self._stack:
            if exc_type is not None:
                return
            with write_text_atomic(self.final) as out:
                out.write("{")
                for n, c in enumerate(self.columns or []):
                    out.write(("," if n else "") + f'"{c}":{{')
                    fh = self._files.get(c)
                    if fh is not None:
                        fh.seek(0)
                        shutil.copyfileobj(fh, out, CHUNK_BYTES)
                    out.write("}")
                out.write("}\n")


class JsonlWriter:
    """Write rows as JSON lines, atomically (gzip with mtime 0 for ``*.gz``)."""

    def __init__(self, final: str | Path) -> None:
        self.final = Path(final)
        self.rows = 0
        self._cm = write_text_atomic(self.final)

    def __enter__(self) -> JsonlWriter:
        self._fh = self._cm.__enter__()
        return self

    def add(self, key: int, row: dict[str, str]) -> None:
        self._fh.write(format_row(row))
        self.rows += 1

    def set_columns(self, columns: list[str]) -> None:
        """Nothing to do: a JSONL file names its columns on each line."""

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def open_writer(final: str | Path, work_dir: str | Path) -> ColumnJsonWriter | JsonlWriter:
    """A writer for ``final``'s layout (by its name: ``*.json[.gz]`` or ``*.jsonl[.gz]``)."""
    if layout_of(final) == "json":
        return ColumnJsonWriter(final, work_dir)
    return JsonlWriter(final)
