"""Stage ``export``: training-ready Parquet datasets from the hard negatives and CE scores.

Writes, under ``paths.exports`` (replaced as a whole, atomically):

- ``triplets.parquet`` -- ``query, positive, negative`` (strings): for
  ``MultipleNegativesRankingLoss``. Negatives come from the DENOISED file (the
  sentence-transformers MNRL recipe keeps only negatives the cross-encoder scores well below
  the positive).
- ``margin_mse.parquet`` -- ``query, positive, negative, label`` with
  ``label = CE(pos) - CE(neg)`` (float32): for ``MarginMSELoss``. Negatives come from the
  file BEFORE denoising (the soft label already tells the student how close a negative is,
  as in the sentence-transformers MarginMSE recipe).
- ``README.md`` -- a dataset card: row counts per system, params, md5 of every input, and a
  ``configs`` header so ``datasets.load_dataset(<exports dir>, "triplets")`` works too.
- ``provenance.json`` -- (the CLI) the provenance record of both files (:mod:`tasks.provenance`:
  inputs with md5, source pins, every model's resolved revision, packages, params), summarised
  in the card's ``Provenance`` section.

Per query (in qid order) one positive is drawn, then ``export.negatives_per_system``
negatives from each system of ``export.systems`` ("all" = every system in the file, sorted by
name), without replacement and skipping a pid already used for this query by an earlier
system. Draws use a generator seeded with ``(seed, qid)``: same inputs + params => the same
rows and byte-identical files, whatever else changes in the file.

An empty or truncated input, or inputs that give no row at all, fail with one line naming
the file (exit 1); the exports directory is swapped only when both files have rows, so the
previous exports stay in place.

The columns are text only, so the files feed the sentence-transformers trainer as they are:

    from datasets import load_dataset
    ds = load_dataset("parquet", data_files="data/sample/exports/triplets.parquet", split="train")
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from tasks import provenance as prov
from tasks.cli import run_stage, stage_parser
from tasks.config import Export
from tasks.io import DataError, atomic_dir, file_digest, write_text_atomic
from tasks.records import HardNegatives, ScoreLookup, load_texts, read_hard_negatives, read_scores

log = logging.getLogger(__name__)

TRIPLETS_SCHEMA = pa.schema([("query", pa.string()), ("positive", pa.string()), ("negative", pa.string())])
MARGIN_SCHEMA = pa.schema([*TRIPLETS_SCHEMA, ("label", pa.float32())])
ROW_GROUP = 50_000


@dataclass(frozen=True)
class Row:
    qid: int
    pos: int
    neg: int
    system: str


def select_rows(rec: HardNegatives, systems: list[str], n: int, seed: int) -> list[Row]:
    """One positive and up to ``n`` negatives per system for one query (deterministic)."""
    if not rec.pos:
        return []
    rng = np.random.default_rng([seed, rec.qid])
    pos = int(rec.pos[int(rng.integers(len(rec.pos)))])
    used: set[int] = set(rec.pos)
    rows: list[Row] = []
    for system in systems:
        candidates = [p for p in rec.neg.get(system, []) if p not in used]
        if not candidates:
            continue
        picks = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
        for i in sorted(picks.tolist()):
            used.add(candidates[i])
            rows.append(Row(rec.qid, pos, candidates[i], system))
    return rows


def _systems(path: Path, wanted: list[str] | str) -> list[str]:
    found: set[str] = set()
    for rec in read_hard_negatives(path):
        found.update(rec.neg)
    if wanted == "all":
        return sorted(found)
    unknown = [s for s in wanted if s not in found]
    if unknown:
        raise ValueError(f"export.systems names {unknown}, not in {path} (systems there: {sorted(found)})")
    return list(wanted)


def _rows(path: Path, systems: list[str], params: Export, seed: int) -> Iterator[Row]:
    for rec in read_hard_negatives(path):
        yield from select_rows(rec, systems, params.negatives_per_system, seed)


def _write(
    path: Path,
    rows: Iterator[Row],
    schema: pa.Schema,
    texts: tuple[dict[int, str], dict[int, str]],
    lookup: Any,
) -> dict[str, int]:
    queries, passages = texts
    per_system: dict[str, int] = {}
    with pq.ParquetWriter(path, schema, compression="zstd", store_schema=False) as writer:
        batch: list[Row] = []

        def flush() -> None:
            cols: dict[str, Any] = {
                "query": [queries[r.qid] for r in batch],
                "positive": [passages[r.pos] for r in batch],
                "negative": [passages[r.neg] for r in batch],
            }
            if "label" in schema.names:
                pairs = (lookup.query(r.qid, [r.pos, r.neg]) for r in batch)
                cols["label"] = np.array([s[0] - s[1] for s in pairs], dtype=np.float32)
            writer.write_table(pa.table(cols, schema=schema), row_group_size=ROW_GROUP)

        for row in tqdm(rows, desc=path.stem, unit="row"):
            per_system[row.system] = per_system.get(row.system, 0) + 1
            batch.append(row)
            if len(batch) == ROW_GROUP:
                flush()
                batch = []
        if batch or not per_system:
            flush()
    return dict(sorted(per_system.items()))


CARD = """---
configs:
- config_name: triplets
  data_files: triplets.parquet
- config_name: margin_mse
  data_files: margin_mse.parquet
---
# MS MARCO hard-negative training exports

Generated by `python -m tasks.export` (hardnegs). Deterministic: seed {seed}.

| file | columns | rows | for |
|---|---|---|---|
| `triplets.parquet` | query, positive, negative | {n_triplets} | `MultipleNegativesRankingLoss` |
| `margin_mse.parquet` | query, positive, negative, label | {n_margin} | `MarginMSELoss` |

`label` = CE(pos) - CE(neg), raw cross-encoder logits.

Triplet negatives come from the cross-encoder-denoised hard negatives; MarginMSE negatives from
the hard negatives before denoising. Per query: one positive, up to {n} negative(s) per system.

## Rows per system

| system | triplets | margin_mse |
|---|---|---|
{system_rows}

## Params

- export.negatives_per_system: {n}
- export.systems: {systems_param}
- seed: {seed}

## Inputs (md5)

{inputs}

## Load

```python
from datasets import load_dataset
triplets = load_dataset("parquet", data_files="triplets.parquet", split="train")
margin = load_dataset("parquet", data_files="margin_mse.parquet", split="train")
```
"""


def run(
    negatives_path: Path,
    denoised_path: Path,
    scores_path: Path,
    collection: Path,
    queries_path: Path,
    out_dir: Path,
    params: Export,
    seed: int,
    provenance: prov.StageRecord | None = None,
) -> dict[str, Any]:
    """Write both exports and the card to ``out_dir``; returns the row counts.

    ``provenance``: the stage's :func:`tasks.provenance.collect` (the CLI passes one): completed
    with the two Parquet files and written as ``out_dir/provenance.json`` inside the same atomic
    swap, and summarised at the end of the card.
    """
    systems = _systems(denoised_path, params.systems)
    lookup = ScoreLookup(read_scores(scores_path), scores_path)
    # pass 1: only the texts of the rows that will be written (the draw is repeated in pass 2)
    need_q: set[int] = set()
    need_p: set[int] = set()
    for path in (denoised_path, negatives_path):
        for row in _rows(path, systems, params, seed):
            need_q.add(row.qid)
            need_p.update((row.pos, row.neg))
    texts = load_texts(
        collection,
        queries_path,
        np.fromiter(sorted(need_q), np.int64, count=len(need_q)),
        np.fromiter(sorted(need_p), np.int64, count=len(need_p)),
        str(denoised_path),
    )
    with atomic_dir(out_dir) as stage:
        triplets = _write(
            stage / "triplets.parquet",
            _rows(denoised_path, systems, params, seed),
            TRIPLETS_SCHEMA,
            texts,
            lookup,
        )
        margin = _write(
            stage / "margin_mse.parquet",
            _rows(negatives_path, systems, params, seed),
            MARGIN_SCHEMA,
            texts,
            lookup,
        )
        for name, rows, src in (
            ("triplets", triplets, denoised_path),
            ("margin_mse", margin, negatives_path),
        ):
            if not rows:  # raised inside the swap: the previous exports stay in place
                raise DataError(
                    f"{src}: no row to export to {name}.parquet (no query has a positive and a negative "
                    f"of export.systems {systems}); check the denoise and export params, then rerun"
                )
        inputs = {
            p.name: file_digest(p)
            for p in (negatives_path, denoised_path, scores_path, collection, queries_path)
        }
        card = CARD.format(
            seed=seed,
            n=params.negatives_per_system,
            n_triplets=sum(triplets.values()),
            n_margin=sum(margin.values()),
            systems_param=params.systems if params.systems == "all" else ", ".join(params.systems),
            system_rows="\n".join(f"| {s} | {triplets.get(s, 0)} | {margin.get(s, 0)} |" for s in systems),
            inputs="\n".join(f"- `{name}`: {digest}" for name, digest in inputs.items()),
        )
        if provenance is not None:
            files = {out_dir / n: stage / n for n in ("triplets.parquet", "margin_mse.parquet")}
            card += "\n" + prov.card_section(provenance.write(files, stage / prov.DIR_SIDECAR))
        with write_text_atomic(stage / "README.md", gz=False) as fh:
            fh.write(card)
    counts = {"triplets": triplets, "margin_mse": margin}
    log.info(
        "exported %d triplets and %d margin rows to %s", sum(triplets.values()), sum(margin.values()), out_dir
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.export",
        "Write training-ready Parquet exports under paths.exports: triplets (query, positive, negative) "
        "from the denoised hard negatives and MarginMSE rows (+ label = CE(pos) - CE(neg)), with a "
        "dataset card. export.negatives_per_system negatives per system; deterministic (seed).",
        "python -m tasks.export --params params.yaml",
    )
    args = parser.parse_args(argv)
    return run_stage(
        args.params,
        lambda cfg: run(
            cfg.path("out") / "msmarco-hard-negatives.jsonl.gz",
            cfg.path("out") / "msmarco-hard-negatives.denoised.jsonl.gz",
            cfg.path("scores") / "ce-scores.parquet",
            cfg.input_path("collection"),
            cfg.input_path("queries_train"),
            cfg.path("exports"),
            cfg.export,
            cfg.seed,
            prov.collect(cfg, "export", prov.stage_models(cfg, systems=True, cross_encoder=True)),
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
