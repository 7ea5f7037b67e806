"""Provenance records: what produced a published output or an export, in one JSON format.

Every published-format output (``msmarco-hard-negatives.jsonl.gz``, its denoised twin, the CE
score pickle) gets a sidecar ``<output>.provenance.json``; an output directory (``paths.exports``,
each dataset folder under ``paths.hf``) holds a ``provenance.json``. A record names

- ``stage``: the ``dvc.yaml`` stage that wrote it;
- ``outputs``: the files it describes (path, md5, size);
- ``inputs``: every data file the stage depends on (``deps`` of its ``dvc.yaml`` stage other than
  code under ``tasks/`` / ``flows/`` and ``${paths.models}``, whose models are recorded by content
  under ``models``), a directory expanded into its files: path, md5 (streamed), size;
- ``sources``: the pins (name, url, md5, size) of the ``sources`` whose downloads those inputs are;
- ``models``: per model the params id/path and requested revision, and ``resolved``, what the
  weights are: a local directory by the sha256 over its files' relative paths and bytes
  (``dir-sha256:...``, the identity ``encode`` and ``score`` key their caches by), a hub id by its
  pinned commit, else the commit of the snapshot in the local Hugging Face cache (what an offline
  load reads), else -- hub reachable and neither ``HF_HUB_OFFLINE`` nor ``TRANSFORMERS_OFFLINE``
  set -- ``HfApi().model_info(id, revision).sha``. When the hub names another commit than the
  cached snapshot, ``hub_commit`` says so (the cache is behind the hub);
- ``packages``: versions of the packages that shape the bytes (those installed) and Python;
- ``params``: the values, from the validated config, of the params keys the stage declares in
  ``dvc.yaml``. Read from ``dvc.yaml`` rather than listed in each stage, so that the record names
  exactly the params whose change makes DVC rerun the stage, and the two cannot drift apart.

Records are deterministic: sorted keys, no timestamps, hostnames or absolute paths. A path inside
the checkout is written relative to its root; one outside it (params with absolute paths) as
``${paths.<key>}/<relative path>`` under the configured path that holds it. So the same inputs,
code and params give byte-identical records in any checkout, cwd and environment.

    python -m tasks.provenance show data/sample/out/msmarco-hard-negatives.jsonl.gz
    python -m tasks.provenance verify data/sample/exports/provenance.json
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from tasks.config import ROOT, Config, ConfigError, load_config
from tasks.io import LEFTOVER_KINDS, DataError, dumps_json, file_digest, read_json, write_json
from tasks.models import hub_cache_commit, is_commit, model_location, model_revision

log = logging.getLogger(__name__)

FORMAT = 1
SIDECAR_SUFFIX = ".provenance.json"
DIR_SIDECAR = "provenance.json"
DVC_YAML = ROOT / "dvc.yaml"
PROJECT = "hardnegs"
# the packages whose versions can change an output's bytes (reported only when installed)
PACKAGES = (
    PROJECT, "numpy", "torch", "transformers", "sentence-transformers", "tokenizers", "faiss-cpu",
    "pyarrow", "pandas", "dvc", "prefect",
)  # fmt: skip
CODE_DIRS = ("tasks", "flows")
HUB_TIMEOUT_S = 10.0
_LEFTOVER = re.compile(rf"^\..+\.(\d+\.({'|'.join(LEFTOVER_KINDS)})|old)$")  # tasks.io temporaries
_REF = re.compile(r"\$\{([^}]+)\}")


# --------------------------------------------------------------------------- paths
def sidecar_path(output: str | Path) -> Path:
    """Where the record of ``output`` lives: ``<file>.provenance.json``, ``<dir>/provenance.json``."""
    output = Path(output)
    return output / DIR_SIDECAR if output.is_dir() else output.with_name(output.name + SIDECAR_SUFFIX)


def display_path(path: str | Path, cfg: Config | None = None) -> str:
    """``path`` as a record names it: relative to the checkout's root, else relative to the
    configured ``paths.<key>`` that holds it (``${paths.raw}/x.tsv``), else ``<outside>/<name>``."""
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        pass
    if cfg is not None:
        best: tuple[int, str] | None = None
        for key in type(cfg.paths).model_fields:
            base = Path(os.path.abspath(cfg.path(key)))
            if p.is_relative_to(base) and (best is None or len(base.parts) > best[0]):
                best = (len(base.parts), f"${{paths.{key}}}/{p.relative_to(base).as_posix()}")
        if best is not None:
            return best[1].removesuffix("/.")
    return f"<outside>/{p.name}"


def locate(shown: str, cfg: Config | None) -> Path | None:
    """The file a record's path names (the inverse of :func:`display_path`); None if it cannot
    be placed (``<outside>/...``, or ``${paths...}`` without a config)."""
    if shown.startswith("<outside>/"):
        return None
    if "${" in shown:
        if cfg is None:
            return None
        return ROOT / interpolate(shown, cfg.model_dump(mode="json"), "record")
    return ROOT / shown


def file_entry(path: Path, cfg: Config | None = None, shown: str | None = None) -> dict[str, Any]:
    """``{"path", "md5", "size"}`` of one file (md5 streamed); a missing file has nulls and
    ``"missing": true`` (and a warning)."""
    entry: dict[str, Any] = {"path": shown or display_path(path, cfg)}
    if not path.is_file():
        log.warning("provenance: %s is declared but absent; recorded as missing", path)
        return {**entry, "md5": None, "size": None, "missing": True}
    return {**entry, "md5": file_digest(path), "size": path.stat().st_size}


def files_under(path: Path) -> list[Path]:
    """``path`` itself, or every file below the directory ``path`` (sorted; tasks.io temporaries
    and provenance records skipped)."""
    if not path.is_dir():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(_LEFTOVER.match(part) for part in p.relative_to(path).parts)
        and p.name != DIR_SIDECAR
        and not p.name.endswith(SIDECAR_SUFFIX)
    )


# --------------------------------------------------------------------------- dvc.yaml
def interpolate(text: str, values: Mapping[str, Any], where: str) -> str:
    """``${a.b}`` in ``text`` replaced by ``values["a"]["b"]`` (DVC's interpolation of params)."""

    def one(match: re.Match[str]) -> str:
        return str(lookup(values, match.group(1), where))

    return _REF.sub(one, text)


def lookup(values: Mapping[str, Any], dotted: str, where: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{where}: names {dotted!r}, which the config does not have")
        node = node[part]
    return node


def stage_declaration(stage: str, dvc_yaml: Path = DVC_YAML) -> tuple[list[str], list[str]]:
    """The ``deps`` and ``params`` of ``stage`` in ``dvc.yaml``, as written (not interpolated)."""
    if not dvc_yaml.is_file():
        raise ConfigError(
            f"{dvc_yaml}: no such file; provenance reads stage {stage!r}'s deps and params from it"
        )
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    except yaml.YAMLError as exc:
        raise ConfigError(f"{dvc_yaml}: not valid YAML: {exc}") from None
    body = stages.get(stage)
    if not isinstance(body, dict) or "cmd" not in body:
        raise ConfigError(
            f"{dvc_yaml}: no single stage {stage!r} (foreach stages have no provenance records)"
        )
    deps, params = body.get("deps", []), body.get("params", [])
    for kind, items in (("deps", deps), ("params", params)):
        if not all(isinstance(x, str) for x in items):
            raise ConfigError(f"{dvc_yaml}: stages.{stage}.{kind}: only plain entries are supported")
    return list(deps), list(params)


def stage_inputs(cfg: Config, stage: str, dvc_yaml: Path = DVC_YAML) -> list[Path]:
    """The data files ``stage`` depends on (module docstring: code and ``${paths.models}`` left out)."""
    deps, _ = stage_declaration(stage, dvc_yaml)
    values = cfg.model_dump(mode="json")
    out: list[Path] = []
    for dep in deps:
        if dep.split("/")[0] in CODE_DIRS or dep == "${paths.models}":
            continue
        out += files_under(ROOT / interpolate(dep, values, f"{dvc_yaml}: stages.{stage}.deps"))
    return out


def stage_params(cfg: Config, stage: str, dvc_yaml: Path = DVC_YAML) -> dict[str, Any]:
    """``{declared key: its validated value}`` for the params keys of ``stage`` in ``dvc.yaml``."""
    _, keys = stage_declaration(stage, dvc_yaml)
    values = cfg.model_dump(mode="json")
    return {key: lookup(values, key, f"{dvc_yaml}: stages.{stage}.params") for key in keys}


def source_pins(cfg: Config, inputs: Iterable[Path]) -> list[dict[str, Any]]:
    """The ``sources`` pins of the downloads (``paths.raw/<source>/...``) among ``inputs``."""
    raw = Path(os.path.abspath(cfg.path("raw")))
    names = set()
    for path in inputs:
        p = Path(os.path.abspath(path))
        if p.is_relative_to(raw) and p != raw:
            names.add(p.relative_to(raw).parts[0])
    return [
        {"name": n, "url": cfg.sources[n].url, "md5": cfg.sources[n].md5, "size": cfg.sources[n].size}
        for n in sorted(names)
        if n in cfg.sources
    ]


# --------------------------------------------------------------------------- packages
def package_versions() -> dict[str, str]:
    """Python and the installed :data:`PACKAGES` (absent ones left out; no git commit)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


# --------------------------------------------------------------------------- models
def hub_offline() -> bool:
    """True when the environment forbids the hub (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    truthy = {"1", "ON", "YES", "TRUE"}
    return any(
        os.environ.get(v, "").strip().upper() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_commit(model: str, revision: str | None) -> str | None:
    """The commit the hub resolves ``model`` at ``revision`` (None: main) to; None offline or
    when the hub cannot be reached or does not know it (logged)."""
    if hub_offline():
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    try:
        sha = HfApi().model_info(model, revision=revision, timeout=HUB_TIMEOUT_S).sha
    except (OSError, HTTPError, ValueError) as exc:
        log.info(
            "provenance: the hub did not resolve %s@%s (%s); using the local cache only", model, revision, exc
        )
        return None
    return sha if is_commit(sha) else None


def is_hub_id(model: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def resolve_model(
    role: str, model: str | None, revision: str | None, cfg: Config | None = None, known: str | None = None
) -> dict[str, Any]:
    """One ``models`` entry (module docstring). ``known``: a local directory's ``dir-sha256:``
    already computed by the stage (``score``'s manifest), so its weights are hashed once."""
    entry: dict[str, Any] = {"role": role, "model": model, "revision": revision}
    if model is None:
        return {**entry, "kind": "none", "resolved": None}
    location = Path(model_location(model))
    if location.is_dir():
        resolved = (
            known if known and known.startswith("dir-sha256:") else model_revision(str(location), revision)
        )
        return {**entry, "model": display_path(location, cfg), "kind": "local-dir", "resolved": resolved}
    if not is_hub_id(model):
        log.warning(
            "provenance: %s: %s is neither a local directory nor a hub id; recorded unresolved", role, model
        )
        return {**entry, "kind": "absent", "resolved": None}
    if is_commit(revision):
        return {**entry, "kind": "hub", "resolved": revision}
    cached = hub_cache_commit(model, revision)
    online = hub_commit(model, revision)
    entry |= {"kind": "hub", "resolved": cached or online}
    if cached and online and online != cached:
        log.warning(
            "provenance: %s: the local HF cache holds %s@%s, the hub now names %s",
            role,
            model,
            cached,
            online,
        )
        entry["hub_commit"] = online
    if entry["resolved"] is None:
        log.warning(
            "provenance: %s: %s@%s is neither cached nor resolvable on the hub", role, model, revision
        )
    return entry


def stage_models(
    cfg: Config, systems: bool, cross_encoder: bool, known: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The ``models`` entries of a stage: every bi-encoder of ``systems`` and/or the cross-encoder,
    each resolved once (``known``: role -> identity the stage already computed)."""
    known = known or {}
    wanted: list[tuple[str, str | None, str | None]] = []
    if systems:
        wanted += [(f"systems.{n}", s.model, s.revision) for n, s in sorted(cfg.systems.items())]
    if cross_encoder:
        wanted.append(("cross_encoder", cfg.cross_encoder.model, cfg.cross_encoder.revision))
    seen: dict[tuple[str | None, str | None], dict[str, Any]] = {}  # one model under two roles: hashed once
    out = []
    for role, model, revision in wanted:
        if (model, revision) not in seen:
            seen[(model, revision)] = resolve_model(role, model, revision, cfg, known.get(role))
        out.append({**seen[(model, revision)], "role": role})
    return out


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class StageRecord:
    """What one stage run records for all its outputs: built once by :func:`collect` (inputs
    hashed, models resolved), then completed per output file or folder by :meth:`complete`."""

    cfg: Config
    base: Mapping[str, Any]

    def complete(self, outputs: Mapping[Path, Path]) -> dict[str, Any]:
        """The record with its ``outputs``: ``{final path: file to hash}`` (the same path, or the
        file in a staging directory that is renamed to the final one)."""
        cfg = self.cfg
        entries = [file_entry(actual, cfg, display_path(final, cfg)) for final, actual in outputs.items()]
        return {**self.base, "outputs": sorted(entries, key=lambda e: e["path"])}

    def write(self, outputs: Mapping[Path, Path], sidecar: Path) -> dict[str, Any]:
        """Complete the record with ``outputs`` and write it (atomically, canonical JSON) to ``sidecar``."""
        record = self.complete(outputs)
        write_json(sidecar, record)
        log.info("provenance: wrote %s", sidecar)
        return record


def collect(
    cfg: Config, stage: str, models: Sequence[Mapping[str, Any]], dvc_yaml: Path = DVC_YAML
) -> StageRecord:
    """Everything of ``stage``'s records but their ``outputs``: inputs (hashed now), sources,
    models, packages and params."""
    inputs = stage_inputs(cfg, stage, dvc_yaml)
    base = {
        "format": FORMAT,
        "stage": stage,
        "inputs": sorted((file_entry(p, cfg) for p in inputs), key=lambda e: e["path"]),
        "sources": source_pins(cfg, inputs),
        "models": sorted((dict(m) for m in models), key=lambda m: m["role"]),
        "packages": package_versions(),
        "params": stage_params(cfg, stage, dvc_yaml),
    }
    return StageRecord(cfg, base)


def record_file(cfg: Config, stage: str, output: Path, models: Sequence[Mapping[str, Any]]) -> Path:
    """Collect and write the record of one output file beside it; returns the sidecar's path."""
    sidecar = sidecar_path(output)
    collect(cfg, stage, models).write({output: output}, sidecar)
    return sidecar


def card_section(record: Mapping[str, Any], sidecar_name: str = DIR_SIDECAR) -> str:
    """The record as a Markdown section for a dataset card (the JSON stays the full record)."""

    def digest(e: Mapping[str, Any]) -> str:
        return "missing" if e.get("missing") else f"md5 {e['md5']}, {e['size']} bytes"

    lines = [
        "## Provenance",
        "",
        f"Written by the `{record['stage']}` stage; the full record is `{sidecar_name}` "
        "(`python -m tasks.provenance verify` re-hashes the inputs).",
        "",
        "Inputs:",
        "",
        *(f"- `{e['path']}`: {digest(e)}" for e in record["inputs"]),
    ]
    if record["sources"]:
        lines += ["", "Sources:", ""]
        lines += [f"- `{s['name']}`: {s['url']} (md5 {s['md5']})" for s in record["sources"]]
    if record["models"]:
        lines += ["", "Models:", ""]
        for m in record["models"]:
            asked = f"@{m['revision']}" if m["revision"] else ""
            lines.append(f"- `{m['role']}`: `{m['model']}`{asked} -> {m['resolved'] or 'unresolved'}")
    packages = ", ".join(f"{k} {v}" for k, v in sorted(record["packages"].items()))
    return "\n".join([*lines, "", f"Packages: {packages}.", ""]) + "\n"


# --------------------------------------------------------------------------- CLI
def load_record(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The record of ``path`` (a record itself, or an output / output directory that has one)."""
    path = Path(path)
    sidecar = path if path.name.endswith(SIDECAR_SUFFIX) or path.name == DIR_SIDECAR else sidecar_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"{sidecar}: no provenance record (is {path} an output of merge, score, denoise, export or "
            "hf_export? an output written before records existed has none: rerun its stage)"
        )
    record = read_json(sidecar)
    keys = ("format", "stage", "inputs", "outputs", "models", "packages", "params")
    missing = [k for k in keys if not isinstance(record, dict) or k not in record]
    if missing:
        raise DataError(f"{sidecar}: not a provenance record (lacks {', '.join(missing) or 'a JSON object'})")
    if record["format"] != FORMAT:
        raise DataError(f"{sidecar}: record format {record['format']}, this code reads {FORMAT}")
    return sidecar, record


def verify(record: Mapping[str, Any], cfg: Config | None) -> list[str]:
    """Re-hash every input and output the record names; one line per file that differs."""
    problems = []
    for kind in ("inputs", "outputs"):
        for e in record[kind]:
            path = locate(e["path"], cfg)
            if path is None:
                problems.append(f"{kind[:-1]} {e['path']}: cannot be located (pass --params with its paths)")
            elif not path.is_file():
                if not e.get("missing"):
                    problems.append(f"{kind[:-1]} {e['path']}: missing now (was md5 {e['md5']})")
            elif e.get("missing"):
                problems.append(f"{kind[:-1]} {e['path']}: present now, absent when recorded")
            elif (size := path.stat().st_size) != e["size"] or (md5 := file_digest(path)) != e["md5"]:
                now = f"{size} bytes" if size != e["size"] else f"md5 {md5}"
                was = f"{e['size']} bytes" if size != e["size"] else f"md5 {e['md5']}"
                problems.append(f"{kind[:-1]} {e['path']}: changed ({was} -> {now})")
    return problems


def describe(record: Mapping[str, Any]) -> str:
    """A readable summary of a record (``show``)."""
    lines = [f"stage: {record['stage']}", "outputs:"]
    lines += [f"  {e['path']}  md5 {e['md5']}  {e['size']} bytes" for e in record["outputs"]]
    lines += ["inputs:", *(f"  {e['path']}  md5 {e['md5']}  {e['size']} bytes" for e in record["inputs"])]
    lines += ["sources:", *(f"  {s['name']}  {s['url']}  md5 {s['md5']}" for s in record.get("sources", []))]
    lines.append("models:")
    for m in record["models"]:
        asked = f"revision {m['revision']}"
        lines.append(f"  {m['role']}: {m['model']} ({asked}) -> {m['resolved']} [{m['kind']}]")
    lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in sorted(record["packages"].items())))
    lines.append("params:")
    lines += ["  " + line for line in yaml.safe_dump(record["params"], sort_keys=True).splitlines()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.provenance",
        description="Read the provenance records that merge, score, denoise, export and hf_export write "
        "beside their outputs (<file>.provenance.json, <dir>/provenance.json): which input files (md5), "
        "source pins, models (resolved revision or content hash), package versions and params produced "
        "an output. FILE may be the record or the output it describes.",
        epilog="examples: python -m tasks.provenance show data/sample/out/msmarco-hard-negatives.jsonl.gz; "
        "python -m tasks.provenance verify data/sample/hf/msmarco-bm25 (exit 1 when a file changed)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="print a record as a readable summary (--json: as stored)")
    show.add_argument("file", type=Path)
    show.add_argument("--json", action="store_true", help="print the stored JSON")
    check = sub.add_parser(
        "verify", help="re-hash the inputs and outputs a record names and say which changed (exit 1 if any)"
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params file to place ${paths.*} entries (paths outside the checkout); default: params.yaml "
        "of the checkout when the record has such entries",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        sidecar, record = load_record(args.file)
        if args.cmd == "show":
            sys.stdout.write(dumps_json(record) if args.json else describe(record))
            return 0
        entries = [e["path"] for k in ("inputs", "outputs") for e in record[k]]
        cfg = None
        if args.params is not None or any("${" in p for p in entries):
            cfg = load_config(args.params or ROOT / "params.yaml")
        problems = verify(record, cfg)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except (DataError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    for line in problems:
        sys.stdout.write(f"{sidecar}: {line}\n")
    n = len(record["inputs"]) + len(record["outputs"])
    sys.stdout.write(f"{sidecar}: {n - len(problems)} of {n} file(s) as recorded\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
