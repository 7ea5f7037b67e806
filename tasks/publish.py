"""publish: the outputs of a corpus of your own (``datasets.<name>``) with YOUR string ids.

Every stage from ``ingest`` on works with int ids 0..n-1; ``ingest`` writes the maps back,
``paths.raw/<name>/corpus_ids.txt`` and ``query_ids.txt`` (line i, counted from 0, is your id of
passage / query i). This stage rewrites the user-facing outputs through those maps into
``paths.out/<name>/`` (written as a whole: staged, then swapped in):

- ``hard-negatives.jsonl.gz`` and ``hard-negatives.denoised.jsonl.gz``: the published shape of
  ``msmarco-hard-negatives[.denoised].jsonl.gz`` (keys ``qid``, ``pos``, ``neg: {system: [...]}``,
  the same line order, systems and list order) with string ids, non-ASCII ids as UTF-8; gzip mtime 0.
- ``<cross_encoder.name>-scores.pkl.gz``: gzip(pickle(``{qid: {pid: score}}``)) with string ids, plain
  dicts, strs and floats only, in the int pickle's order (:func:`tasks.scores_pickle.write_scores_pickle_ids`;
  load it with ``pickle.load`` or :func:`tasks.scores_pickle.load_scores_pickle_ids`).
- ``runs/<system>/<file>.trec``: every TREC run under ``paths.runs``, the qid and docid columns mapped,
  ``Q0``, rank, score and tag kept as their text.
- ``<file>.provenance.json`` beside the two JSONL files and the pickle (the CLI, :mod:`tasks.provenance`'s
  format: the files read, with md5s, packages, ``cross_encoder.name``), and ``README.md``.

Same inputs, same bytes. An int id outside its map is a :class:`~tasks.io.DataError` naming the file,
the line (the pickle: the entry) and the id; a missing id map names the file and says to run
``dvc repro ingest@<name>``. Either way nothing is written and a previous ``paths.out/<name>/`` stays.

    python -m tasks.publish --dataset scifact
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tasks import provenance as prov
from tasks.cli import run_stage, stage_parser
from tasks.config import CORPUS_IDS, QUERY_IDS, Config, ConfigError
from tasks.io import DataError, atomic_dir, iter_lines, write_text_atomic
from tasks.records import (
    NamedHardNegatives,
    is_trec_run,
    iter_hard_negatives,
    iter_run_fields,
    write_named_hard_negatives,
)
from tasks.scores_pickle import load_scores_pickle, write_scores_pickle_ids

log = logging.getLogger(__name__)

# the int-id inputs under paths.out (written by merge, denoise, score) and their published names
NEGATIVES = ("msmarco-hard-negatives.jsonl.gz", "hard-negatives.jsonl.gz")
DENOISED = ("msmarco-hard-negatives.denoised.jsonl.gz", "hard-negatives.denoised.jsonl.gz")
RUNS_DIR = "runs"
README = "README.md"


class IdMap:
    """One id map of ``ingest``: line i (from 0) of ``path`` is your id of int id i.

    Read whole and checked: every line a non-empty id, no id twice (two int ids with one string
    would merge in the outputs). A missing file says which stage writes it.
    """

    def __init__(self, path: Path, what: str, dataset: str) -> None:
        self.path, self.what, self.dataset = path, what, dataset
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no id map (the {what}s' string ids); it is written by the ingest stage: "
                f"run `dvc repro ingest@{dataset}`"
            )
        self.ids: list[str] = []
        first: dict[str, int] = {}
        for lineno, line in iter_lines(path):
            if not line:
                raise DataError(f"{path}:{lineno}: empty id (of {what} {lineno - 1}); rerun ingest@{dataset}")
            if line in first:
                raise DataError(
                    f"{path}:{lineno}: id {line!r} already names {what} {first[line] - 1} "
                    f"(line {first[line]}); rerun ingest@{dataset}"
                )
            first[line] = lineno
            self.ids.append(line)
        if not self.ids:
            raise DataError(f"{path}: empty id map; rerun `dvc repro ingest@{dataset}`")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, ident: int) -> str:
        return self.ids[ident]

    def missing(self, where: str, ident: object) -> DataError:
        """The error for an id ``where`` (``file:line``) names that this map does not hold."""
        return DataError(
            f"{where}: {self.what} {ident!r} is not in {self.path} (int ids 0..{len(self.ids) - 1}): the "
            f"input was not built from this ingest of {self.dataset}; rerun the pipeline (dvc repro)"
        )

    def get(self, ident: int, where: str) -> str:
        if 0 <= ident < len(self.ids):
            return self.ids[ident]
        raise self.missing(where, ident)

    def get_text(self, token: str, where: str) -> str:
        """The string id of the int id written as ``token`` (a column of a TREC run)."""
        try:
            ident = int(token)
        except ValueError:
            raise self.missing(where, token) from None
        return self.get(ident, where)


def _map_negatives(path: Path, queries: IdMap, corpus: IdMap) -> Iterator[NamedHardNegatives]:
    for lineno, rec in tqdm(iter_hard_negatives(path), desc=f"publish {path.name}", unit="query"):
        where = f"{path}:{lineno}"
        yield NamedHardNegatives(
            queries.get(rec.qid, where),
            [corpus.get(p, f"{where} (pos)") for p in rec.pos],
            {s: [corpus.get(p, f"{where} (neg.{s})") for p in pids] for s, pids in rec.neg.items()},
        )


def _write_scores(src: Path, dst: Path, queries: IdMap, corpus: IdMap) -> int:
    """The int-id score pickle ``src`` as ``dst`` with string ids; every id checked first."""
    if not src.is_file():
        raise FileNotFoundError(
            f"{src}: no cross-encoder score pickle; run the score stage (dvc repro score)"
        )
    scores = load_scores_pickle(src)
    for qid, inner in tqdm(scores.items(), desc=f"check {src.name}", unit="query"):
        if not 0 <= qid < len(queries):
            raise queries.missing(f"{src}: scores[{qid}]", qid)
        for pid in inner:
            if not 0 <= pid < len(corpus):
                raise corpus.missing(f"{src}: scores[{qid}][{pid}]", pid)
    return write_scores_pickle_ids(dst, scores, queries.ids, corpus.ids)


def _trec_id(ids: IdMap, token: str, where: str) -> str:
    """The string id of a run's id column; one holding whitespace cannot be a TREC column."""
    text = ids.get_text(token, where)
    if text.split() != [text]:
        raise DataError(
            f"{where}: {ids.what} {token} is {text!r} in {ids.path}, which holds whitespace: a TREC run "
            "separates its columns by whitespace, so it cannot be written; rename the id in your corpus"
        )
    return text


def _write_run(src: Path, dst: Path, queries: IdMap, corpus: IdMap) -> int:
    """The run ``src`` as ``dst`` with string ids; the other columns kept as their text."""
    n = 0
    with write_text_atomic(dst) as fh:
        for lineno, (qid, q0, pid, rank, score, tag) in iter_run_fields(src):
            where = f"{src}:{lineno}"
            qs, ps = _trec_id(queries, qid, where), _trec_id(corpus, pid, where)
            fh.write(f"{qs} {q0} {ps} {rank} {score} {tag}\n")
            n += 1
    return n


def trec_runs(runs_dir: Path) -> list[Path]:
    """Every TREC run (``*.trec``, ``*.trec.gz``) under ``runs_dir``, sorted; temporaries skipped."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no runs folder; run the mining stages (dvc repro)")
    return [p for p in prov.files_under(runs_dir) if is_trec_run(p)]


def _readme(dataset: str, pickle_name: str, counts: dict[str, Any], sidecars: bool) -> str:
    runs = counts["runs"]
    lines = [
        f"# {dataset}: hard negatives with your ids",
        "",
        f"Written by `python -m tasks.publish --dataset {dataset}`. Every id in these files is YOURS: the",
        f"pipeline works with int ids 0..n-1, mapped back through `{CORPUS_IDS}` (passages) and",
        f"`{QUERY_IDS}` (queries) of the ingest stage (`paths.raw/{dataset}/`).",
        "",
        "| File | What |",
        "|---|---|",
        f'| `{NEGATIVES[1]}` | one JSON line per training query, `{{"qid", "pos": [...], "neg": '
        f"{{system: [...]}}}}`, negatives in rank order ({counts['negatives']} lines) |",
        f"| `{DENOISED[1]}` | the same with the cross-encoder's likely false negatives dropped "
        f"({counts['denoised']} lines) |",
        f"| `{pickle_name}` | gzip(pickle(`{{qid: {{pid: score}}}}`)), raw cross-encoder logits, plain "
        f"dict/str/float ({counts['score_queries']} queries) |",
        f"| `{RUNS_DIR}/<system>/<set>.trec` | TREC runs `qid Q0 docid rank score tag` ({len(runs)} files) |",
    ]
    if sidecars:
        lines.append(
            "| `*.provenance.json` | what each file was made from (`python -m tasks.provenance show`) |"
        )
    lines += [
        "",
        "The pickle holds only dicts, strs and floats: `pickle.load(gzip.open(path))` reads it, and",
        "this checkout's restricted loader does so without executing code:",
        "",
        "```python",
        "from tasks.scores_pickle import load_scores_pickle_ids",
        f'scores = load_scores_pickle_ids("{pickle_name}")  # scores[qid][pid] -> float',
        "```",
        "",
    ]
    return "\n".join(lines)


def run(
    dataset: str,
    ids_dir: Path,
    out_in: Path,
    pickle_name: str,
    runs_dir: Path,
    out_dir: Path,
    record: prov.StageRecord | None = None,
) -> dict[str, Any]:
    """Write ``out_dir`` (module docstring) from the int-id outputs; returns the counts.

    ``ids_dir``: ``paths.raw/<dataset>`` (the id maps); ``out_in``: ``paths.out`` holding the
    int-id hard negatives and ``pickle_name``; ``runs_dir``: ``paths.runs``. ``record`` (the CLI
    passes one): completed with each JSONL file and the pickle into ``<file>.provenance.json``.
    """
    queries = IdMap(ids_dir / QUERY_IDS, "qid", dataset)
    corpus = IdMap(ids_dir / CORPUS_IDS, "pid", dataset)
    for src, _ in (NEGATIVES, DENOISED):
        if not (out_in / src).is_file():
            maker = "merge" if src == NEGATIVES[0] else "denoise"
            raise FileNotFoundError(f"{out_in / src}: not found; run the {maker} stage (dvc repro {maker})")
    runs = trec_runs(runs_dir)
    if not runs:
        log.warning("publish: no TREC run under %s; %s/ will be empty", runs_dir, RUNS_DIR)
    counts: dict[str, Any] = {}
    with atomic_dir(out_dir) as stage:
        for key, (src, dst) in (("negatives", NEGATIVES), ("denoised", DENOISED)):
            counts[key] = write_named_hard_negatives(
                stage / dst, _map_negatives(out_in / src, queries, corpus)
            )
        counts["score_queries"] = _write_scores(out_in / pickle_name, stage / pickle_name, queries, corpus)
        counts["runs"] = {}
        (stage / RUNS_DIR).mkdir()
        for trec in tqdm(runs, desc="publish runs", unit="run"):
            rel = trec.relative_to(runs_dir)
            counts["runs"][rel.as_posix()] = _write_run(trec, stage / RUNS_DIR / rel, queries, corpus)
        if record is not None:
            for name in (NEGATIVES[1], DENOISED[1], pickle_name):
                record.write({out_dir / name: stage / name}, stage / (name + prov.SIDECAR_SUFFIX))
        with write_text_atomic(stage / README, gz=False) as fh:
            fh.write(_readme(dataset, pickle_name, counts, record is not None))
    log.info(
        "publish: %d + %d hard-negative lines, %d score queries, %d runs with %s's ids -> %s",
        counts["negatives"], counts["denoised"], counts["score_queries"], len(counts["runs"]), dataset,
        out_dir,
    )  # fmt: skip
    return counts


def stage_record(cfg: Config, dataset: str, inputs: list[Path]) -> prov.StageRecord:
    """The provenance record of ``publish@<dataset>`` over the files it reads (``inputs``).

    Built here because :func:`tasks.provenance.collect` reads single stages of ``dvc.yaml`` and
    ``publish`` is a ``foreach`` stage; no model runs in this stage (the upstream records name them).
    """
    base = {
        "format": prov.FORMAT,
        "stage": f"publish@{dataset}",
        "inputs": sorted((prov.file_entry(p, cfg) for p in inputs), key=lambda e: e["path"]),
        "sources": prov.source_pins(cfg, inputs),
        "models": [],
        "packages": prov.package_versions(),
        "params": {"cross_encoder.name": cfg.cross_encoder.name},
    }
    return prov.StageRecord(cfg, base)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.publish",
        "Write paths.out/NAME/ for your corpus datasets.NAME with YOUR string ids (line i of "
        f"paths.raw/NAME/{CORPUS_IDS} / {QUERY_IDS} is the id of int id i): {NEGATIVES[1]}, "
        f"{DENOISED[1]} (the published JSONL shape), <cross_encoder.name>-scores.pkl.gz (a plain "
        f"dict/str/float pickle), {RUNS_DIR}/<system>/<set>.trec, provenance sidecars and a README. An id "
        "outside a map fails naming the file, line and id, leaving the previous folder as it was.",
        "python -m tasks.publish --dataset scifact --params params.yaml",
    )
    parser.add_argument(
        "--dataset", required=True, metavar="NAME", help="a key of datasets in the params file"
    )
    args = parser.parse_args(argv)

    def work(cfg: Config) -> None:
        if args.dataset not in cfg.datasets:
            known = ", ".join(cfg.datasets) or "none: an MS MARCO profile has nothing to publish"
            raise ConfigError(f"{args.params}: no datasets.{args.dataset} (datasets: {known})")
        ids_dir, out_in = cfg.path("raw") / args.dataset, cfg.path("out")
        pickle_name = f"{cfg.cross_encoder.name}-scores.pkl.gz"
        inputs = [ids_dir / QUERY_IDS, ids_dir / CORPUS_IDS, out_in / NEGATIVES[0], out_in / DENOISED[0],
                  out_in / pickle_name]  # fmt: skip
        runs_dir = cfg.path("runs")
        record = stage_record(cfg, args.dataset, inputs + (trec_runs(runs_dir) if runs_dir.is_dir() else []))
        run(args.dataset, ids_dir, out_in, pickle_name, runs_dir, out_in / args.dataset, record)

    return run_stage(args.params, work, lock=f"publish@{args.dataset}")


if __name__ == "__main__":
    sys.exit(main())
