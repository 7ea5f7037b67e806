"""ingest: a corpus of your own (``datasets.<name>``) into the layout every other stage reads.

Writes ``paths.raw/<name>/`` as a whole (staged, then swapped in: a failed run leaves the
previous folder as it was):

- ``collection.tsv``: ``pid<TAB>text``, pid 0..n-1 in corpus file order.
- ``queries.train.tsv`` / ``qrels.train.tsv``: the ``train_split`` queries with at least one
  positive (score > 0) and those positives (``qid 0 pid rel``, rows with score <= 0 dropped).
- ``queries.eval.tsv`` / ``qrels.eval.tsv``: the ``eval_split`` queries with any judgement and
  every judgement, graded, rel 0 rows included (as BEIR evaluates them).
- ``corpus_ids.txt`` / ``query_ids.txt``: line i is your id of passage / query i. Queries share
  ONE id space over both splits, in queries-file order; only queries a written split names get one.
- ``manifest.json``: format, counts, md5 and size of every source file read, the text rule.

Text rule: passage = ``title + " " + text`` when the title is non-empty and ``title: prepend``
(BEIR's convention), else the text; in passages and queries every run of whitespace holding a
tab, newline or CR becomes one space (the TSV layout has one record per line, two fields), and
leading/trailing whitespace is stripped. An empty query is an error, and so is an empty passage
(neither title nor text) unless ``empty_passages: keep``: then it is kept, counted and warned
about once, as :mod:`tasks.records` does for published collections.

Formats (``datasets.<name>.format``):

- ``beir``: ``corpus.jsonl`` (``_id``, optional ``title``, ``text``), ``queries.jsonl``
  (``_id``, ``text``), ``qrels/<split>.tsv`` (header ``query-id<TAB>corpus-id<TAB>score``);
  ``corpus.jsonl.gz`` / ``queries.jsonl.gz`` / ``qrels/<split>.tsv.gz`` are read too.
- ``hf``: (query, positive) pairs: a ``save_to_disk`` DatasetDict, or one data file per split
  (``<split>.jsonl|json|csv|parquet``, loaded by ``datasets.load_dataset``). The corpus is the
  distinct positives in first-appearance order (train split, then eval split), then the optional
  ``corpus`` file's texts (deduplicated by text); queries are deduplicated by text, a query with
  several positives gets them all, eval pairs are rel 1. Generated ids: ``q<n>`` / ``d<n>``
  (n from 0, first-appearance order).
- ``ir_datasets``: ``python -m tasks.ingest fetch NAME`` exports ``ir_id`` (docs, queries, train
  qrels) and ``ir_eval_id`` (queries, eval qrels) to ``path`` as a BEIR folder, read as above.
  ``fetch`` also saves an hf ``hub_id`` (at ``revision``) to ``path`` with ``save_to_disk``.

Bad input is a :class:`~tasks.io.DataError` naming the file, the line (or row) and the id:
a missing field, a duplicate id, an id that is empty or holds a tab/newline/CR, qrels naming an
unknown document or query, an empty query, a non-integer score, a missing split file, a bad
qrels header, a train split with no positive.

    python -m tasks.ingest --dataset scifact
    python -m tasks.ingest fetch scifact        # ir_datasets / hf hub: export to datasets.scifact.path
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tasks.cli import run_stage, stage_parser
from tasks.config import (
    CORPUS_IDS,
    DATASET_INPUTS,
    DATASET_MANIFEST,
    QUERY_IDS,
    ROOT,
    Config,
    ConfigError,
    Dataset,
)
from tasks.io import (
    DataError,
    atomic_dir,
    file_digest,
    iter_lines,
    scratch_dir,
    write_json,
    write_text_atomic,
)
from tasks.records import Qrel, write_id_text, write_qrels

log = logging.getLogger(__name__)

BEIR_HEADER = ["query-id", "corpus-id", "score"]
HF_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_BREAKS = re.compile(r"\s*[\t\n\r]\s*")


def clean(text: str) -> str:
    """One TSV field: whitespace runs holding a tab, newline or CR become one space; ends stripped."""
    return _BREAKS.sub(" ", text).strip()


def passage_text(title: str, text: str, rule: str) -> str:
    """``title text`` (rule ``prepend``, title non-empty) or ``text``, cleaned (:func:`clean`)."""
    title, text = clean(title), clean(text)
    return f"{title} {text}".strip() if rule == "prepend" and title else text


def check_id(value: object, key: str, where: str) -> str:
    """A record id as a string (JSON integers are taken as their digits); raises for anything that
    cannot be one line of ``corpus_ids.txt``."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{where}: {key} {value!r} is not a string")
    ident = str(value)
    if not ident or any(c in ident for c in "\t\n\r"):
        raise DataError(f"{where}: {key} {ident!r} is empty or holds a tab, newline or CR; fix the id")
    return ident


@dataclass
class Source:
    """What a reader found. ``corpus`` is streamed once: ``(id, text, where)``; queries and qrels are
    small and read first (``where`` is ``file:line`` for error messages)."""

    corpus: Iterable[tuple[str, str, str]]
    queries: dict[str, tuple[str, str]]  # id -> (text, where), file order
    qrels: dict[str, list[tuple[str, str, int, str]]]  # split -> (qid, doc id, score, where)
    qrels_file: dict[str, str]  # split -> file, for messages
    files: list[Path]  # every source file read, for the manifest
    corpus_total: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific manifest entries


# --------------------------------------------------------------------------- beir
def read_jsonl_objects(path: Path) -> Iterator[tuple[dict[str, Any], str, str]]:
    """``(object, "file:line", line as read)`` of each non-blank line; DataError unless a JSON object.

    The one JSONL reader of BEIR files (also :mod:`tasks.corpus_change`, which copies unchanged
    lines byte for byte, hence the raw line).
    """
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, found {type(obj).__name__}")
        yield obj, where, line


def _field(obj: dict[str, Any], key: str, where: str, ident: str, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if optional:
            return ""
        raise DataError(f"{where}: record {ident!r} has no field {key!r}")
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} of record {ident!r} is {type(value).__name__}, not a string")
    return value


def find_beir_file(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``, else a DataError saying what a BEIR folder holds."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    raise DataError(f"{folder}: no {name} (or {name}.gz); a BEIR folder holds corpus.jsonl, "
                    "queries.jsonl and qrels/<split>.tsv")  # fmt: skip


def _record_id(obj: dict[str, Any], where: str) -> str:
    if "_id" not in obj:
        raise DataError(f"{where}: record has no field '_id'")
    return check_id(obj["_id"], "_id", where)


def _beir_corpus(path: Path, rule: str) -> Iterator[tuple[str, str, str]]:
    for obj, where, _line in read_jsonl_objects(path):
        ident = _record_id(obj, where)
        title = _field(obj, "title", where, ident, optional=True)
        yield ident, passage_text(title, _field(obj, "text", where, ident), rule), where


def _beir_qrels(path: Path) -> list[tuple[str, str, int, str]]:
    rows: list[tuple[str, str, int, str]] = []
    for lineno, line in iter_lines(path):
        where = f"{path}:{lineno}"
        fields = line.split("\t")
        if lineno == 1:
            if [f.strip() for f in fields] != BEIR_HEADER:
                raise DataError(f"{where}: expected the header 'query-id<TAB>corpus-id<TAB>score', "
                                f"found {line!r}")  # fmt: skip
            continue
        if not line.strip():
            continue
        if len(fields) != 3:
            raise DataError(f"{where}: expected 3 tab-separated fields 'query-id corpus-id score', "
                            f"found {len(fields)}")  # fmt: skip
        qid = check_id(fields[0], "query-id", where)
        did = check_id(fields[1], "corpus-id", where)
        rows.append((qid, did, _score(fields[2], where, qid, did), where))
    return rows


def _score(value: str, where: str, qid: str, did: str) -> int:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise DataError(f"{where}: score {value!r} of ({qid!r}, {did!r}) is not an integer")
    return int(number)


def read_beir(root: Path, ds: Dataset) -> Source:
    """A BEIR folder (module docstring); the corpus is read lazily, in file order."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (datasets path of a beir dataset)")
    corpus, queries_path = find_beir_file(root, "corpus.jsonl"), find_beir_file(root, "queries.jsonl")
    queries: dict[str, tuple[str, str]] = {}
    for obj, where, _line in read_jsonl_objects(queries_path):
        ident = _record_id(obj, where)
        if ident in queries:
            raise DataError(f"{where}: duplicate query _id {ident!r} (first on {queries[ident][1]})")
        text = clean(_field(obj, "text", where, ident))
        if not text:
            raise DataError(f"{where}: query {ident!r} has an empty text; give it a text or delete it")
        queries[ident] = (text, where)
    qrels, qrels_file, files = {}, {}, [corpus, queries_path]
    for split in dict.fromkeys((ds.train_split, ds.eval_split)):
        folder = root / "qrels"
        path = next((p for p in (folder / f"{split}.tsv", folder / f"{split}.tsv.gz") if p.is_file()), None)
        if path is None:
            have = sorted(p.name for p in folder.glob("*.tsv*")) if folder.is_dir() else []
            raise DataError(
                f"{folder / f'{split}.tsv'}: no qrels file for split {split!r} "
                f"(found: {', '.join(have) or 'none'}); set train_split / eval_split"
            )
        qrels[split], qrels_file[split] = _beir_qrels(path), str(path)
        files.append(path)
    return Source(_beir_corpus(corpus, ds.title), queries, qrels, qrels_file, files)


# --------------------------------------------------------------------------- hf
def _hf_split_file(root: Path, split: str) -> Path:
    found = [p for p in sorted(root.glob(f"{split}.*")) if p.is_file() and _builder(p, strict=False)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise DataError(f"{root}: {what} data file for split {split!r}; expected one "
                        f"{split}.jsonl|json|csv|parquet (or a save_to_disk folder)")  # fmt: skip
    return found[0]


def _builder(path: Path, strict: bool = True) -> str:
    suffix = path.suffix if path.suffix != ".gz" else Path(path.stem).suffix
    builder = HF_BUILDERS.get(suffix, "")
    if strict and not builder:
        raise DataError(f"{path}: unknown data file type; use .jsonl, .json, .csv or .parquet")
    return builder


def _load_file(path: Path, cache: Path) -> Any:
    import datasets

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return datasets.load_dataset(_builder(path), data_files=str(path), split="train", cache_dir=str(cache))


def _column(table: Any, name: str, key: str, where: str) -> Iterator[tuple[str, str]]:
    """``(where-of-row, value)`` of one column, rows numbered from 1, values checked as texts."""
    if name not in table.column_names:
        raise DataError(
            f"{where}: no column {name!r} (datasets.*.{key}); columns: {', '.join(table.column_names)}"
        )
    row = 0
    for batch in table.select_columns([name]).iter(batch_size=4096):
        for value in batch[name]:
            row += 1
            at = f"{where}: row {row}"
            if not isinstance(value, str):
                raise DataError(f"{at}: {name} is {type(value).__name__}, not a string (one text per row)")
            text = clean(value)
            if not text:
                raise DataError(f"{at}: {name} is empty")
            yield at, text


def read_hf(root: Path, ds: Dataset, cache: Path) -> Source:
    """(query, positive) pairs (module docstring): all in memory, ids generated."""
    import datasets

    if not root.is_dir():
        raise DataError(f"{root}: no such folder (datasets path of an hf dataset)")
    splits = list(dict.fromkeys((ds.train_split, ds.eval_split)))
    tables: dict[str, tuple[Any, str]] = {}
    files: list[Path]
    if (root / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(str(root))
        for split in splits:
            if split not in saved:
                raise DataError(
                    f"{root}: the saved DatasetDict has no split {split!r} (has {', '.join(saved)})"
                )
            tables[split] = (saved[split], f"{root}[{split}]")
        files = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        files = []
        for split in splits:
            path = _hf_split_file(root, split)
            tables[split] = (_load_file(path, cache), str(path))
            files.append(path)
    doc_ids: dict[str, str] = {}
    corpus: list[tuple[str, str, str]] = []
    queries: dict[str, tuple[str, str]] = {}
    query_ids: dict[str, str] = {}
    qrels: dict[str, list[tuple[str, str, int, str]]] = {}

    def doc(text: str, where: str) -> str:
        if text not in doc_ids:
            doc_ids[text] = f"d{len(doc_ids)}"
            corpus.append((doc_ids[text], text, where))
        return doc_ids[text]

    for split in splits:
        table, where = tables[split]
        pairs = zip(_column(table, ds.query_column, "query_column", where),
                    _column(table, ds.positive_column, "positive_column", where), strict=True)  # fmt: skip
        seen: set[tuple[str, str]] = set()
        rows = qrels[split] = []
        for (at, query), (_, positive) in pairs:
            if query not in query_ids:
                query_ids[query] = f"q{len(query_ids)}"
                queries[query_ids[query]] = (query, at)
            pair = (query_ids[query], doc(positive, at))
            if pair not in seen:
                seen.add(pair)
                rows.append((*pair, 1, at))
    extra: dict[str, Any] = {"generated_ids": "q<n> / d<n> in first-appearance order"}
    if ds.corpus:
        path = root / ds.corpus
        before = len(corpus)
        for at, text in _column(_load_file(path, cache), ds.corpus_column, "corpus_column", str(path)):
            doc(text, at)
        extra["corpus_file_new_passages"] = len(corpus) - before
        if path not in files:
            files.append(path)
    shown = {split: w for split, (_, w) in tables.items()}
    return Source(corpus, queries, qrels, shown, files, len(corpus), extra)


# --------------------------------------------------------------------------- writing
def _write(src: Source, ds: Dataset, name: str, stage: Path) -> dict[str, Any]:
    train, evals = ds.train_split, ds.eval_split
    for split, rows in src.qrels.items():
        pairs: dict[tuple[str, str], str] = {}
        for qid, did, _, where in rows:
            if qid not in src.queries:
                raise DataError(f"{where}: query-id {qid!r} is not in the queries file")
            if (qid, did) in pairs:
                raise DataError(f"{where}: ({qid!r}, {did!r}) is judged twice in split {split!r} "
                                f"(first on {pairs[qid, did]}); delete one line")  # fmt: skip
            pairs[qid, did] = where
    positives = [r for r in src.qrels[train] if r[2] > 0]
    if not positives:
        raise DataError(f"{src.qrels_file[train]}: split {train!r} has no positive judgement (score > 0); "
                        "nothing to mine")  # fmt: skip
    train_q = {r[0] for r in positives}
    eval_q = {r[0] for r in src.qrels[evals]}
    qid_of = {ident: i for i, ident in enumerate(q for q in src.queries if q in train_q or q in eval_q)}
    with write_text_atomic(stage / QUERY_IDS) as fh:
        fh.writelines(f"{ident}\n" for ident in qid_of)

    pid_of: dict[str, int] = {}
    empty: list[str] = []

    def passages() -> Iterator[tuple[int, str]]:
        bar = tqdm(src.corpus, desc=f"ingest {name}", unit="doc", total=src.corpus_total, dynamic_ncols=True)
        for ident, text, where in bar:
            if ident in pid_of:
                raise DataError(f"{where}: duplicate document id {ident!r} (passage {pid_of[ident]} has it)")
            pid_of[ident] = len(pid_of)
            if not text:
                if ds.empty_passages == "fail":
                    raise DataError(
                        f"{where}: document {ident!r} has an empty text (title: {ds.title}); give it a "
                        f"text, delete it, or set datasets.{name}.empty_passages: keep"
                    )
                empty.append(where)
            yield pid_of[ident], text

    write_id_text(stage / DATASET_INPUTS["collection"], passages())
    if not pid_of:
        raise DataError(f"{src.files[0]}: no document (an empty corpus)")
    if empty:
        log.warning(
            "ingest %s: %d empty passage(s) of %d (first: %s); kept", name, len(empty), len(pid_of), empty[0]
        )
    with write_text_atomic(stage / CORPUS_IDS) as fh:
        fh.writelines(f"{ident}\n" for ident in pid_of)

    def judged(rows: Iterable[tuple[str, str, int, str]]) -> list[Qrel]:
        out = []
        for qid, did, score, where in rows:
            if did not in pid_of:
                raise DataError(f"{where}: corpus-id {did!r} (query {qid!r}) is not in the corpus")
            out.append(Qrel(qid_of[qid], pid_of[did], score))
        return sorted(out)

    for qid, did, _, where in src.qrels[train]:  # dropped (score 0) rows must name known documents too
        if did not in pid_of:
            raise DataError(f"{where}: corpus-id {did!r} (query {qid!r}) is not in the corpus")
    qrels = {"train": judged(positives), "eval": judged(src.qrels[evals])}
    for key, split_q in (("train", train_q), ("eval", eval_q)):
        texts = [(qid_of[q], src.queries[q][0]) for q in src.queries if q in split_q]
        write_id_text(stage / DATASET_INPUTS[f"queries_{'train' if key == 'train' else 'dev'}"], texts)
        write_qrels(stage / DATASET_INPUTS[f"qrels_{'train' if key == 'train' else 'dev'}"], qrels[key])
    overlap = len(train_q & eval_q)
    if overlap:
        log.warning("ingest %s: %d quer(ies) of split %r are in %r too: evaluated on trained queries",
                    name, overlap, evals, train)  # fmt: skip
    no_positive = len(eval_q - {r[0] for r in src.qrels[evals] if r[2] > 0})
    return {
        "passages": len(pid_of),
        "empty_passages": len(empty),
        "train_queries": len(train_q),
        "eval_queries": len(eval_q),
        "eval_queries_without_positive": no_positive,
        "queries_in_both_splits": overlap,
        "queries_unused": len(src.queries) - len(qid_of),
        "qrels_train": len(qrels["train"]),
        "qrels_train_dropped_not_positive": len(src.qrels[train]) - len(positives),
        "qrels_eval": len(qrels["eval"]),
        "qrels_eval_positive": sum(q.rel > 0 for q in qrels["eval"]),
    }


def dataset_path(ds: Dataset, root: Path = ROOT) -> Path:
    """``datasets.<name>.path``, relative to the project root unless absolute."""
    path = Path(ds.path)
    return path if path.is_absolute() else root / path


def run(cfg_dataset: Dataset, name: str, dest_dir: Path, root: Path = ROOT) -> dict[str, Any]:
    """Read dataset ``name`` and write ``dest_dir`` (module docstring) as a whole; returns the manifest."""
    ds, dest_dir = cfg_dataset, Path(dest_dir)
    src_dir = dataset_path(ds, root)
    with scratch_dir(dest_dir.parent, f"{dest_dir.name}.hf-cache") as cache, atomic_dir(dest_dir) as stage:
        src = read_hf(src_dir, ds, cache) if ds.format == "hf" else read_beir(src_dir, ds)
        counts = _write(src, ds, name, stage)
        sources = {}
        for path in src.files:
            rel = path.relative_to(src_dir).as_posix() if path.is_relative_to(src_dir) else path.name
            sources[rel] = {"md5": file_digest(path), "size": path.stat().st_size}
        manifest = {
            "name": name,
            "format": ds.format,
            "train_split": ds.train_split,
            "eval_split": ds.eval_split,
            "counts": counts,
            "sources": sources,
            "text": (f"passage: title + ' ' + text (title: {ds.title}; text only when the title is empty)"
                     if ds.title == "prepend" else "passage: text (title: drop)")
            + "; tabs, newlines, CRs and the whitespace around them -> one space; ends stripped",
            "ids": f"int ids 0..n-1 in file order; line i of {CORPUS_IDS} / {QUERY_IDS} is the source id",
            **({"ir_id": ds.ir_id, "ir_eval_id": ds.ir_eval_id} if ds.format == "ir_datasets" else {}),
            **src.extra,
        }  # fmt: skip
        write_json(stage / DATASET_MANIFEST, manifest)
    log.info("ingest %s: %d passages, %d train / %d eval queries -> %s", name, counts["passages"],
             counts["train_queries"], counts["eval_queries"], dest_dir)  # fmt: skip
    return manifest


# --------------------------------------------------------------------------- fetch
def _ir_text(record: Any) -> str:
    """The text field of an ir_datasets doc or query: ``text``, ``body``, else ``default_text()``."""
    for key in ("text", "body"):
        value = getattr(record, key, None)
        if isinstance(value, str):
            return value
    return str(record.default_text())


def _json_line(obj: dict[str, str]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def fetch_ir_datasets(ds: Dataset, dest: Path) -> dict[str, int]:
    """Export ``ir_id`` (docs, queries, qrels -> ``train_split``) and ``ir_eval_id`` (queries,
    qrels -> ``eval_split``) to ``dest`` as a BEIR folder, atomically; returns the counts.

    A (query, doc) pair judged twice keeps its highest relevance (ir_datasets qrels may repeat
    a pair over iterations), with a warning."""
    import ir_datasets

    if not ds.ir_id or not ds.ir_eval_id:
        raise ConfigError(f"ir_datasets needs ir_id and ir_eval_id (the {ds.eval_split!r} judgements)")
    train, evals = ir_datasets.load(ds.ir_id), ir_datasets.load(ds.ir_eval_id)
    docs_from = next((d for d in (train, evals) if d.has_docs()), None)
    if docs_from is None:
        raise DataError(f"ir_datasets {ds.ir_id}: no docs (neither it nor {ds.ir_eval_id} has a corpus)")
    counts = {"docs": 0, "queries": 0}
    with atomic_dir(dest) as stage:
        with write_text_atomic(stage / "corpus.jsonl") as fh:
            for doc in tqdm(docs_from.docs_iter(), desc=f"export {ds.ir_id}", unit="doc", dynamic_ncols=True):
                record = {"_id": doc.doc_id, "text": _ir_text(doc)}
                if hasattr(doc, "title"):
                    record = {"_id": doc.doc_id, "title": doc.title or "", "text": record["text"]}
                fh.write(_json_line(record))
                counts["docs"] += 1
        queries: dict[str, str] = {}
        for dataset, dsid in ((train, ds.ir_id), (evals, ds.ir_eval_id)):
            for q in dataset.queries_iter() if dataset.has_queries() else ():
                text = _ir_text(q)
                if queries.setdefault(q.query_id, text) != text:
                    raise DataError(f"ir_datasets {dsid}: query {q.query_id!r} has another text in the other "
                                    "dataset; the two must share one query id space")  # fmt: skip
        with write_text_atomic(stage / "queries.jsonl") as fh:
            fh.writelines(_json_line({"_id": qid, "text": text}) for qid, text in queries.items())
        counts["queries"] = len(queries)
        for dataset, dsid, split in (
            (train, ds.ir_id, ds.train_split),
            (evals, ds.ir_eval_id, ds.eval_split),
        ):
            if not dataset.has_qrels():
                raise DataError(f"ir_datasets {dsid}: no qrels for split {split!r}")
            rels: dict[tuple[str, str], int] = {}
            repeated = 0
            for qrel in dataset.qrels_iter():
                key = (qrel.query_id, qrel.doc_id)
                repeated += key in rels
                rels[key] = max(rels.get(key, qrel.relevance), qrel.relevance)
            if repeated:
                log.warning(
                    "ir_datasets %s: %d pair(s) judged more than once; kept the highest", dsid, repeated
                )
            with write_text_atomic(stage / "qrels" / f"{split}.tsv") as fh:
                fh.write("\t".join(BEIR_HEADER) + "\n")
                fh.writelines(f"{q}\t{d}\t{r}\n" for (q, d), r in rels.items())
            counts[f"qrels_{split}"] = len(rels)
    log.info("fetch: exported %s + %s to %s: %s", ds.ir_id, ds.ir_eval_id, dest, counts)
    return counts


def fetch_hf(ds: Dataset, dest: Path) -> list[str]:
    """``datasets.load_dataset(hub_id, revision=...)`` saved to ``dest`` (``save_to_disk``), atomically;
    returns the splits."""
    import datasets

    if not ds.hub_id:
        raise ConfigError("hf: nothing to fetch without hub_id (a local path is read as it is)")
    if ds.revision is None:
        log.warning("fetch: %s has no revision; pin a commit sha so reruns read the same data", ds.hub_id)
    with scratch_dir(dest.parent, f"{dest.name}.hf-cache") as cache:  # no global cache left behind
        data = datasets.load_dataset(ds.hub_id, revision=ds.revision, cache_dir=str(cache))
        if not isinstance(data, datasets.DatasetDict):
            raise DataError(f"{ds.hub_id}: expected a dataset with named splits, got {type(data).__name__}")
        with atomic_dir(dest) as stage:
            data.save_to_disk(str(stage))
    log.info("fetch: saved %s (splits %s) to %s", ds.hub_id, ", ".join(data), dest)
    return list(data)


def fetch(ds: Dataset, dest: Path) -> object:
    """The ``fetch`` command: export an ir_datasets or hf hub dataset to ``dest`` (its ``path``)."""
    if ds.format == "ir_datasets":
        return fetch_ir_datasets(ds, dest)
    if ds.format == "hf":
        return fetch_hf(ds, dest)
    raise ConfigError("beir: nothing to fetch; the stage reads the folder at path as it is")


# --------------------------------------------------------------------------- CLI
def _dataset(cfg: Config, name: str) -> Dataset:
    if name not in cfg.datasets:
        known = ", ".join(cfg.datasets) or "none: this profile reads MS MARCO"
        raise ConfigError(f"params.yaml: no dataset {name!r} under 'datasets' (known: {known})")
    return cfg.datasets[name]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fetch"]:
        fetcher = stage_parser(
            "tasks.ingest fetch",
            "Export dataset NAME to its datasets.NAME.path: an ir_datasets dataset (ir_id, ir_eval_id) "
            "as a BEIR folder, or an hf hub dataset (hub_id at revision) with save_to_disk. Atomic: "
            "a failed fetch leaves the previous folder. Run before `dvc repro` (path is the stage's dep).",
            "python -m tasks.ingest fetch scifact",
        )
        fetcher.add_argument("name", help="a key of datasets in params.yaml")
        args = fetcher.parse_args(argv[1:])
        return run_stage(
            args.params,
            lambda cfg: fetch(_dataset(cfg, args.name), dataset_path(_dataset(cfg, args.name))),
            lock=f"ingest-fetch@{args.name}",
        )
    parser = stage_parser(
        "tasks.ingest",
        "Read your corpus datasets.NAME (beir | hf | ir_datasets, see datasets in params.yaml) into "
        "paths.raw/NAME/: collection.tsv, queries/qrels .train/.eval.tsv with int ids, corpus_ids.txt "
        f"and query_ids.txt (line i = your id of int id i), {DATASET_MANIFEST}. "
        "`python -m tasks.ingest fetch NAME` first exports an ir_datasets or hub dataset to its path.",
        "python -m tasks.ingest --dataset scifact",
    )
    parser.add_argument("--dataset", required=True, metavar="NAME", help="a key of datasets in params.yaml")
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        run(_dataset(cfg, args.dataset), args.dataset, cfg.path("raw") / args.dataset)

    return run_stage(args.params, work, lock=f"ingest@{args.dataset}")


if __name__ == "__main__":
    sys.exit(main())
