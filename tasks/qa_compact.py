"""Fast reader for QA v2.1 column JSON in the compact layout of the released files.

The released ``*_v2.1.json`` files are written by pandas' ``to_json``: one line, no whitespace,
``{"answers":{"0":[...],"1":[...],...},"passages":{...},...}``. This module reads that layout
in chunks of whole row entries and hands each chunk to ``msgspec`` twice, once into raw value
texts (passed on as the file writes them) and once into typed values (the validation), both
in C. Everything it does not recognise, it refuses with :class:`NotCompact`; the caller then
reads the file with the exact scanner of :mod:`tasks.qa_format`, which accepts any valid JSON
and names the line, column and key of what is wrong. This reader therefore never reports a
data error itself and never accepts what the exact scanner would reject.

Why a chunk is exactly a run of whole entries: a chunk ends where ``,"<digits>":`` (the next
entry) or ``},"<column>":{`` (the next column) follows. Such bytes can also stand inside a
string or a nested object, but then the chunk ``{`` + text + ``}`` is not valid JSON (it ends
inside a string or with a bracket open) and the decode fails: NotCompact, never a wrong row.
A decoded chunk is checked against its length: the bytes must be exactly the entries
``"key":value`` joined by commas, which rules out whitespace between entries and duplicate keys
(a JSON object decoder keeps only the last of duplicates).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import IO, Any

import msgspec

from tasks.qa_format import COLUMNS, NO_WELL_FORMED, NO_WELL_FORMED_JSON

CHUNK_BYTES = 256 << 10  # read at a time; peak memory ~ one chunk decoded (grows for a longer value)
MAX_VALUE_BYTES = 64 << 20  # one entry longer than this is not the released layout


class NotCompact(Exception):
    """The input is not (entirely) in the compact released layout: read it with the exact scanner."""


class Passage(msgspec.Struct, forbid_unknown_fields=True):
    is_selected: int
    passage_text: str
    url: str


# Each column as a whole: row key -> the value's type.
_TYPES: dict[str, Any] = {
    "answers": dict[str, list[str]],
    "passages": dict[str, list[Passage]],
    "query": dict[str, str],
    "query_id": dict[str, int],
    "query_type": dict[str, str],
    "wellFormedAnswers": dict[str, list[str] | str],
}
_RAW = msgspec.json.Decoder(dict[str, msgspec.Raw])
_TYPED = {c: msgspec.json.Decoder(t) for c, t in _TYPES.items()}
_NAMES = b"|".join(c.encode() for c in COLUMNS)
_FIRST = re.compile(rb'\{"(' + _NAMES + rb')":\{')
_NEXT_COLUMN = re.compile(rb'\},"(' + _NAMES + rb')":\{')
_ENTRY = re.compile(rb',"(?:0|[1-9][0-9]*)":')
_CANONICAL = re.compile(r"0|[1-9][0-9]*")
_MARKER = NO_WELL_FORMED_JSON.encode()


def passage_texts(value: list[Any]) -> list[str]:
    """The ``passage_text`` of each passage, parsed by either reader (dicts or :class:`Passage`)."""
    return [p.passage_text if type(p) is Passage else p["passage_text"] for p in value]


class Chunk:
    """Whole row entries of one column.

    ``body`` is the entries' bytes as in the file (``"k":v,"k":v``), ``keys`` the row keys,
    ``lengths`` the byte length of each value text, ``values`` the parsed values. A chunk that
    starts a column has no entries and ``offset`` = where the column's entries start in the
    (uncompressed) stream; the chunks of one column follow each other with one comma between.
    """

    __slots__ = ("column", "offset", "body", "keys", "lengths", "values")

    def __init__(
        self,
        column: str,
        offset: int = 0,
        body: bytes = b"",
        keys: list[str] | None = None,
        lengths: list[int] | None = None,
        values: list[Any] | None = None,
    ) -> None:
        self.column, self.offset, self.body = column, offset, body
        self.keys, self.lengths, self.values = keys or [], lengths or [], values or []


def _decode(column: str, body: bytes, last_key: int) -> Chunk:
    """The entries of ``body`` (``"k":v,"k":v``), validated; NotCompact when anything is off."""
    if b"\n" in body or b"\r" in body:  # outside strings (JSON escapes them inside): whitespace
        raise NotCompact(f"column {column!r}: spread over lines")
    wrapped = b"{" + body + b"}"
    try:
        raw = _RAW.decode(wrapped)
        typed = _TYPED[column].decode(wrapped)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise NotCompact(f"column {column!r}: {exc}") from None
    keys = list(raw)
    lengths = list(map(len, raw.values()))
    # Exact length: no whitespace between entries, no duplicate keys, keys without escapes.
    if len(body) != sum(map(len, keys)) + sum(lengths) + 4 * len(keys) - 1:
        raise NotCompact(f"column {column!r}: not in the compact layout")
    if keys:
        first = keys[0]
        if _CANONICAL.fullmatch(first) is None or int(first) <= last_key:
            raise NotCompact(f"column {column!r}: row keys not canonical and ascending")
        start = int(first)
        if keys != list(map(str, range(start, start + len(keys)))):  # gaps: check one by one
            prev = last_key
            for key in keys:
                if _CANONICAL.fullmatch(key) is None or int(key) <= prev:
                    raise NotCompact(f"column {column!r}: row keys not canonical and ascending")
                prev = int(key)
    values = list(typed.values())
    if column == "wellFormedAnswers":
        for value, text in zip(values, raw.values(), strict=True):
            # The marker must be written plainly: readers compare the text, not the value.
            if type(value) is str and (value != NO_WELL_FORMED or bytes(text) != _MARKER):
                raise NotCompact("wellFormedAnswers: a string other than the plain marker")
    return Chunk(column, body=body, keys=keys, lengths=lengths, values=values)


def read_chunks(fh: IO[bytes], progress: Callable[[], None] | None = None) -> Iterator[Chunk]:
    """Chunks of whole entries, column after column, in file order.

    ``progress()`` is called after each read. Each column starts with a chunk without entries
    (so empty columns are seen). Raises :class:`NotCompact` at the first thing outside the
    compact layout or not valid.
    """
    chunk_bytes = CHUNK_BYTES
    buf = b""
    pos = 0
    eof = False
    consumed = 0  # bytes of the stream before buf[0]

    def more() -> None:
        nonlocal buf, pos, eof, consumed
        data = fh.read(chunk_bytes)
        if progress is not None:
            progress()
        eof = not data
        consumed += pos
        buf, pos = buf[pos:] + data, 0

    more()
    m = _FIRST.match(buf)
    if m is None:
        raise NotCompact("the file does not start with a column object")
    column, pos = m.group(1).decode(), m.end()
    seen = {column}
    while True:  # one column
        yield Chunk(column, offset=consumed + pos)
        last_key = -1
        while True:
            if not eof and len(buf) - pos < chunk_bytes:
                more()
            nxt = _next_column(buf, pos)
            if nxt is not None:
                body, pos = buf[pos : nxt.start()], nxt.end()
            elif eof:
                body = buf[pos:].rstrip(b" \t\r\n")
                if not body.endswith(b"}}"):
                    raise NotCompact("the file does not end with '}}'")
                body, pos = body[:-2], len(buf)
            else:
                cut = _last_entry(buf, pos)
                if cut is None:  # one value longer than the buffer
                    if len(buf) - pos > MAX_VALUE_BYTES:
                        raise NotCompact("a single value is too long")
                    chunk_bytes *= 2
                    continue
                body, pos = buf[pos:cut], cut + 1
            if body:
                chunk = _decode(column, body, last_key)
                if chunk.keys:
                    last_key = int(chunk.keys[-1])
                yield chunk
            if nxt is not None:
                column = nxt.group(1).decode()
                if column in seen:
                    raise NotCompact(f"duplicate column {column!r}")
                seen.add(column)
                break
            if pos >= len(buf) and eof:
                return


def _next_column(buf: bytes, start: int) -> re.Match[bytes] | None:
    """The first ``},"<column>":{`` in ``buf[start:]`` (a fast search for ``},"``, then the regex)."""
    while True:
        i = buf.find(b'},"', start)
        if i < 0:
            return None
        m = _NEXT_COLUMN.match(buf, i)
        if m is not None:
            return m
        start = i + 1


def _last_entry(buf: bytes, start: int) -> int | None:
    """Offset of the last ``,"<digits>":`` in ``buf[start:]`` (the comma), or None."""
    end = len(buf)
    while True:
        i = buf.rfind(b',"', start, end)
        if i <= start:
            return None
        if _ENTRY.match(buf, i) is not None:
            return i
        end = i
