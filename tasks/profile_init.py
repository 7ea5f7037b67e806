"""``python -m tasks.profile_init``: write a profile for a corpus of your own.

It writes ``conf/profile/<name>.yaml``: the ``datasets`` entry (format, path, splits), the systems
(bi-encoders, by hub id or local path; or the smoke models, for a run that needs no weights) and the
cross-encoder, and composes ``params.yaml`` from it unless ``--no-use``. Everything else comes from
``conf/base.yaml``; :func:`tasks.config.compose` derives the ``inputs`` from the dataset and drops
MS MARCO's downloads, QA splits and official candidate lists. One setting differs from the MS MARCO
profiles, which keep their published bits: ``encode.batch_order: tokens`` (batches by token count,
less padding; ``--incremental`` profiles encode each text alone and need no order).

    python -m tasks.profile_init scifact --beir data/user/scifact
    python -m tasks.profile_init pairs --hf data/user/pairs --query-column anchor --positive-column positive
    python -m tasks.profile_init nfc --ir-datasets beir/nfcorpus/train --ir-eval-id beir/nfcorpus/test \\
        --path data/user/nfcorpus   # then: python -m tasks.ingest fetch nfc
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from tasks.config import CONF, PARAMS, ROOT, ConfigError, compose

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L6-v2"
SMOKE_SYSTEMS = {"smoke-bi-cls-dot": "dot", "smoke-bi-mean-cos": "cos"}  # what smoke_models builds


def system_name(model: str) -> str:
    """A system key from a model id or path: its last path part (``all-MiniLM-L6-v2``)."""
    name = Path(model.rstrip("/")).name
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    if not clean or clean == "bm25":
        raise ConfigError(f"--model {model!r}: cannot name a system after it; rename the directory")
    return clean


def profile_data(args: argparse.Namespace) -> dict[str, Any]:
    """The profile's YAML mapping for the parsed ``init`` arguments."""
    if args.beir:
        dataset: dict[str, Any] = {"format": "beir", "path": args.beir}
    elif args.hf:
        dataset = {
            "format": "hf",
            "path": args.hf,
            "query_column": args.query_column,
            "positive_column": args.positive_column,
        }
        if args.corpus:
            dataset.update(corpus=args.corpus, corpus_column=args.corpus_column)
        if args.hub_id:
            dataset.update(hub_id=args.hub_id, revision=args.revision)
    else:
        if not args.path:
            raise ConfigError("--ir-datasets needs --path: the folder `tasks.ingest fetch` exports to")
        dataset = {"format": "ir_datasets", "path": args.path, "ir_id": args.ir_datasets}
        if args.ir_eval_id:
            dataset["ir_eval_id"] = args.ir_eval_id
    dataset.update(train_split=args.train_split, eval_split=args.eval_split)
    data: dict[str, Any] = {"datasets": {args.name: dataset}}
    if args.incremental:
        # each embedding addressed by its text, each CE score by its pair, every ranked list kept:
        # a refresh of a changed corpus redoes only what changed, byte-identical to a full rebuild
        data["encode"] = {"addressing": "text"}
        data["mine"] = {"incremental": True}
    else:  # batches by token count: ~8% less padding work than by characters (tasks.config)
        data["encode"] = {"batch_order": "tokens"}
    ce_addressing = {"addressing": "pair"} if args.incremental else {}
    if args.smoke:
        # tiny random models built by the smoke_models stage from this corpus: figures mean nothing
        home = f"data/{args.name}/models"
        data["paths"] = {"models": home}
        data["systems"] = {
            name: {"model": f"{home}/{name}", "score": score, "max_seq_length": 128, "smoke": True}
            for name, score in SMOKE_SYSTEMS.items()
        }
        data["cross_encoder"] = {
            "name": "smoke-cross-encoder",
            "model": f"{home}/smoke-cross-encoder",
            "max_length": 256,
            "batch_size": 32,
            "smoke": True,
            **ce_addressing,
        }
        data["denoise"] = {"margin": 0.0}  # the smoke CE's logits are nearly constant
        data["hf_export"] = {"margin": 0.0}
        return data
    models = args.model or [DEFAULT_MODEL]
    names = [system_name(m) for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"--model: two models give the same system name ({', '.join(names)})")
    data["systems"] = {
        name: {"model": model, "revision": None, "score": args.score, "max_seq_length": None}
        for name, model in zip(names, models, strict=True)
    }
    ce = args.cross_encoder or DEFAULT_CROSS_ENCODER
    data["cross_encoder"] = {"name": system_name(ce), "model": ce, "revision": None, **ce_addressing}
    return data


HEADER = """\
# Profile `{name}`: a corpus of your own, written by `python -m tasks.profile_init`.
# Compose params.yaml with `python -m tasks.config use {name}`, then `dvc repro` (or
# `python -m flows.pipeline`). conf/base.yaml holds every other setting; `inputs` are derived
# from `datasets` (the files the ingest stage writes). Pin hub models with `revision: <sha>`.
"""


def write_profile(args: argparse.Namespace, conf_dir: Path = CONF) -> Path:
    """Write ``conf_dir/profile/<name>.yaml`` (validated by composing it first)."""
    from tasks.io import write_text_atomic

    if args.name in ("sample", "msmarco", "scale"):
        raise ConfigError(f"profile {args.name!r} is one of the bundled profiles; choose another name")
    path = conf_dir / "profile" / f"{args.name}.yaml"
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    text = HEADER.format(name=args.name) + yaml.safe_dump(profile_data(args), sort_keys=False, width=100)
    with write_text_atomic(path, gz=False) as fh:
        fh.write(text)
    try:
        compose(args.name, conf_dir)
    except ConfigError:
        path.unlink()
        raise
    return path


def parser() -> argparse.ArgumentParser:
    init = argparse.ArgumentParser(
        prog="python -m tasks.profile_init",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("name", help="profile and dataset name (letters, digits, '-', '_')")
    src = init.add_mutually_exclusive_group(required=True)
    src.add_argument("--beir", metavar="DIR", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    src.add_argument(
        "--hf", metavar="DIR", help="a folder of (query, positive) pairs: data files or save_to_disk"
    )
    src.add_argument(
        "--ir-datasets", metavar="ID", help="an ir_datasets id (mined split), e.g. beir/scifact/train"
    )
    init.add_argument("--path", help="ir_datasets: the folder `python -m tasks.ingest fetch` exports to")
    init.add_argument("--ir-eval-id", help="ir_datasets: the id of the evaluation split")
    init.add_argument("--train-split", default="train", help="split whose queries are mined (default train)")
    init.add_argument("--eval-split", default="test", help="split the evaluate stage measures (default test)")
    init.add_argument("--query-column", default="query", help="hf: query column (default query)")
    init.add_argument("--positive-column", default="positive", help="hf: positive column (default positive)")
    init.add_argument("--corpus", help="hf: extra corpus file, relative to the --hf folder")
    init.add_argument("--corpus-column", default="text", help="hf: text column of --corpus (default text)")
    init.add_argument("--hub-id", help="hf: a hub dataset that `tasks.ingest fetch` saves into --hf")
    init.add_argument("--revision", help="hf: the hub dataset's revision (a commit sha)")
    init.add_argument(
        "--model", action="append", help=f"a bi-encoder (hub id or path), repeatable; default {DEFAULT_MODEL}"
    )
    init.add_argument(
        "--score",
        choices=("auto", "cos", "dot"),
        default="auto",
        help="similarity of the --model systems (default auto: the model's own similarity_fn_name)",
    )
    init.add_argument(
        "--cross-encoder", help=f"the cross-encoder (hub id or path); default {DEFAULT_CROSS_ENCODER}"
    )
    init.add_argument(
        "--smoke",
        action="store_true",
        help="use the tiny smoke models (offline, no weights; figures mean nothing)",
    )
    init.add_argument(
        "--incremental",
        action="store_true",
        help="for a corpus that changes: embeddings cached per text, CE scores per pair, ranked lists "
        "kept (encode.addressing text, cross_encoder.addressing pair, mine.incremental), so a refresh "
        "redoes only what changed and ends byte-identical to a full rebuild; each text and pair is then "
        "computed alone (about 0.8x batch speed on CPU, measured; much slower on a GPU)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing profile file")
    init.add_argument("--no-use", action="store_true", help="write the profile only, leave params.yaml")
    return init


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    from tasks.io import write_text_atomic

    args = parser().parse_args(argv)
    try:
        written = write_profile(args)
        sys.stderr.write(f"{relative(written)}: profile {args.name}\n")
        if not args.no_use:
            with write_text_atomic(PARAMS, gz=False) as fh:
                fh.write(compose(args.name))
            sys.stderr.write(f"{PARAMS.name}: profile {args.name}; next: dvc repro\n")
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
