"""A deterministic small change of a BEIR folder: the input of an incremental-refresh check.

``python -m tasks.corpus_change SRC DEST --share 0.01 --seed 1`` reads the BEIR folder ``SRC``
(``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``, as :mod:`tasks.beir_sample` writes
and :mod:`tasks.ingest` reads; ``*.gz`` variants too) and writes ``DEST`` (replaced as a whole,
atomically; ``DEST`` may be ``SRC``: everything is read first) with about ``share`` of it changed:

- **passages**: ``share / 3`` of them edited (a sentence of another passage appended to the text),
  ``share / 3`` removed, ``share / 3`` added (new ids ``<prefix>new-<seed>-<n>``, texts spliced from
  two existing passages) at positions spread through the file: one in each of as many equal
  slices of it, so a refresh sees inserts before, between and after old passages, not only
  appended ones. Removals are drawn among the passages no qrels line names, so every query keeps
  every judgement and a train query never loses its only positive.
- **train queries** (those with a positive in ``qrels/<train split>.tsv``): the same share of
  them edited (the words rotated), removed (with their qrels lines; only queries no other split
  names) and added (a question built from an existing, kept passage, with a qrels line, score 1,
  to that passage; inserted spread through ``queries.jsonl``, the qrels lines appended).

Unchanged records keep their bytes (lines are copied, not re-serialised); other files of
``SRC`` are copied as they are. Same input, share, seed and ``--what``: the same bytes.

    python -m tasks.corpus_change data/user/scifact /tmp/scifact-changed --share 0.01 --seed 1
    python -m tasks.corpus_change data/user/x data/user/x --what passages   # in place
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.ingest import find_beir_file, read_jsonl_objects
from tasks.io import DataError, atomic_dir, iter_lines, write_text_atomic

log = logging.getLogger(__name__)

KINDS = ("passages", "queries")
QRELS_HEADER = "query-id\tcorpus-id\tscore"


@dataclass
class Record:
    """One JSONL line: its id, its parsed object and the line as read (rewritten only if changed)."""

    ident: str
    obj: dict[str, Any]
    line: str


def _read_jsonl(path: Path) -> list[Record]:
    out: list[Record] = []
    seen: dict[str, str] = {}
    for obj, where, line in read_jsonl_objects(path):
        if "_id" not in obj or not isinstance(obj.get("text"), str):
            raise DataError(f"{where}: expected a JSON object with '_id' and a string 'text'")
        ident = str(obj["_id"])
        if ident in seen:
            raise DataError(f"{where}: duplicate _id {ident!r} (first on {seen[ident]})")
        seen[ident] = where
        out.append(Record(ident, obj, line))
    return out


def _read_qrels(path: Path) -> list[tuple[str, str, str]]:
    """``(query-id, corpus-id, line)`` of every judgement line (header checked, blank lines dropped)."""
    rows: list[tuple[str, str, str]] = []
    for lineno, line in iter_lines(path):
        if lineno == 1:
            if "\t".join(f.strip() for f in line.split("\t")) != QRELS_HEADER:
                raise DataError(f"{path}:1: expected the header 'query-id<TAB>corpus-id<TAB>score', "
                                f"found {line!r}")  # fmt: skip
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields, found {len(fields)}")
        rows.append((fields[0], fields[1], line))
    return rows


def _score(line: str) -> float:
    try:
        return float(line.split("\t")[2])
    except ValueError:
        return 0.0


def per_kind(n: int, share: float) -> int:
    """Records of one change kind (edit, removal or addition) for ``n`` records: ``share / 3`` of them,
    at least one when ``share > 0`` and ``n > 0``."""
    if share <= 0 or n <= 0:
        return 0
    return max(1, round(n * share / 3))


def spread_positions(n: int, k: int, rng: random.Random) -> list[int]:
    """``k`` insert positions in ``0..n`` (before record i), one drawn in each of ``k`` equal slices."""
    return [
        rng.randint(i * (n + 1) // k, max(i * (n + 1) // k, (i + 1) * (n + 1) // k - 1)) for i in range(k)
    ]


def _new_ids(prefix: str, seed: int, k: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    n = 0
    while len(out) < k:
        ident = f"{prefix}new-{seed}-{n}"
        n += 1
        if ident not in taken:
            out.append(ident)
    return out


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _sentence(text: str) -> str:
    first = text.split(". ")[0].strip().rstrip(".")
    return (first or text.strip() or "changed") + "."


def _insert(records: list[Record], added: list[Record], rng: random.Random) -> list[Record]:
    at = spread_positions(len(records), len(added), rng)
    out: list[Record] = []
    todo = sorted(zip(at, range(len(added)), strict=True))
    j = 0
    for i, rec in enumerate(records):
        while j < len(todo) and todo[j][0] <= i:
            out.append(added[todo[j][1]])
            j += 1
        out.append(rec)
    out.extend(added[t[1]] for t in todo[j:])
    return out


def _id_prefix(idents: list[str]) -> str:
    """``doc-`` for ids like ``doc-00012``: new ids look like the old ones."""
    first = idents[0] if idents else ""
    head = first.rstrip("0123456789")
    return head if head and head != first else ""


def run(
    src: Path,
    dest: Path,
    share: float = 0.01,
    seed: int = 1,
    what: tuple[str, ...] = KINDS,
    train_split: str = "train",
) -> dict[str, int]:
    """Write ``dest``: ``src`` with ``share`` of its passages and train queries changed (module
    docstring). Returns the counts: ``passages``/``queries`` (before), ``*_edited``, ``*_removed``,
    ``*_added``, ``qrels_removed``, ``qrels_added``."""
    src, dest = Path(src), Path(dest)
    if not 0 <= share <= 1:
        raise ValueError(f"share must be within [0, 1], got {share}")
    unknown = sorted(set(what) - set(KINDS))
    if unknown:
        raise ValueError(f"what: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if not src.is_dir():
        raise DataError(f"{src}: no such folder (a BEIR folder)")
    corpus_path, queries_path = find_beir_file(src, "corpus.jsonl"), find_beir_file(src, "queries.jsonl")
    qrels_dir = src / "qrels"
    qrels_paths = (
        sorted(qrels_dir.glob("*.tsv")) + sorted(qrels_dir.glob("*.tsv.gz")) if qrels_dir.is_dir() else []
    )
    split_of = {p.name.split(".")[0]: p for p in qrels_paths}
    if train_split not in split_of:
        raise DataError(
            f"{qrels_dir / f'{train_split}.tsv'}: no qrels file for the train split {train_split!r}"
        )
    corpus, queries = _read_jsonl(corpus_path), _read_jsonl(queries_path)
    qrels = {split: _read_qrels(path) for split, path in split_of.items()}
    doc_ids = {r.ident for r in corpus}
    query_ids = {r.ident for r in queries}
    for split, rows in qrels.items():
        for qid, did, line in rows:
            if did not in doc_ids or qid not in query_ids:
                raise DataError(f"{split_of[split]}: line {line!r} names an unknown "
                                f"{'passage' if did not in doc_ids else 'query'}")  # fmt: skip
    rng = random.Random(seed)
    counts = {"passages": len(corpus), "queries": len(queries)}
    removed_docs: set[str] = set()
    if "passages" in what:
        corpus, removed_docs = _change_passages(corpus, qrels, share, seed, rng, counts)
    else:
        counts.update(passages_edited=0, passages_removed=0, passages_added=0)
    added_qrels: list[str] = []
    removed_queries: set[str] = set()
    if "queries" in what:
        queries, removed_queries, added_qrels = _change_queries(
            queries, corpus, removed_docs, qrels, train_split, share, seed, rng, counts
        )
    else:
        counts.update(queries_edited=0, queries_removed=0, queries_added=0)
    files: dict[str, str] = {
        corpus_path.name: "".join(r.line + "\n" for r in corpus),
        queries_path.name: "".join(r.line + "\n" for r in queries),
    }
    counts["qrels_removed"] = counts["qrels_added"] = 0
    for split, rows in qrels.items():
        kept = [line for qid, did, line in rows if qid not in removed_queries and did not in removed_docs]
        counts["qrels_removed"] += len(rows) - len(kept)
        if split == train_split:
            kept += added_qrels
            counts["qrels_added"] = len(added_qrels)
        files[f"qrels/{split_of[split].name}"] = QRELS_HEADER + "\n" + "".join(line + "\n" for line in kept)
    _write(src, dest, files)
    log.info("%s -> %s: %s", src, dest, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def _change_passages(
    corpus: list[Record],
    qrels: dict[str, list[tuple[str, str, str]]],
    share: float,
    seed: int,
    rng: random.Random,
    counts: dict[str, int],
) -> tuple[list[Record], set[str]]:
    k = per_kind(len(corpus), share)
    judged = {did for rows in qrels.values() for _, did, _ in rows}
    free = [i for i, r in enumerate(corpus) if r.ident not in judged]
    if k > len(free) or 2 * k > len(corpus):
        raise ValueError(f"share {share}: {k} removals need as many passages no qrels line names "
                         f"({len(free)}) and {k} edits more")  # fmt: skip
    removed = set(rng.sample(free, k))
    edited = rng.sample([i for i in range(len(corpus)) if i not in removed], k)
    out = list(corpus)
    for i in edited:
        donor = corpus[rng.randrange(len(corpus))].obj["text"]
        obj = {**out[i].obj, "text": f"{out[i].obj['text'].rstrip()} {_sentence(donor)}".strip()}
        if obj["text"] == out[i].obj["text"]:
            obj["text"] += " (revised)"
        out[i] = Record(out[i].ident, obj, _dumps(obj))
    removed_ids = {corpus[i].ident for i in removed}
    kept = [r for i, r in enumerate(out) if i not in removed]
    ids = _new_ids(_id_prefix([r.ident for r in corpus]), seed, k, {r.ident for r in corpus})
    added: list[Record] = []
    for ident in ids:
        a, b = rng.sample(corpus, 2)
        wa, wb = a.obj["text"].split(), b.obj["text"].split()
        text = " ".join(wa[: max(1, len(wa) // 2)] + wb[len(wb) // 2 :]) or "new passage"
        fresh: dict[str, Any] = {"_id": ident, "text": text}
        if "title" in a.obj:
            fresh = {"_id": ident, "title": a.obj["title"], "text": text}
        added.append(Record(ident, fresh, _dumps(fresh)))
    counts.update(passages_edited=k, passages_removed=k, passages_added=k)
    return _insert(kept, added, rng), removed_ids


def _change_queries(
    queries: list[Record],
    corpus: list[Record],
    removed_docs: set[str],
    qrels: dict[str, list[tuple[str, str, str]]],
    train_split: str,
    share: float,
    seed: int,
    rng: random.Random,
    counts: dict[str, int],
) -> tuple[list[Record], set[str], list[str]]:
    train = {qid for qid, _, line in qrels[train_split] if _score(line) > 0}
    elsewhere = {qid for split, rows in qrels.items() if split != train_split for qid, _, _ in rows}
    train_idx = [i for i, r in enumerate(queries) if r.ident in train]
    k = per_kind(len(train_idx), share)
    removable = [i for i in train_idx if queries[i].ident not in elsewhere]
    if k > len(removable) or 2 * k > len(train_idx):
        raise ValueError(f"share {share}: {k} query removals and {k} edits need more train queries "
                         f"({len(train_idx)}, {len(removable)} in no other split)")  # fmt: skip
    removed = set(rng.sample(removable, k))
    edited = rng.sample([i for i in train_idx if i not in removed], k)
    out = list(queries)
    for i in edited:
        words = out[i].obj["text"].split()
        turn = 1 + rng.randrange(max(1, len(words) - 1)) if len(words) > 1 else 0
        text = " ".join(words[turn:] + words[:turn])
        if text == out[i].obj["text"]:
            text += " exactly"
        obj = {**out[i].obj, "text": text}
        out[i] = Record(out[i].ident, obj, _dumps(obj))
    removed_ids = {queries[i].ident for i in removed}
    kept = [r for i, r in enumerate(out) if i not in removed]
    targets = [r for r in corpus if r.ident not in removed_docs]
    ids = _new_ids(_id_prefix([r.ident for r in queries]), seed, k, {r.ident for r in queries})
    added: list[Record] = []
    added_qrels: list[str] = []
    for ident in ids:
        doc = targets[rng.randrange(len(targets))]
        words = doc.obj["text"].split()[:8]
        title = str(doc.obj.get("title") or "").strip()
        text = " ".join(["what", "about", *([title] if title else []), *words]).strip() + "?"
        obj = {"_id": ident, "text": text}
        added.append(Record(ident, obj, _dumps(obj)))
        added_qrels.append(f"{ident}\t{doc.ident}\t1")
    counts.update(queries_edited=k, queries_removed=k, queries_added=k)
    return _insert(kept, added, rng), removed_ids, added_qrels


def _write(src: Path, dest: Path, files: dict[str, str]) -> None:
    extra = [p for p in sorted(src.rglob("*")) if p.is_file() and p.relative_to(src).as_posix() not in files]
    copies = {p.relative_to(src).as_posix(): p.read_bytes() for p in extra}  # read before a swap in place
    with atomic_dir(dest) as stage:
        for name in sorted(files):
            with write_text_atomic(stage / name) as fh:
                fh.write(files[name])
        for name, data in sorted(copies.items()):
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            with open(stage / name, "wb") as fh:
                fh.write(data)
    if extra:
        log.info("%s: copied %d other file(s) unchanged", dest, len(extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.corpus_change",
        description="Write DEST: the BEIR folder SRC with about --share of its passages and train queries "
        "changed (a third edited, a third removed, a third added at spread positions; removed passages are "
        "never judged, removed queries take their qrels lines along). Deterministic: same input and "
        "options, same bytes. DEST may be SRC (replaced atomically). Prints the counts as JSON.",
        epilog="example: python -m tasks.corpus_change data/user/x /tmp/x-changed --share 0.01 --seed 1",
    )
    parser.add_argument(
        "src", type=Path, help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
    )
    parser.add_argument("dest", type=Path, help="folder to write (replaced as a whole; may be SRC)")
    parser.add_argument("--share", type=float, default=0.01, help="share of records changed (default 0.01)")
    parser.add_argument("--seed", type=int, default=1, help="which records change and how (default 1)")
    parser.add_argument(
        "--what", default="passages,queries", help="what to change, comma-separated: passages, queries"
    )
    parser.add_argument(
        "--train-split", default="train", help="qrels split whose queries change (default train)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    what = tuple(w.strip() for w in args.what.split(",") if w.strip())
    try:
        counts = run(args.src, args.dest, args.share, args.seed, what, args.train_split)
    except DataError as exc:  # bad input (a ValueError too): exit 1, as the stages do
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except ValueError as exc:  # a bad option
        parser.error(str(exc))
    sys.stdout.write(json.dumps(counts, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
