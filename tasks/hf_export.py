"""Stage ``hf_export``: Hugging Face datasets in the layouts sentence-transformers published.

Writes under ``paths.hf`` (replaced as a whole, atomically) one folder per dataset, each a
dataset repository as the Hub holds it: ``README.md`` (a dataset card whose YAML header names
every config's files and features) and ``<config>/train-NNNNN-of-NNNNN.parquet``:

- ``msmarco-<system>`` per system of the hard negatives (``msmarco-bm25``,
  ``msmarco-msmarco-distilbert-base-tas-b``, ...; the name is the system's with ``_`` -> ``-``
  and ``L-6`` -> ``L6``, as the published names are), configs:

  - ``triplet``: ``query, positive, negative``: one row per training query, its negative the
    system's best-ranked one;
  - ``triplet-50``: ``query, positive, negative_1 ... negative_50``: the system's 50 negatives in
    rank order (``hf_export.negatives``); a query with fewer negatives has no row;
  - ``triplet-all``: ``query, positive, negative``: one row per query and negative, rank order;
  - ``triplet-hard``: the rows of ``triplet-all`` whose negative the cross-encoder scores well
    below the positive: ``CE(pos) - CE(neg) > hf_export.margin`` (the published rule, 3.0);
  - and an ``-ids`` twin of each (``triplet-ids``, ...): the same rows, int64 qid/pids in place
    of the texts, to resolve with ``msmarco-corpus``.

  The positive of every row is the query's first positive (``pos[0]``; the merge stage writes
  them sorted): one positive per query, as the published 502,939 rows per system are. Texts
  are strings, ids int64.
- ``msmarco-corpus``: ``passage`` (``pid:int64, text:string``, every passage of the collection in
  file order) and ``query`` (``qid:int64, text:string``, the training queries by qid).
- ``msmarco-scores-<cross-encoder>`` (``msmarco-scores-ms-marco-MiniLM-L6-v2`` for the msmarco
  profile's ``cross-encoder-ms-marco-MiniLM-L-6-v2``), config ``list``: ``query_id:int64,
  corpus_id:list<int64>, score:list<float64>``: every scored pair of the CE scores table, one row
  per query, pids ascending. ``score`` is float64 as published (Python floats from the pickle);
  the float32 logits convert exactly.

Rows come in qid order (then rank order), so the same inputs and params give byte-identical
files (zstd, fixed row-group sizes, no Arrow schema blob). The work streams: the hard negatives
are read twice (a scan for the ids whose texts are needed, then the rows), the CE scores once,
query by query beside them (a merge join over two qid-sorted inputs), and each config's rows go
to its Parquet writer one row group at a time. What stays in memory: the texts of the ids that
rows name, as one Arrow string array each for passages and queries (~3 GB for all of MS MARCO),
and one row group per open config (13 systems x 8 configs at full size).

Bad input fails with one line naming the file (exit 1) and leaves the previous ``paths.hf`` in
place: a truncated or damaged hard-negatives or scores file, hard negatives out of qid order, a
pid missing from the collection or a qid from the queries, a pair without a CE score.

Load one (offline, from the folder):

    from datasets import load_dataset
    ds = load_dataset("data/msmarco/hf/msmarco-bm25", "triplet-hard", split="train")

Upload (not run by the pipeline; needs a Hub token, ``hf auth login`` or ``HF_TOKEN``):

    from pathlib import Path
    from huggingface_hub import HfApi

    api = HfApi()
    for folder in sorted(Path("data/msmarco/hf").iterdir()):
        repo_id = f"<your-user-or-org>/{folder.name}"
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="dataset",
                          commit_message="hardnegs hf_export")

The card's ``configs:`` header is what the Hub and ``load_dataset`` read to find each config.
Run by the CLI, each folder also holds ``provenance.json`` (:mod:`tasks.provenance`: its files'
md5s, the stage's inputs with md5, source pins, every model's resolved revision, packages,
params), summarised in the card's ``Provenance`` section; the ``configs`` never name it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from tasks import provenance as prov
from tasks.cli import run_stage, stage_parser
from tasks.config import HfExport
from tasks.io import DataError, atomic_dir, file_digest, write_text_atomic
from tasks.records import SCORES_SCHEMA, read_collection, read_hard_negatives, read_queries

log = logging.getLogger(__name__)

CORPUS = "msmarco-corpus"
ROW_GROUP_CELLS = 150_000  # values per row group: 50,000 triplets, ~2,900 rows of triplet-50
TEXT_CHUNK = 100_000  # passages / queries per read chunk and corpus row group
SCORE_GROUP_PAIRS = 500_000  # scored pairs per row group of the scores list dataset
PARQUET = {"compression": "zstd", "store_schema": False}


def hub_name(name: str) -> str:
    """A system or model name as the published dataset names spell it: ``_`` -> ``-`` and the
    hub's current ``L6`` for ``L-6`` (``msmarco-MiniLM-L-6-v3`` -> ``msmarco-MiniLM-L6-v3``)."""
    return re.sub(r"L-(\d)", r"L\1", name.replace("_", "-"))


def system_dataset(system: str) -> str:
    """``bm25`` -> ``msmarco-bm25``; ``co-condenser-margin_mse-sym_mnrl-mean-v1`` ->
    ``msmarco-co-condenser-margin-mse-sym-mnrl-mean-v1``."""
    return f"msmarco-{hub_name(system)}"


def scores_dataset(cross_encoder: str) -> str:
    """``cross-encoder-ms-marco-MiniLM-L-6-v2`` -> ``msmarco-scores-ms-marco-MiniLM-L6-v2``."""
    return f"msmarco-scores-{hub_name(cross_encoder.removeprefix('cross-encoder-'))}"


def triplet_configs(width: int) -> list[str]:
    return ["triplet", f"triplet-{width}", "triplet-all", "triplet-hard"]


# --------------------------------------------------------------------------- Parquet shards
class Shards:
    """One config's Parquet files: row groups in order, a new file past ``shard_bytes``.

    Files are written as ``part-N.tmp`` and named ``train-NNNNN-of-NNNNN.parquet`` on
    :meth:`close`, once their count is known. A config without rows writes no file at all
    (``load_dataset`` refuses a split without data): the card leaves it out.
    """

    def __init__(self, folder: Path, schema: pa.Schema, shard_bytes: int) -> None:
        self.folder, self.schema, self.shard_bytes = folder, schema, shard_bytes
        self.parts: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.in_file = 0
        self.rows = 0
        self.nbytes = 0  # Arrow bytes written: the card's num_bytes
        self.file_bytes = 0  # Parquet bytes, known after close: the card's download_size

    def _next(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.parts.append(self.folder / f"part-{len(self.parts)}.tmp")
        self.writer = pq.ParquetWriter(self.parts[-1], self.schema, **PARQUET)  # type: ignore[arg-type]
        self.in_file = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        if self.writer is None or self.in_file >= self.shard_bytes:
            self._next()
        assert self.writer is not None
        table = table.cast(self.schema)
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.in_file += table.nbytes
        self.nbytes += table.nbytes
        self.rows += table.num_rows

    def close(self) -> int:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        n = len(self.parts)
        for i, part in enumerate(self.parts):
            self.file_bytes += part.stat().st_size
            part.rename(self.folder / f"train-{i:05d}-of-{n:05d}.parquet")
        return self.rows

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --------------------------------------------------------------------------- texts
@dataclass(frozen=True)
class Texts:
    """``id -> text`` for the ids rows name: sorted ids and one Arrow string array (no Python
    string per row, so MS MARCO's 8.8M passages fit in about their own size)."""

    ids: np.ndarray
    texts: pa.Array

    def take(self, ids: np.ndarray) -> pa.Array:
        return self.texts.take(pa.array(np.searchsorted(self.ids, ids))).cast(pa.string())


def _texts(ids: list[np.ndarray], texts: list[pa.Array]) -> Texts:
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    arr = (
        pa.concat_arrays([t.cast(pa.large_string()) for t in texts])
        if texts
        else pa.array([], pa.large_string())
    )
    order = np.argsort(all_ids, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        all_ids, arr = all_ids[order], arr.take(pa.array(order))
    return Texts(all_ids, arr)


def member(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """``np.isin(ids, sorted_ids)`` for sorted unique ``sorted_ids``, without sorting them again."""
    if not len(sorted_ids):
        return np.zeros(len(ids), bool)
    at = np.searchsorted(sorted_ids, ids).clip(max=len(sorted_ids) - 1)
    return sorted_ids[at] == ids


def _missing(need: np.ndarray, have: np.ndarray, kind: str, src: Path, what: Path) -> None:
    missing = need[~member(need, have)]
    if len(missing):
        raise DataError(
            f"{what}: {len(missing)} {kind}(s) are not in {src}, e.g. {missing[:5].tolist()}; were the "
            "inputs built from another collection/query set?"
        )


ID_TEXT = {
    "pid": pa.schema([("pid", pa.int64()), ("text", pa.string())]),
    "qid": pa.schema([("qid", pa.int64()), ("text", pa.string())]),
}


def load_passages(collection: Path, need: np.ndarray, out: Shards, what: Path) -> Texts:
    """Stream the collection once: every passage to ``out`` (file order), the texts of ``need`` kept."""
    keep_ids: list[np.ndarray] = []
    keep_texts: list[pa.Array] = []
    pids: list[int] = []
    texts: list[str] = []

    def flush() -> None:
        ids = np.asarray(pids, np.int64)
        arr = pa.array(texts, pa.string())
        out.write(pa.table({"pid": ids, "text": arr}, schema=ID_TEXT["pid"]))
        mask = member(ids, need)
        keep_ids.append(ids[mask])
        keep_texts.append(arr.filter(pa.array(mask)))
        pids.clear()
        texts.clear()

    for passage in tqdm(read_collection(collection), desc="passages", unit=" passages", mininterval=5):
        pids.append(passage.pid)
        texts.append(passage.text)
        if len(pids) == TEXT_CHUNK:
            flush()
    if pids:
        flush()
    table = _texts(keep_ids, keep_texts)
    _missing(need, table.ids, "pid", collection, what)
    return table


def load_queries(queries_path: Path, need: np.ndarray, out: Shards, what: Path) -> Texts:
    """All training queries, written to ``out`` by qid; the texts of ``need`` kept."""
    qids: list[int] = []
    texts: list[str] = []
    for query in read_queries(queries_path):
        qids.append(query.qid)
        texts.append(query.text)
    table = _texts([np.asarray(qids, np.int64)], [pa.array(texts, pa.string())])
    for start in range(0, len(table.ids), TEXT_CHUNK):
        ids = table.ids[start : start + TEXT_CHUNK]
        out.write(pa.table({"qid": ids, "text": table.texts.slice(start, len(ids))}, schema=ID_TEXT["qid"]))
    _missing(need, table.ids, "qid", queries_path, what)
    keep = member(table.ids, need)
    return Texts(table.ids[keep], table.texts.filter(pa.array(keep)))


# --------------------------------------------------------------------------- inputs
@dataclass
class Scan:
    """What the first pass over the hard negatives found."""

    systems: list[str]
    qids: np.ndarray  # queries with a positive
    pids: np.ndarray  # every positive and negative rows can name, unique
    records: int = 0
    no_positive: int = 0


class _Unique:
    """A growing set of int64 ids, merged with ``np.unique`` every few million (bounded memory)."""

    def __init__(self) -> None:
        self.done = np.zeros(0, np.int64)
        self.pending: list[int] = []

    def extend(self, values: list[int]) -> None:
        self.pending.extend(values)
        if len(self.pending) >= 5_000_000:
            self.result()

    def result(self) -> np.ndarray:
        if self.pending:
            self.done = np.union1d(self.done, np.asarray(self.pending, np.int64))
            self.pending = []
        return self.done


def scan(path: Path, wanted: list[str] | str) -> Scan:
    """Validate the hard negatives (qid order, format) and list the systems and ids rows need."""
    found: set[str] = set()
    qids: list[int] = []
    pids = _Unique()
    last: int | None = None
    records = no_positive = 0
    for rec in tqdm(read_hard_negatives(path), desc="scan", unit=" queries", mininterval=5):
        if last is not None and rec.qid <= last:
            raise DataError(
                f"{path}: qid {rec.qid} comes after qid {last}: the file must be in increasing qid order "
                "(as the merge stage writes it); rerun the merge stage"
            )
        last = rec.qid
        records += 1
        found.update(rec.neg)
        if not rec.pos:
            no_positive += 1
            continue
        qids.append(rec.qid)
        pids.extend(rec.pos[:1])
        for system, negs in rec.neg.items():
            if wanted == "all" or system in wanted:
                pids.extend(negs)
    if wanted == "all":
        systems = sorted(found)
    else:
        unknown = [s for s in wanted if s not in found]
        if unknown:
            raise ValueError(
                f"hf_export.systems names {unknown}, not in {path} (systems there: {sorted(found)})"
            )
        systems = list(wanted)
    return Scan(systems, np.asarray(qids, np.int64), pids.result(), records, no_positive)


class ScoreGroup(NamedTuple):
    """The CE scores of one query: its scored pids (ascending) and their float32 scores."""

    qid: int
    pids: np.ndarray
    scores: np.ndarray


def iter_score_groups(path: Path, batch_rows: int = 1 << 20, stage: str = "score") -> Iterator[ScoreGroup]:
    """The canonical CE scores table (sorted by qid, pid), streamed one query at a time; ``stage``
    names the stage that makes the file (``score``, ``mine_scores``) in the errors.

    Rows out of (qid, pid) order, a duplicate pair, a damaged file or missing columns raise a
    :class:`DataError` naming the file.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no cross-encoder scores; run the {stage} stage first")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc}); rerun the {stage} stage") from None
    missing = {"qid", "pid", "score"} - set(pf.schema_arrow.names)
    if missing:
        raise DataError(f"{path}: scores file lacks column(s) {sorted(missing)}")
    q_carry = p_carry = np.zeros(0, np.int64)
    s_carry = np.zeros(0, np.float32)
    row = 0
    batches = pf.iter_batches(batch_size=batch_rows, columns=["qid", "pid", "score"])
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"{path}: damaged Parquet file after row {row} ({exc}); rerun the {stage} stage"
            ) from None
        if batch is None:
            break
        table = pa.Table.from_batches([batch]).cast(SCORES_SCHEMA)
        q = np.concatenate([q_carry, table.column("qid").to_numpy()])
        p = np.concatenate([p_carry, table.column("pid").to_numpy()])
        s = np.concatenate([s_carry, table.column("score").to_numpy()])
        dq = np.diff(q)
        bad = (dq < 0) | ((dq == 0) & (np.diff(p) <= 0))
        if bad.any():
            i = int(np.argmax(bad)) + 1
            raise DataError(
                f"{path}: row {row - len(q_carry) + i + 1} (qid {q[i]}, pid {p[i]}) breaks the (qid, pid) "
                f"order of the canonical scores table (or repeats a pair); rerun the {stage} stage"
            )
        row += batch.num_rows
        starts = np.r_[0, np.flatnonzero(dq) + 1]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            yield ScoreGroup(int(q[a]), p[a:b], s[a:b])
        tail = int(starts[-1])
        q_carry, p_carry, s_carry = q[tail:], p[tail:], s[tail:]
    if len(q_carry):
        yield ScoreGroup(int(q_carry[0]), p_carry, s_carry)
    if not row:
        raise DataError(f"{path}: the scores table has no rows; rerun the {stage} stage")


def lookup(
    group: ScoreGroup | None, qid: int, pids: np.ndarray, source: Path, stage: str = "score"
) -> np.ndarray:
    """Scores (float64) of ``pids`` for ``qid``; a pair without a score raises (naming ``stage``)."""
    if group is None:
        found = np.zeros(len(pids), bool)
        at = found.astype(np.int64)
    else:
        at = np.searchsorted(group.pids, pids)
        found = at < len(group.pids)
        found[found] = group.pids[at[found]] == pids[found]
    if not found.all():
        raise DataError(
            f"{source}: no cross-encoder score for qid {qid}, pid(s) {pids[~found][:5].tolist()}: the scores "
            f"were computed on other hard negatives; rerun the {stage} stage (dvc repro {stage})"
        )
    assert group is not None
    return group.scores[at].astype(np.float64)


# --------------------------------------------------------------------------- rows
def _schema(width: int | None, kind: pa.DataType) -> pa.Schema:
    """``query, positive, negative`` (width None) or ``query, positive, negative_1..negative_<width>``."""
    negatives = ["negative"] if width is None else [f"negative_{i}" for i in range(1, width + 1)]
    return pa.schema([(n, kind) for n in ("query", "positive", *negatives)])


class Rows:
    """Buffered rows of one config (ids), flushed one row group at a time to its text and ids files."""

    def __init__(
        self, width: int, text: Shards, ids: Shards, texts: tuple[Texts, Texts], cells: int = ROW_GROUP_CELLS
    ) -> None:
        self.width, self.text, self.ids, self.texts = width, text, ids, texts
        self.group_rows = max(1, cells // (width + 2))
        self.queries: list[int] = []
        self.positives: list[int] = []
        self.negatives: list[np.ndarray] = []
        self.buffered = 0

    def add(self, qid: int, pos: int, negs: np.ndarray) -> None:
        """``negs``: shape (rows, width); every row gets ``qid`` and ``pos``."""
        n = len(negs)
        if not n:
            return
        self.queries.extend([qid] * n)
        self.positives.extend([pos] * n)
        self.negatives.append(negs)
        self.buffered += n
        if self.buffered >= self.group_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        q = np.asarray(self.queries, np.int64)
        p = np.asarray(self.positives, np.int64)
        n = np.concatenate(self.negatives).reshape(-1, self.width)
        names = self.ids.schema.names
        cols = [q, p, *(n[:, j] for j in range(self.width))]
        self.ids.write(pa.table(dict(zip(names, cols, strict=True)), schema=self.ids.schema))
        queries, passages = self.texts
        text_cols = [queries.take(q), *(passages.take(c) for c in cols[1:])]
        self.text.write(pa.table(dict(zip(names, text_cols, strict=True)), schema=self.text.schema))
        self.queries, self.positives, self.negatives, self.buffered = [], [], [], 0


class ScoreRows:
    """The scores ``list`` config: one row per query, flushed every ~SCORE_GROUP_PAIRS pairs."""

    SCHEMA = pa.schema(
        [("query_id", pa.int64()), ("corpus_id", pa.list_(pa.int64())), ("score", pa.list_(pa.float64()))]
    )

    def __init__(self, out: Shards) -> None:
        self.out = out
        self.groups: list[ScoreGroup] = []
        self.pairs = 0  # buffered
        self.total_pairs = 0

    def add(self, group: ScoreGroup) -> None:
        self.groups.append(group)
        self.pairs += len(group.pids)
        if self.pairs >= SCORE_GROUP_PAIRS:
            self.flush()

    def flush(self) -> None:
        if not self.groups:
            return
        offsets = pa.array(np.r_[0, np.cumsum([len(g.pids) for g in self.groups])].astype(np.int32))
        pids = pa.array(np.concatenate([g.pids for g in self.groups]))
        scores = pa.array(np.concatenate([g.scores for g in self.groups]).astype(np.float64))
        table = pa.table(
            {
                "query_id": np.asarray([g.qid for g in self.groups], np.int64),
                "corpus_id": pa.ListArray.from_arrays(offsets, pids),
                "score": pa.ListArray.from_arrays(offsets, scores),
            },
            schema=self.SCHEMA,
        )
        self.out.write(table)
        self.total_pairs += self.pairs
        self.groups, self.pairs = [], 0


@dataclass
class Skipped:
    no_negatives: int = 0  # triplet / triplet-all: the system has no negative for the query
    short: int = 0  # triplet-<n>: fewer than n negatives


def write_rows(
    negatives_path: Path,
    scores_path: Path,
    systems: dict[str, dict[str, Rows]],
    score_rows: ScoreRows,
    params: HfExport,
) -> dict[str, Skipped]:
    """Second pass: the rows of every config of every system, the scores list beside them."""
    width = params.negatives
    skipped = {s: Skipped() for s in systems}
    groups = iter_score_groups(scores_path)
    group = next(groups, None)
    for rec in tqdm(read_hard_negatives(negatives_path), desc="rows", unit=" queries", mininterval=5):
        while group is not None and group.qid < rec.qid:
            score_rows.add(group)
            group = next(groups, None)
        mine = group if group is not None and group.qid == rec.qid else None
        if not rec.pos:
            continue
        pos = rec.pos[0]
        positives = set(rec.pos)
        for system, rows in systems.items():
            listed = rec.neg.get(system, [])
            if not positives.isdisjoint(listed):  # the published file has a few: never a negative here
                listed = [p for p in listed if p not in positives]
            negs = np.asarray(listed, np.int64)
            if not len(negs):
                skipped[system].no_negatives += 1
                continue
            rows["triplet"].add(rec.qid, pos, negs[:1].reshape(1, 1))
            if len(negs) >= width:
                rows[f"triplet-{width}"].add(rec.qid, pos, negs[:width].reshape(1, width))
            else:
                skipped[system].short += 1
            rows["triplet-all"].add(rec.qid, pos, negs.reshape(-1, 1))
            ce = lookup(mine, rec.qid, np.r_[np.int64(pos), negs], scores_path)
            hard = negs[ce[0] - ce[1:] > params.margin]
            rows["triplet-hard"].add(rec.qid, pos, hard.reshape(-1, 1))
    while group is not None:
        score_rows.add(group)
        group = next(groups, None)
    return skipped


# --------------------------------------------------------------------------- cards
def _features(schema: pa.Schema) -> list[dict[str, str]]:
    out = []
    for f in schema:
        if pa.types.is_list(f.type):
            out.append({"name": f.name, "list": _dtype(f.type.value_type)})
        else:
            out.append({"name": f.name, "dtype": _dtype(f.type)})
    return out


def _dtype(t: pa.DataType) -> str:
    return {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64"}[t]


def card_header(pretty_name: str, configs: dict[str, Shards]) -> str:
    """The YAML header: features and sizes per config (closed :class:`Shards`), and where each
    config's files are (``load_dataset`` checks the row counts against ``num_examples``)."""
    meta = {
        "language": ["en"],
        "pretty_name": pretty_name,
        "tags": ["sentence-transformers"],
        "task_categories": ["feature-extraction", "sentence-similarity"],
        "dataset_info": [
            {
                "config_name": name,
                "features": _features(out.schema),
                "splits": [{"name": "train", "num_bytes": out.nbytes, "num_examples": out.rows}],
                "download_size": out.file_bytes,
                "dataset_size": out.nbytes,
            }
            for name, out in configs.items()
        ],
        "configs": [
            {"config_name": name, "data_files": [{"split": "train", "path": f"{out.folder.name}/train-*"}]}
            for name, out in configs.items()
        ],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000) + "---\n"


def _provenance(inputs: dict[str, str], params: HfExport | None = None) -> str:
    text = ""
    if params is not None:
        systems = params.systems if params.systems == "all" else ", ".join(params.systems)
        text = (
            f"## Params\n\n- hf_export.margin: {params.margin}\n- hf_export.negatives: {params.negatives}\n"
            f"- hf_export.systems: {systems}\n\n"
        )
    return text + "## Inputs (md5)\n\n" + "".join(f"- `{name}`: {md5}\n" for name, md5 in inputs.items())


SYSTEM_BODY = """
# MS MARCO with hard negatives from {system}

Generated by `python -m tasks.hf_export` (hardnegs) from `msmarco-hard-negatives.jsonl.gz` (system
`{system}`) and the cross-encoder scores, in the layout of sentence-transformers' `{dataset}`.
Every row's positive is the query's first positive; negatives keep the system's rank order.

| config | columns | rows | what |
|---|---|---|---|
| `triplet` | query, positive, negative | {triplet} | the best-ranked negative per query |
| `triplet-{n}` | query, positive, negative_1 ... negative_{n} | {triplet_n} | the {n} best-ranked negatives |
| `triplet-all` | query, positive, negative | {triplet_all} | one row per query and negative |
| `triplet-hard` | query, positive, negative | {triplet_hard} | triplet-all, CE(pos) - CE(neg) > {margin} |

Each `-ids` config holds the same rows as int64 ids (resolve them with `msmarco-corpus`); a
config with 0 rows is left out (`load_dataset` cannot load an empty split).
Queries without a positive: {no_positive}; without a negative of this system: {no_negatives};
with fewer than {n} negatives (no `triplet-{n}` row): {short}.

```python
from datasets import load_dataset
ds = load_dataset("<this folder or hub id>", "triplet-hard", split="train")
```

"""

CORPUS_BODY = """
# MS MARCO corpus

Generated by `python -m tasks.hf_export` (hardnegs) in the layout of sentence-transformers'
`msmarco-corpus`: `passage` maps pid -> text ({passages} passages, collection file order), `query`
maps qid -> text ({queries} training queries, by qid), to resolve the ids of the `-ids` configs.

"""

SCORES_BODY = """
# MS MARCO cross-encoder scores: {name}

Generated by `python -m tasks.hf_export` (hardnegs) from the cross-encoder scores table, in the
layout of sentence-transformers' `msmarco-scores-ms-marco-MiniLM-L6-v2`: config `list`, one row per
query ({rows} queries, {pairs} pairs), `corpus_id` ascending, `score` the raw logit per pid.

```python
ds = load_dataset("<this folder or hub id>", "list", split="train")
ce_scores = {{q: dict(zip(c, s)) for q, c, s in zip(ds["query_id"], ds["corpus_id"], ds["score"])}}
```

"""


def _write_card(folder: Path, text: str) -> None:
    with write_text_atomic(folder / "README.md", gz=False) as fh:
        fh.write(text)


# --------------------------------------------------------------------------- stage
def run(
    negatives_path: Path,
    scores_path: Path,
    collection: Path,
    queries_path: Path,
    out_dir: Path,
    cross_encoder: str,
    params: HfExport,
    row_group_cells: int = ROW_GROUP_CELLS,
    provenance: prov.StageRecord | None = None,
) -> dict[str, dict[str, int]]:
    """Write every dataset folder under ``out_dir``; returns the rows per dataset and config.

    ``row_group_cells``: values per Parquet row group (rows x columns); the tests make it small to
    write many row groups and shards from tiny data. ``provenance``: the stage's
    :func:`tasks.provenance.collect` (the CLI passes one): each folder gets ``provenance.json``
    naming its Parquet files (not listed in the card's ``configs``, so ``load_dataset`` reads
    only the data) and a ``Provenance`` section at the end of its card.
    """
    width = params.negatives
    found = scan(negatives_path, params.systems)
    shard_bytes = max(1, int(params.shard_mb * 1024 * 1024))
    writers: list[Shards] = []

    def shards(folder: Path, schema: pa.Schema) -> Shards:
        writers.append(Shards(folder, schema, shard_bytes))
        return writers[-1]

    def provenance_section(folder: Path) -> str:
        """Write ``folder``'s record (its files are all closed) and return its card section."""
        if provenance is None:
            return ""
        files = {out_dir / folder.name / p.relative_to(folder): p for p in prov.files_under(folder)}
        return "\n" + prov.card_section(provenance.write(files, folder / prov.DIR_SIDECAR))

    counts: dict[str, dict[str, int]] = {}
    try:
        with atomic_dir(out_dir) as stage:
            corpus = stage / CORPUS
            passage_out = shards(corpus / "passage", ID_TEXT["pid"])
            query_out = shards(corpus / "queries", ID_TEXT["qid"])
            passages = load_passages(collection, found.pids, passage_out, negatives_path)
            queries = load_queries(queries_path, found.qids, query_out, negatives_path)

            scores_name = scores_dataset(cross_encoder)
            score_rows = ScoreRows(shards(stage / scores_name / "list", ScoreRows.SCHEMA))
            systems: dict[str, dict[str, Rows]] = {}
            for system in found.systems:
                folder = stage / system_dataset(system)
                systems[system] = {}
                for config in triplet_configs(width):
                    numbered = width if config == f"triplet-{width}" else None
                    text = shards(folder / config, _schema(numbered, pa.string()))
                    ids = shards(folder / f"{config}-ids", _schema(numbered, pa.int64()))
                    rows = Rows(numbered or 1, text, ids, (queries, passages), row_group_cells)
                    systems[system][config] = rows
            skipped = write_rows(negatives_path, scores_path, systems, score_rows, params)

            md5 = {p: file_digest(p) for p in (negatives_path, scores_path, collection, queries_path)}
            inputs_md5 = _provenance({p.name: md5[p] for p in md5}, params)
            for system, configs in systems.items():
                name = system_dataset(system)
                outs: dict[str, Shards] = {}
                for config, buffer in configs.items():
                    buffer.flush()
                    buffer.text.close()
                    buffer.ids.close()
                    outs[config], outs[f"{config}-ids"] = buffer.text, buffer.ids
                empty = [c for c, out in outs.items() if not out.rows]
                outs = {c: out for c, out in outs.items() if out.rows}
                if not outs:
                    log.warning(
                        "%s: system %s has no row in any config: no %s dataset", negatives_path, system, name
                    )
                    continue
                if empty:
                    log.warning("%s: no row in config(s) %s (left out of the card)", name, ", ".join(empty))
                counts[name] = {c: out.rows for c, out in outs.items()}
                body = SYSTEM_BODY.format(
                    system=system,
                    dataset=name,
                    n=width,
                    margin=params.margin,
                    triplet=counts[name].get("triplet", 0),
                    triplet_n=counts[name].get(f"triplet-{width}", 0),
                    triplet_all=counts[name].get("triplet-all", 0),
                    triplet_hard=counts[name].get("triplet-hard", 0),
                    no_positive=found.no_positive,
                    no_negatives=skipped[system].no_negatives,
                    short=skipped[system].short,
                )
                header = card_header(f"MS MARCO with hard negatives from {system}", outs)
                _write_card(stage / name, header + body + inputs_md5 + provenance_section(stage / name))

            if not counts:  # raised inside the swap: the previous datasets stay in place
                raise DataError(
                    f"{negatives_path}: no row to export (no query has a positive and a negative of systems "
                    f"{found.systems}); check the merge output and hf_export.systems, then rerun"
                )
            score_rows.flush()
            n_lists = score_rows.out.close()
            counts[scores_name] = {"list": n_lists}
            header = card_header(f"MS MARCO cross-encoder scores: {cross_encoder}", {"list": score_rows.out})
            body = SCORES_BODY.format(name=cross_encoder, rows=n_lists, pairs=score_rows.total_pairs)
            scores_md5 = _provenance({scores_path.name: md5[scores_path]})
            scores_md5 += provenance_section(stage / scores_name)
            _write_card(stage / scores_name, header + body + scores_md5)

            n_passages, n_queries = passage_out.close(), query_out.close()
            counts[CORPUS] = {"passage": n_passages, "query": n_queries}
            header = card_header("MS MARCO corpus", {"passage": passage_out, "query": query_out})
            body = CORPUS_BODY.format(passages=n_passages, queries=n_queries)
            inputs = {collection.name: md5[collection], queries_path.name: md5[queries_path]}
            _write_card(corpus, header + body + _provenance(inputs) + provenance_section(corpus))
    finally:
        for writer in writers:  # closes what a failure left open (the staging directory is removed)
            writer.abort()
    log.info(
        "wrote %d Hugging Face datasets to %s: %s",
        len(counts),
        out_dir,
        ", ".join(f"{d} ({sum(c.values())} rows)" for d, c in counts.items()),
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.hf_export",
        "Write Hugging Face datasets under paths.hf in sentence-transformers' published layouts: "
        "msmarco-<system> (triplet, triplet-50, triplet-all, triplet-hard and their -ids twins), "
        "msmarco-corpus (passage, query) and msmarco-scores-<cross-encoder> (list), each with a dataset "
        "card, from the merged hard negatives, the CE scores, the collection and the training queries.",
        "python -m tasks.hf_export --params params.yaml",
    )
    args = parser.parse_args(argv)
    return run_stage(
        args.params,
        lambda cfg: run(
            cfg.path("out") / "msmarco-hard-negatives.jsonl.gz",
            cfg.path("scores") / "ce-scores.parquet",
            cfg.input_path("collection"),
            cfg.input_path("queries_train"),
            cfg.path("hf"),
            cfg.cross_encoder.name,
            cfg.hf_export,
            provenance=prov.collect(cfg, "hf_export", prov.stage_models(cfg, True, cross_encoder=True)),
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
