"""Stage ``qa@<split>``: MS MARCO QA v2.1 conversions, well-formed subsets and statistics.

Streaming replacements of the official utilities (microsoft/MSMARCO-Question-Answering,
``Utils/``), with their semantics and without loading the file:

- ``tojsonl``: column JSON -> one JSON object per line, rows in key order ``"0".."n-1"``.
- ``tojson``: rows -> the official column layout (keys renumbered ``"0".."n-1"`` in row order).
- ``wellformed`` (``converttowellformed.py``): keep the rows whose ``wellFormedAnswers`` is not
  the string ``"[]"``, with ``answers`` replaced by ``wellFormedAnswers``; original keys kept.
- ``stats`` (``exploredata.py`` + ``get_stats_about_length.py``): query, judgement and
  well-formed counts, distribution by ``query_type`` and by first word (the official yes/no
  rule), and word-count histograms of the distinct queries, answers, well-formed answers and
  passages; written as ``<name>.stats.json``, ``<name>.lengths.csv`` (DVC plots) and PNGs.
- ``pipeline --split S``: all of it in one pass over ``inputs.qa_<S>`` into ``paths.qa/<S>/``.

Faithful quirks of the official scripts, kept for parity: a query is "yesno" when its first
space-separated token (lower-cased) is one of 13 auxiliaries and no token is exactly "or";
``query_type`` labels other than the five official ones are not counted (reported apart);
the well-formed length histogram iterates over ``wellFormedAnswers`` as the official script
does, so the ``"[]"`` marker adds the distinct one-word strings "[" and "]" when present.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import logging
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from tasks.io import DataError, scratch_dir, write_bytes_atomic, write_json, write_text_atomic
from tasks.qa_compact import passage_texts
from tasks.qa_format import (
    NO_WELL_FORMED,
    NO_WELL_FORMED_JSON,
    JsonlWriter,
    RowReader,
    layout_of,
    open_writer,
)

if TYPE_CHECKING:  # numpy, pydantic and the config load only where needed: short CLI start-up
    import numpy as np

    from tasks.config import Convert

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent

QUERY_TYPES = ("LOCATION", "DESCRIPTION", "NUMERIC", "ENTITY", "PERSON")
FIRST_WORDS = ("yesno", "what", "who", "which", "where", "when", "why", "how", "other")
YES_NO_HEADS = frozenset(
    ["is", "can", "does", "are", "do", "should", "did", "will", "was", "has", "could", "were", "would"]
)
LENGTH_FIELDS = ("queries", "answers", "well_formed_answers", "passages")
WELL_FORMED_COLUMNS = ["answers", "passages", "query", "query_id", "query_type"]


# --------------------------------------------------------------------------- conversions
def _work_dir(near: Path | None, tmp_dir: str | Path | None) -> contextlib.AbstractContextManager[Path]:
    """Scratch space for spills: ``tmp_dir``, else the directory of ``near``, else the system's.

    Named ``.qa-convert-<output>.<pid>.scratch`` (:func:`tasks.io.scratch_dir`): the next run
    for the same output removes the spills of a killed one (gigabytes for the full QA set).
    """
    root = Path(tmp_dir) if tmp_dir else near.parent if near is not None else Path(tempfile.gettempdir())
    return scratch_dir(root, f"qa-convert-{near.name if near is not None else 'stats'}")


def _rows(reader: RowReader, what: str) -> tqdm:
    return tqdm(reader, total=None, unit=" rows", desc=what, mininterval=2)


def _require_layout(path: Path, layout: str, command: str) -> None:
    if layout_of(path) != layout:
        raise ValueError(f"{command}: output {path} must be named *.{layout} or *.{layout}.gz")


def tojsonl(src: str | Path, dst: str | Path, tmp_dir: str | Path | None = None) -> int:
    """Column JSON (or JSONL) ``src`` -> JSONL ``dst``; returns the number of rows."""
    src, dst = Path(src), Path(dst)
    _require_layout(dst, "jsonl", "tojsonl")
    with _work_dir(dst, tmp_dir) as tmp, RowReader(src, tmp) as reader, write_bytes_atomic(dst) as out:
        rows = 0
        for line in tqdm(reader.lines(), unit=" rows", desc="tojsonl", mininterval=2):
            out.write(line)
            rows += 1
    log.info("%s: %d rows -> %s", src, rows, dst)
    return rows


def tojson(src: str | Path, dst: str | Path, tmp_dir: str | Path | None = None) -> int:
    """JSONL (or column JSON) ``src`` -> official column layout ``dst``, keys ``"0".."n-1"``."""
    src, dst = Path(src), Path(dst)
    _require_layout(dst, "json", "tojson")
    with _work_dir(dst, tmp_dir) as tmp, RowReader(src, tmp) as reader, open_writer(dst, tmp) as out:
        out.set_columns(reader.columns)
        for n, (_, row) in enumerate(_rows(reader, "tojson")):
            out.add(n, row)
    log.info("%s: %d rows -> %s", src, out.rows, dst)
    return out.rows


def well_formed_row(row: dict[str, str]) -> dict[str, str] | None:
    """The row of the well-formed subset (``answers`` := ``wellFormedAnswers``), or None."""
    wfa = row["wellFormedAnswers"]
    if wfa == NO_WELL_FORMED_JSON:
        return None
    kept = {c: v for c, v in row.items() if c not in ("answers", "wellFormedAnswers")}
    kept["answers"] = wfa
    return kept


def _need_well_formed(reader: RowReader) -> None:
    if "wellFormedAnswers" not in reader.columns:
        raise DataError(
            f"{reader.path}: no 'wellFormedAnswers' column (columns: {', '.join(reader.columns)}); "
            "eval files and well-formed subsets have none to filter on"
        )


def wellformed(src: str | Path, dst: str | Path, tmp_dir: str | Path | None = None) -> int:
    """Rows of ``src`` that have well-formed answers, as ``converttowellformed.py`` keeps them.

    ``dst`` may be column JSON (original keys kept, as the official script does) or JSONL.
    Returns the number of rows kept.
    """
    src, dst = Path(src), Path(dst)
    with _work_dir(dst, tmp_dir) as tmp, RowReader(src, tmp) as reader, open_writer(dst, tmp) as out:
        _need_well_formed(reader)
        out.set_columns(WELL_FORMED_COLUMNS)
        for key, row in _rows(reader, "wellformed"):
            kept = well_formed_row(row)
            if kept is not None:
                out.add(key, kept)
    log.info("%s: kept %d of %d rows with well-formed answers -> %s", src, out.rows, reader.rows, dst)
    return out.rows


# --------------------------------------------------------------------------- statistics
class DistinctLengths:
    """Word-count histogram over the *distinct* strings added, in bounded memory.

    ``get_stats_about_length.py`` keys a dict by the text; here each text becomes a 64-bit
    BLAKE2b digest plus its word count, spilled in batches to 64 bucket files by the digest's
    top bits, and each bucket is de-duplicated on its own. A digest collision (odds ~n^2/2^65,
    about 1e-6 for 10 million passages) would merge two texts.
    """

    BUCKETS = 64

    def __init__(self, work_dir: Path, name: str, batch: int = 1 << 18) -> None:
        import numpy as np

        self.dtype = np.dtype([("h", "<u8"), ("n", "<u4")])
        self.work_dir, self.name, self.batch = work_dir, name, batch
        self.hashes: list[bytes] = []
        self.lengths: list[int] = []
        self.spilled = False

    def add(self, text: str) -> None:
        self.add_many((text,))

    def add_many(self, texts: Iterable[str]) -> None:
        hashes, lengths, blake2b = self.hashes, self.lengths, hashlib.blake2b
        for text in texts:
            hashes.append(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest())
            lengths.append(len(text.split()))
        if len(hashes) >= self.batch:
            self._flush()

    def _records(self) -> np.ndarray:
        import numpy as np

        rec = np.empty(len(self.hashes), dtype=self.dtype)
        rec["h"] = np.frombuffer(b"".join(self.hashes), dtype="<u8")
        rec["n"] = self.lengths
        self.hashes, self.lengths = [], []
        return rec

    def discard(self) -> None:
        """Drop what was added, spills included."""
        self.hashes, self.lengths, self.spilled = [], [], False
        for b in range(self.BUCKETS):
            self._bucket_path(b).unlink(missing_ok=True)

    def _bucket_path(self, b: int) -> Path:
        return self.work_dir / f"distinct.{self.name}.{b:02d}"

    def _flush(self) -> None:
        import numpy as np

        rec = self._records()
        bucket = (rec["h"] >> np.uint64(58)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        rec, bucket = rec[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(self.BUCKETS + 1))
        for b in range(self.BUCKETS):
            if bounds[b] < bounds[b + 1]:
                with open(self._bucket_path(b), "ab") as fh:
                    rec[bounds[b] : bounds[b + 1]].tofile(fh)
        self.spilled = True

    def histogram(self) -> dict[int, int]:
        """``{word count: number of distinct texts}``."""
        import numpy as np

        total = np.zeros(0, dtype=np.int64)
        parts: Iterator[np.ndarray]
        if self.spilled:
            self._flush()
            parts = (
                np.fromfile(p, dtype=self.dtype)
                for p in map(self._bucket_path, range(self.BUCKETS))
                if p.exists()
            )
        else:
            parts = iter([self._records()])
        for rec in parts:
            _, first = np.unique(rec["h"], return_index=True)
            counts = np.bincount(rec["n"][first])
            if len(counts) > len(total):
                total = np.pad(total, (0, len(counts) - len(total)))
            total[: len(counts)] += counts
        return {n: int(c) for n, c in enumerate(total) if c}


def first_word(query: str) -> str:
    """The ``exploredata.py`` wording label of a query (``"yesno"``, ``"what"``, ..., ``"other"``)."""
    lowered = query.lower()
    tokens = lowered.split(" ")
    if tokens[0] in YES_NO_HEADS and "or" not in tokens:
        return "yesno"
    words = lowered.split()
    head = words[0] if words else ""
    return head if head in FIRST_WORDS else "other"


class QaStats:
    """Accumulates the figures of ``exploredata.py`` and ``get_stats_about_length.py``.

    Every figure is column-local, so ``add`` can run while a column JSON file streams by.
    ``public`` (``exploredata.py -p``) leaves answers and well-formed answers out of the result;
    so does a file without those columns.
    """

    def __init__(self, work_dir: Path, public: bool = False) -> None:
        self.work_dir = work_dir
        self.public = public
        self.lengths: dict[str, DistinctLengths] = {}
        self.reset()

    def reset(self) -> None:
        """Forget everything added (the reader starts over with its exact scanner)."""
        for old in self.lengths.values():
            old.discard()
        self.queries = 0
        self.empty_queries = 0
        self.words: Counter[str] = Counter()
        self.types: Counter[str] = Counter()
        self.judgements = self.multiple_answers = 0
        self.wfa = self.wfa_judgements = self.multiple_wfa = 0
        self.lengths = {f: DistinctLengths(self.work_dir, f) for f in LENGTH_FIELDS}

    def add(self, column: str, key: str, value: Any) -> None:
        if column == "query":
            self.queries += 1
            if not value.strip():
                self.empty_queries += 1
            self.words[first_word(value)] += 1
            self.lengths["queries"].add(value)
        elif column == "query_type":
            self.types[value] += 1
        elif column == "passages":
            self.lengths["passages"].add_many(passage_texts(value))
        elif column == "answers":
            self.judgements += len(value)
            self.multiple_answers += len(value) > 1
            self.lengths["answers"].add_many(value)
        elif column == "wellFormedAnswers":
            if value != NO_WELL_FORMED:
                self.wfa += 1
                self.wfa_judgements += len(value)
                self.multiple_wfa += len(value) > 1
            # Iterates the "[]" marker character by character, as the official script does.
            self.lengths["well_formed_answers"].add_many(value)

    def result(self, name: str, columns: list[str]) -> tuple[dict[str, Any], dict[str, dict[int, int]]]:
        """The stats document and the length histograms (``{field: {words: distinct texts}}``)."""
        n = self.queries

        def share(count: int) -> dict[str, Any]:
            return {"count": count, "fraction": count / n if n else None}

        public = self.public or "answers" not in columns
        answers = not public
        wfa = not public and "wellFormedAnswers" in columns
        fields = [
            f for f in LENGTH_FIELDS if (f != "answers" or answers) and (f != "well_formed_answers" or wfa)
        ]
        hists = {f: self.lengths[f].histogram() for f in fields}
        lengths: dict[str, Any] = {}
        for f in LENGTH_FIELDS:
            h = hists.get(f)
            distinct = sum(h.values()) if h else 0
            lengths[f] = (
                None
                if h is None
                else {
                    "distinct": distinct,
                    "average_words": sum(k * v for k, v in h.items()) / distinct if distinct else None,
                    "max_words": max(h) if h else None,
                }
            )
        doc = {
            "file": name,
            "public": public,
            "columns": columns,
            "queries": n,
            "judgements": self.judgements if answers else None,
            "queries_with_multiple_answers": self.multiple_answers if answers else None,
            "queries_with_well_formed_answers": self.wfa if wfa else None,
            "queries_with_multiple_well_formed_answers": self.multiple_wfa if wfa else None,
            "well_formed_judgements": self.wfa_judgements if wfa else None,
            "query_type": {t: share(self.types[t]) for t in QUERY_TYPES},
            "query_type_unlisted": sum(c for t, c in self.types.items() if t not in QUERY_TYPES),
            "first_word": {w: share(self.words[w]) for w in FIRST_WORDS},
            "empty_queries": self.empty_queries,
            "lengths": lengths,
        }
        return doc, hists


def write_lengths_csv(path: Path, hists: dict[str, dict[int, int]]) -> None:
    """DVC plot data: one row per word count, one column per field (0 where absent)."""
    top = max((max(h) for h in hists.values() if h), default=0)
    with write_text_atomic(path, gz=False) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["length", *LENGTH_FIELDS])
        for n in range(top + 1):
            writer.writerow([n, *(hists.get(f, {}).get(n, 0) for f in LENGTH_FIELDS)])


def _save_png(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    with write_bytes_atomic(path, gz=False) as fh:
        fh.write(buf.getvalue())


def write_figures(
    doc: dict[str, Any], hists: dict[str, dict[int, int]], lengths_png: Path, dist_png: Path
) -> None:
    """PNG figures (Agg, no software/date metadata: same stats give the same bytes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.9, hspace=0.45, wspace=0.25)
    for ax, field in zip(fig.subplots(2, 2).flat, LENGTH_FIELDS, strict=True):
        h = hists.get(field)
        if not h:
            ax.set_title(f"{field}: none", fontsize=10)
            ax.set_axis_off()
            continue
        info = doc["lengths"][field]
        counts = [h.get(n, 0) for n in range(max(h) + 1)]
        ax.stairs(counts, [n - 0.5 for n in range(len(counts) + 1)], fill=True, color="tab:green")
        ax.set_title(
            f"{field}: {info['distinct']:,} distinct, mean {info['average_words']:.1f} words", fontsize=10
        )
        ax.set_xlabel("words")
        ax.set_ylabel("distinct texts")
    fig.suptitle(f"{doc['file']}: length distributions")
    _save_png(fig, lengths_png)

    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.25, top=0.85, wspace=0.2)
    for ax, key in zip(fig.subplots(1, 2), ("query_type", "first_word"), strict=True):
        labels = list(doc[key])
        ax.bar(range(len(labels)), [doc[key][k]["count"] for k in labels], color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_title(f"queries by {key.replace('_', ' ')}", fontsize=10)
    fig.suptitle(f"{doc['file']}: {doc['queries']:,} queries")
    _save_png(fig, dist_png)


def write_stats(
    out_dir: Path, stem: str, doc: dict[str, Any], hists: dict[str, dict[int, int]]
) -> list[Path]:
    paths = [
        out_dir / f"{stem}.{s}" for s in ("stats.json", "lengths.csv", "lengths.png", "distribution.png")
    ]
    write_json(paths[0], doc)
    write_lengths_csv(paths[1], hists)
    write_figures(doc, hists, paths[2], paths[3])
    return paths


def stats(
    src: str | Path,
    out_dir: str | Path | None = None,
    public: bool = False,
    tmp_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Statistics of ``src``; with ``out_dir`` also writes ``<stem>.stats.json`` and the plots.

    ``public`` ignores answers (as ``exploredata.py -p``); a file without an ``answers``
    column is treated as public anyway.
    """
    src = Path(src)
    stem = src.name.removesuffix(".gz").removesuffix(".jsonl").removesuffix(".json")
    with _work_dir(None, tmp_dir) as tmp:
        acc = QaStats(Path(tmp), public=public)
        with RowReader(src, tmp, on_value=acc.add, keep_values=False, on_restart=acc.reset) as reader:
            for _ in _rows(reader, "stats"):
                pass
        doc, hists = acc.result(src.name, reader.columns)
    if out_dir is not None:
        write_stats(Path(out_dir), stem, doc, hists)
    return doc


# --------------------------------------------------------------------------- pipeline stage
def run(split: str, src: str | Path, out_dir: str | Path, params: Convert) -> dict[str, Any]:
    """One pass over ``src``: ``<split>.jsonl.gz``, ``<split>.wellformed.jsonl.gz`` and stats."""
    src, out_dir = Path(src), Path(out_dir)
    full, subset = out_dir / f"{split}.jsonl.gz", out_dir / f"{split}.wellformed.jsonl.gz"
    with _work_dir(full, params.tmp_dir) as tmp:
        acc = QaStats(Path(tmp))
        with (
            RowReader(src, tmp, on_value=acc.add, on_restart=acc.reset) as reader,
            JsonlWriter(full) as w_full,
            JsonlWriter(subset) as w_wf,
        ):
            has_wfa = "wellFormedAnswers" in reader.columns
            if not has_wfa:
                log.warning("%s: no wellFormedAnswers column: %s stays empty", src, subset)
            for key, row in _rows(reader, f"qa {split}"):
                w_full.add(key, row)
                kept = well_formed_row(row) if has_wfa else None
                if kept is not None:
                    w_wf.add(key, kept)
        doc, hists = acc.result(src.name, reader.columns)
    write_stats(out_dir, split, doc, hists)
    log.info("%s: %d rows, %d with well-formed answers -> %s", src, w_full.rows, w_wf.rows, out_dir)
    return doc


# --------------------------------------------------------------------------- CLI
def _report(doc: dict[str, Any]) -> str:
    lines = [f"{doc['file']}: columns {', '.join(doc['columns'])}", f"{doc['queries']} queries"]
    if doc["judgements"] is not None:
        lines.append(
            f"{doc['judgements']} judgements; {doc['queries_with_multiple_answers']} queries "
            "with more than one answer"
        )
    if doc["queries_with_well_formed_answers"] is not None:
        lines.append(
            f"{doc['queries_with_well_formed_answers']} queries with well-formed answers, of which "
            f"{doc['queries_with_multiple_well_formed_answers']} with more than one"
        )
    for key, title in (("query_type", "query_type"), ("first_word", "first word")):
        lines.append(f"---- queries by {title} ----")
        lines += [f"{k},{v['count']},{v['fraction']}" for k, v in doc[key].items()]
    lines.append("---- lengths (words, distinct texts) ----")
    for field, info in doc["lengths"].items():
        if info is not None:
            lines.append(f"{field}: {info['distinct']} distinct, average {info['average_words']}")
    return "\n".join(lines) + "\n"


EPILOG = """examples:
  python -m tasks.convert tojsonl train_v2.1.json.gz train_v2.1.jsonl.gz
  python -m tasks.convert tojson train_v2.1.jsonl train_v2.1.json
  python -m tasks.convert wellformed dev_v2.1.json.gz dev_v2.1.wellformed.jsonl.gz
  python -m tasks.convert stats eval_v2.1_public.json.gz --public --out reports/
  python -m tasks.convert pipeline --split train --params params.yaml
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.convert",
        description="MS MARCO QA v2.1: streaming JSON <-> JSONL conversion, well-formed subsets and "
        "statistics, with the semantics of the official Utils/ scripts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=f"example: {example}")
        if name != "pipeline":
            p.add_argument("input", type=Path, help="*.json[.gz] (column layout) or *.jsonl[.gz]")
            p.add_argument(
                "--tmp-dir",
                type=Path,
                help="scratch for column spills (default: next to the output; for stats the system temp dir)",
            )
        return p

    for name, out, help, ex in (
        (
            "tojsonl",
            "*.jsonl[.gz]",
            "column JSON -> one JSON object per line, rows in key order",
            "python -m tasks.convert tojsonl train_v2.1.json.gz train_v2.1.jsonl.gz",
        ),
        (
            "tojson",
            "*.json[.gz]",
            'JSON lines -> the official column layout, keys "0".."n-1"',
            "python -m tasks.convert tojson train_v2.1.jsonl train_v2.1.json",
        ),
        (
            "wellformed",
            "*.json[.gz] or *.jsonl[.gz]",
            "keep the rows with well-formed answers, answers := wellFormedAnswers (converttowellformed.py)",
            "python -m tasks.convert wellformed dev_v2.1.json.gz dev.wellformed.json",
        ),
    ):
        command(name, help, ex).add_argument("output", type=Path, help=out)
    st = command(
        "stats",
        "print the exploredata.py figures and length statistics; --out also writes <name>.stats.json, "
        "<name>.lengths.csv and PNG figures",
        "python -m tasks.convert stats dev_v2.1.json.gz --out reports/",
    )
    st.add_argument("--public", action="store_true", help="ignore answers (exploredata.py -p; eval files)")
    st.add_argument("--out", type=Path, help="directory for the stats JSON, CSV and PNGs")
    pl = command(
        "pipeline",
        "DVC stage qa@<split>: inputs.qa_<split> -> paths.qa/<split>/: <split>.jsonl.gz, "
        "<split>.wellformed.jsonl.gz, <split>.stats.json, <split>.lengths.csv and PNGs, in one pass",
        "python -m tasks.convert pipeline --split train --params params.yaml",
    )
    pl.add_argument("--split", required=True, help="a split of convert.splits (train, dev)")
    pl.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="default: params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "pipeline":
            return _pipeline(args.split, args.params)
        if args.cmd == "stats":
            doc = stats(args.input, args.out, public=args.public, tmp_dir=args.tmp_dir)
            sys.stdout.write(_report(doc))
        else:
            func = {"tojsonl": tojsonl, "tojson": tojson, "wellformed": wellformed}[args.cmd]
            func(args.input, args.output, tmp_dir=args.tmp_dir)
    except (DataError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


def _pipeline(split: str, params: Path) -> int:
    from tasks.config import ConfigError, load_config

    try:
        cfg = load_config(params)
        if split not in cfg.convert.splits:
            raise ConfigError(f"--split {split!r} is not in convert.splits {cfg.convert.splits}")
        src = cfg.input_path(f"qa_{split}")
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    run(split, src, cfg.path("qa") / split, cfg.convert)
    return 0


if __name__ == "__main__":
    sys.exit(main())
