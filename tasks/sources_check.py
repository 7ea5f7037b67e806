"""Has anything upstream changed? Cheap checks for the scheduled refresh, and ``accept``.

The download stage leaves in every raw source directory a ``.source.json`` recording what
it fetched (url, size, md5 and, over HTTP, the ``ETag`` and ``Last-Modified`` it saw). This
module compares each source of the active profile against that record without downloading:

- ``http(s)://``: one ``HEAD`` request; ``Content-Length``, ``ETag`` and ``Last-Modified``
  against the record (a header the server does not send is not compared);
- ``file:``: size and md5; the md5 is computed only when size or mtime moved since the last
  check (a small stat cache per profile, ``paths.downloads/.sources_check/<profile>.json``,
  remembers ``size, mtime_ns -> md5``), so a ``touch`` alone is not a change and an unchanged
  big file is not re-hashed every week;
- both: the registry entry in ``params.yaml`` (url, md5, size) against the record, so an
  edited registry counts as a change too. A source with no record was never downloaded
  (``new``).

Why a changed upstream file is *refused* and not simply downloaded: the registry pins an md5,
and the archive cache is keyed by it (``tasks.download``), so a forced download with the old
pin finds the old bytes, verifies them and keeps them, and the refresh would report success on
stale data every week. A status is therefore ``refused`` when the server (or file) no longer
serves what the record describes while the registry still pins the old file, unless the new
bytes are known to be the pinned ones: a ``file:`` whose md5 is the pin, or an HTTP file whose
size/ETag/Last-Modified equal those kept next to the cached archive of the pinned md5 (written
when ``accept`` fetched exactly those bytes). ``accept`` is the one way to take such a change:

    python -m tasks.sources_check                 # table of every source; exit 1 if any changed
    python -m tasks.sources_check --json          # the same as JSON
    python -m tasks.sources_check accept NAME     # fetch NAME as upstream serves it now, re-pin it

``accept`` fetches the file (never from the cache, never resuming an old ``.part``), hashes it,
files it in the archive cache under its new md5, and only then re-pins ``sources.NAME.md5``
and ``size`` in ``conf/profile/<profile>.yaml`` and regenerates ``params.yaml`` (both written
atomically, the YAML checked to differ in exactly those keys; a rerun after a crash completes
it). It holds the checkout's flow lock (``tasks.locks``), so it never rewrites ``params.yaml``
under a running flow. The next refresh or ``dvc repro`` then re-runs ``download@NAME`` and
what depends on it. When the bytes turn out to be the pinned ones (a server that only changed
its ETag), nothing is re-pinned: the new ETag / Last-Modified are kept beside the cached archive
and the check no longer reports the source as changed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from tasks.config import ROOT, Config, ConfigError, Source, compose, load_config
from tasks.download import RECORD, DownloadError, archive_path, cached_record, fetch_fresh, file_url_path
from tasks.io import DataError, file_digest, read_json, write_json, write_text_atomic
from tasks.locks import EXIT_BUSY, Busy, hold, lock_path

log = logging.getLogger(__name__)

STAT_CACHE_DIR = ".sources_check"
#: the MS MARCO host (Azure blob storage) needs a recent API version for range/HEAD semantics
HEAD_HEADERS = {"User-Agent": "hardnegs-refresh", "X-Ms-Version": "2019-12-12"}
State = Literal["unchanged", "changed", "new", "unknown"]
FIELDS = ("size", "etag", "last_modified")


def accept_command(name: str) -> str:
    """The one command that accepts an upstream change of source ``name`` (run in the checkout)."""
    return f"python -m tasks.sources_check accept {name}"


@dataclass(frozen=True)
class SourceStatus:
    """What one check found: ``state`` and, for a change, one reason per differing field.

    ``recorded``: size/md5/etag/last_modified of the last download; ``seen``: what upstream
    shows now (``md5`` only where it is known without a download); ``pinned``: the registry's
    md5/size. ``upstream_changed``: upstream no longer matches the record. ``accepted``: what
    upstream serves now is known to be what the registry pins.
    """

    name: str
    url: str
    state: State
    reasons: list[str] = field(default_factory=list)
    seen: dict[str, Any] = field(default_factory=dict)
    recorded: dict[str, Any] = field(default_factory=dict)
    pinned: dict[str, Any] = field(default_factory=dict)
    upstream_changed: bool = False
    accepted: bool = False

    @property
    def needs_refresh(self) -> bool:
        return self.state in ("changed", "new")

    @property
    def refused(self) -> bool:
        """Upstream changed and the registry does not (knowingly) pin the new bytes."""
        return self.upstream_changed and not self.accepted


def record_path(cfg: Config, name: str, root: Path = ROOT) -> Path:
    return root / cfg.paths.raw / name / RECORD


def load_record(path: Path) -> dict[str, Any] | None:
    """The download record, or ``None`` if the source was never downloaded."""
    if not path.exists():
        return None
    rec = read_json(path)
    if not isinstance(rec, dict):
        raise DataError(f"{path}: expected a JSON object (the download stage's record); delete it and rerun")
    return rec


def stat_cache_path(cfg: Config, root: Path = ROOT) -> Path:
    return root / cfg.paths.downloads / STAT_CACHE_DIR / f"{cfg.profile}.json"


def _registry_diff(src: Source, rec: dict[str, Any]) -> list[str]:
    reasons = []
    for key in ("url", "md5", "size"):
        want, had = getattr(src, key), rec.get(key)
        if want is not None and had is not None and want != had:
            reasons.append(f"params {key}: {had!r} -> {want!r}")
    return reasons


def head(url: str, timeout_s: float, attempts: int = 3, backoff_s: float = 1.0) -> dict[str, Any]:
    """``HEAD url`` -> ``{"size", "etag", "last_modified"}`` (``None`` where not sent).

    Retries connection errors and 5xx with exponential backoff; a 4xx is raised at once.
    """
    req = urllib.request.Request(url, method="HEAD", headers=HEAD_HEADERS)
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                length = resp.headers.get("Content-Length")
                return {
                    "size": int(length) if length is not None else None,
                    "etag": resp.headers.get("ETag"),
                    "last_modified": resp.headers.get("Last-Modified"),
                }
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts:
                raise ConnectionError(f"HEAD {url}: HTTP {exc.code} {exc.reason}") from None
            err: Exception = exc
        except (urllib.error.URLError, OSError) as exc:
            if attempt == attempts:
                raise ConnectionError(f"HEAD {url}: {exc} (after {attempts} attempts)") from None
            err = exc
        log.warning("HEAD %s failed (%s); retry %d/%d", url, err, attempt, attempts - 1)
        time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _file_md5(path: Path, stat_cache: dict[str, Any]) -> tuple[str, bool]:
    """md5 of ``path``, from ``stat_cache`` when size and mtime_ns are unchanged; (md5, hashed)."""
    st = path.stat()
    key = str(path)
    hit = stat_cache.get(key)
    if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
        return hit["md5"], False
    md5 = file_digest(path)
    stat_cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}
    return md5, True


def _matches_cache(src: Source, seen: dict[str, Any], cached: dict[str, Any] | None) -> bool:
    """Does the server's HEAD describe the bytes cached for the registry's pin?

    Every validator the server sends must equal the one recorded when those bytes were
    fetched (by the download stage or ``accept``), and the cached md5/size must be the pin.
    """
    if not cached or cached.get("url") != src.url:
        return False
    if (src.md5 is not None and cached.get("md5") != src.md5) or (
        src.size is not None and cached.get("size") != src.size
    ):
        return False
    sent = [k for k in FIELDS if seen.get(k) is not None]
    return bool(sent) and all(cached.get(k) == seen[k] for k in sent)


def check_source(
    name: str,
    src: Source,
    rec: dict[str, Any] | None,
    *,
    timeout_s: float = 30.0,
    root: Path = ROOT,
    stat_cache: dict[str, Any] | None = None,
    cached: dict[str, Any] | None = None,
) -> SourceStatus:
    """Compare one source with its download record (see the module docstring).

    ``stat_cache`` (updated in place) lets an unchanged ``file:`` source skip hashing;
    ``cached``: the fetch record kept beside the cached archive of the registry's pin
    (:func:`tasks.download.cached_record`), which tells whether a change was accepted.
    """
    pinned = {"md5": src.md5, "size": src.size}
    if rec is None:
        return SourceStatus(name, src.url, "new", ["never downloaded (no .source.json)"], pinned=pinned)
    recorded = {k: rec.get(k) for k in ("size", "md5", "etag", "last_modified")}
    reasons = _registry_diff(src, rec)
    upstream: list[str] = []
    seen: dict[str, Any]
    if src.url.startswith("file:"):
        path = file_url_path(src.url, root)
        if not path.exists():
            raise FileNotFoundError(f"source {name}: {path} (from {src.url}) does not exist")
        size = path.stat().st_size
        md5, hashed = _file_md5(path, {} if stat_cache is None else stat_cache)
        seen = {"size": size, "md5": md5, "hashed": hashed}
        if rec.get("size") is not None and size != rec["size"]:
            upstream.append(f"size: {rec['size']} -> {size}")
        elif rec.get("md5") is not None and md5 != rec["md5"]:
            upstream.append(f"md5: {rec['md5']} -> {md5}")
        want = src.md5 if src.md5 is not None else (cached or {}).get("md5")
        accepted = want == md5 and src.size in (None, size)
    else:
        seen = head(src.url, timeout_s)
        compared = 0
        for key in FIELDS:
            if seen[key] is not None and rec.get(key) is not None:
                compared += 1
                if seen[key] != rec[key]:
                    upstream.append(f"{key}: {rec[key]!r} -> {seen[key]!r}")
        if not compared and not reasons:
            return SourceStatus(
                name,
                src.url,
                "unknown",
                ["server sent no size, ETag or Last-Modified"],
                seen,
                recorded,
                pinned,
            )
        accepted = _matches_cache(src, seen, cached)
        if upstream and accepted and not reasons and (cached or {}).get("md5") == rec.get("md5"):
            # `accept` fetched what the server sends now: the very bytes of the record
            note = (
                f"{'; '.join(upstream)}, but accept fetched those bytes: md5 {rec.get('md5')}, the pinned one"
            )
            return SourceStatus(name, src.url, "unchanged", [note], seen, recorded, pinned, False, True)
    state: State = "changed" if reasons or upstream else "unchanged"
    return SourceStatus(
        name, src.url, state, reasons + upstream, seen, recorded, pinned, bool(upstream), accepted
    )


def check_all(cfg: Config, names: list[str] | None = None, root: Path = ROOT) -> list[SourceStatus]:
    """Check every source of the profile (or ``names``), in registry order.

    ``root`` is the project checkout whose records (and relative ``file:`` URLs) are checked.
    """
    names = list(cfg.sources) if names is None else names
    unknown = [n for n in names if n not in cfg.sources]
    if unknown:
        raise ConfigError(f"params.yaml: no source(s) {', '.join(unknown)} under 'sources'")
    cache_file = stat_cache_path(cfg, root)
    stat_cache = read_json(cache_file) if cache_file.exists() else {}
    before = dict(stat_cache)
    downloads = root / cfg.paths.downloads
    out = []
    for name in names:
        src = cfg.sources[name]
        st = check_source(
            name,
            src,
            load_record(record_path(cfg, name, root)),
            timeout_s=cfg.orchestration.check_timeout_s,
            root=root,
            stat_cache=stat_cache,
            cached=cached_record(downloads, src),
        )
        flag = " REFUSED: the registry still pins the old file" if st.refused else ""
        log.info(
            "source %s: %s%s%s", name, st.state, f" ({'; '.join(st.reasons)})" if st.reasons else "", flag
        )
        out.append(st)
    if stat_cache != before:
        write_json(cache_file, stat_cache)
    return out


def to_markdown(statuses: list[SourceStatus]) -> str:
    """A table of the checks, for the refresh artifact."""
    rows = ["| source | state | what differs |", "|---|---|---|"]
    for st in statuses:
        state = f"{st.state} (refused)" if st.refused else st.state
        rows.append(f"| `{st.name}` | {state} | {'; '.join(st.reasons) or '-'} |")
    return "\n".join(rows) + "\n"


def _cell(value: Any) -> str:
    return "-" if value is None else f"`{value}`"


def refusal_markdown(statuses: list[SourceStatus], profile: str) -> str:
    """For each refused source: old and new size / ETag / Last-Modified / md5, and the fix."""
    out = []
    for st in statuses:
        if not st.refused:
            continue
        new_md5 = st.seen.get("md5")
        new_md5_cell = (
            _cell(new_md5) if new_md5 else "unknown (not downloaded; `accept` fetches and hashes it)"
        )
        rows = [
            f"### `{st.name}`: changed upstream, the registry still pins the old file",
            "",
            f"URL: `{st.url}` (registry: `sources.{st.name}` in `conf/profile/{profile}.yaml`)",
            "",
            "| | last download | upstream now |",
            "|---|---|---|",
            f"| size | {_cell(st.recorded.get('size'))} | {_cell(st.seen.get('size'))} |",
        ]
        if st.url.startswith(("http://", "https://")):
            for label, key in (("ETag", "etag"), ("Last-Modified", "last_modified")):
                rows.append(f"| {label} | {_cell(st.recorded.get(key))} | {_cell(st.seen.get(key))} |")
        rows.append(f"| md5 | {_cell(st.recorded.get('md5'))} | {new_md5_cell} |")
        rows += [
            "",
            "Nothing was downloaded or recomputed. To take the new file (it is fetched, hashed, filed",
            f"in the archive cache, and `sources.{st.name}` re-pinned in `conf/profile/{profile}.yaml`",
            "and `params.yaml`; then the next refresh re-runs what depends on it), run in the checkout:",
            "",
            "```",
            accept_command(st.name),
            "```",
            "",
        ]
        out += rows
    if out:
        out.append(
            "Every refresh fails like this until the change is accepted; set "
            "`orchestration.refresh_on_change: repin` to accept upstream changes automatically."
        )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- accept
def _scalar(value: str | int) -> str:
    text = str(value)
    return text if yaml.safe_load(text) == value else json.dumps(text)


def _repin_text(text: str, name: str, new: dict[str, Any], where: Path) -> str:
    """``text`` with ``sources.<name>.<key>: value`` set for each of ``new``, nothing else touched.

    A line-level edit (comments and layout stay), checked by parsing both versions: anything
    but exactly those keys differing is an error, and the file is left for a hand edit.
    """
    lines = text.splitlines(keepends=True)
    hand = f"set sources.{name}: " + ", ".join(f"{k}: {v}" for k, v in new.items()) + f" in {where} by hand"

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    def content(i: int) -> bool:
        return bool(lines[i].strip()) and not lines[i].lstrip().startswith("#")

    top = next((i for i, ln in enumerate(lines) if re.match(r"sources:\s*(#.*)?$", ln.rstrip("\n"))), None)
    if top is None:
        raise ConfigError(f"{where}: no top-level 'sources:' block; {hand}")
    start, child = None, None
    for i in range(top + 1, len(lines)):
        if not content(i):
            continue
        if indent(lines[i]) == 0:
            break
        child = indent(lines[i]) if child is None else child
        if indent(lines[i]) == child and re.match(rf"\s*{re.escape(name)}:\s*(#.*)?$", lines[i].rstrip("\n")):
            start = i
            break
    if start is None or child is None:
        raise ConfigError(f"{where}: no block 'sources.{name}:' (block style) to re-pin; {hand}")
    end, key_indent = start + 1, None
    while end < len(lines) and (not content(end) or indent(lines[end]) > child):
        if content(end) and key_indent is None:
            key_indent = indent(lines[end])
        end += 1
    if key_indent is None:
        raise ConfigError(f"{where}: sources.{name} is empty; {hand}")
    out = list(lines)
    for key, value in new.items():
        pattern = re.compile(rf"^( {{{key_indent}}}{key}:[ \t]*)([^#\n]*?)([ \t]*#.*)?(\n?)$")
        hits = [i for i in range(start + 1, end) if pattern.match(out[i])]
        if hits:
            m = pattern.match(out[hits[0]])
            assert m is not None
            out[hits[0]] = f"{m.group(1)}{_scalar(value)}{m.group(3) or ''}{m.group(4)}"
        else:  # e.g. no size yet: add it after the last key of the block
            last = max(i for i in range(start + 1, end) if content(i))
            if not out[last].endswith("\n"):
                out[last] += "\n"
            out.insert(last + 1, f"{' ' * key_indent}{key}: {_scalar(value)}\n")
            end += 1
    result = "".join(out)
    want = copy.deepcopy(yaml.safe_load(text))
    want["sources"][name].update(new)
    if yaml.safe_load(result) != want:
        raise ConfigError(f"{where}: could not re-pin sources.{name} by a line edit; {hand}")
    return result


def _profile_values(text: str, name: str, where: Path) -> dict[str, Any]:
    data = yaml.safe_load(text) or {}
    entry = (data.get("sources") or {}).get(name)
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: no sources.{name} entry to re-pin")
    return entry


def _composed(root: Path, profile: str, profile_text: str) -> str:
    """``params.yaml`` as ``python -m tasks.config use <profile>`` writes it, for ``profile_text``."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp)
        (conf / "profile").mkdir()
        (conf / "base.yaml").write_text(
            (root / "conf" / "base.yaml").read_text(encoding="utf-8"), encoding="utf-8"
        )
        (conf / "profile" / f"{profile}.yaml").write_text(profile_text, encoding="utf-8")
        return compose(profile, conf)


def repin(root: Path, profile: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> list[Path]:
    """Set ``sources.<name>`` md5/size to ``new`` in the profile file and ``params.yaml``.

    Each file must hold ``old`` (or already ``new``: a rerun after a crash between the two
    writes completes it). ``params.yaml`` is regenerated from conf when it was generated
    (its text equals ``compose(profile)``); with local edits it is re-pinned in place.
    Both new texts are built and validated before either file is replaced. Returns the
    files written.
    """
    conf_file = root / "conf" / "profile" / f"{profile}.yaml"
    params_file = root / "params.yaml"
    texts, todo = {}, []
    for path in (conf_file, params_file):
        if not path.exists():
            raise ConfigError(f"{path}: missing; cannot re-pin sources.{name}")
        texts[path] = path.read_text(encoding="utf-8")
        have = {k: _profile_values(texts[path], name, path).get(k) for k in new}
        if have == new:
            continue
        if have != {k: old.get(k) for k in new}:
            raise ConfigError(
                f"{path}: sources.{name} has {have}, neither the pinned {old} nor the new {new}; make "
                f"conf/profile/{profile}.yaml and params.yaml agree (python -m tasks.config use {profile}) "
                "and rerun"
            )
        todo.append(path)
    out: dict[Path, str] = {}
    if conf_file in todo:
        out[conf_file] = _repin_text(texts[conf_file], name, new, conf_file)
    if params_file in todo:
        generated = conf_file in todo and _composed(root, profile, texts[conf_file]) == texts[params_file]
        if generated:
            out[params_file] = _composed(root, profile, out[conf_file])
        else:
            log.info("%s is not what conf composes (local edits): re-pinning it in place", params_file)
            out[params_file] = _repin_text(texts[params_file], name, new, params_file)
        try:
            Config.model_validate(yaml.safe_load(out[params_file]))
        except ValidationError as exc:
            raise ConfigError(f"{params_file}: re-pinned sources.{name} is invalid: {exc}") from None
    for path, text in out.items():  # the profile first: a crash in between is repaired by a rerun
        with write_text_atomic(path, gz=False) as fh:
            fh.write(text)
    return list(out)


def accept(name: str, params: Path, root: Path = ROOT) -> dict[str, Any]:
    """Fetch source ``name`` as upstream serves it now, file it under its md5, re-pin the registry.

    Returns ``{name, old_md5, new_md5, old_size, new_size, etag, last_modified, repinned}``
    (``repinned``: the files rewritten, empty when the bytes are the pinned ones).
    """
    # the checkout's flow lock: no flow run reads params.yaml while it is re-pinned (reentrant,
    # so the refresh flow, which holds it, can call this for refresh_on_change: repin)
    held = contextlib.ExitStack()
    try:
        held.enter_context(hold(lock_path("flow", root), f"python -m tasks.sources_check accept {name}"))
    except Busy as exc:  # name the holder (a flow run), not this command
        raise Busy(exc.path, exc.holder.get("what") or "a flow run on this checkout", exc.holder) from None
    with held:
        return _accept(name, params, root)


def _accept(name: str, params: Path, root: Path) -> dict[str, Any]:
    cfg = load_config(params)
    if name not in cfg.sources:
        raise ConfigError(f"{params}: no source {name!r} under 'sources' (known: {', '.join(cfg.sources)})")
    src = cfg.sources[name]
    previous = archive_path(root / cfg.paths.downloads, src)
    archive, rec = fetch_fresh(name, src, root / cfg.paths.downloads, cfg.download, root)
    old = {"md5": src.md5, "size": src.size}
    new = {
        "md5": rec["md5"] if src.md5 is not None else None,  # md5: null stays null (keyed by URL)
        "size": rec["size"] if src.size is not None else None,
    }
    changes = {k: v for k, v in new.items() if v != old[k]}
    files = repin(root, cfg.profile, name, old, changes) if changes else []
    result = {
        "name": name,
        "old_md5": src.md5,
        "new_md5": rec["md5"],
        "old_size": src.size,
        "new_size": rec["size"],
        "etag": rec.get("etag"),
        "last_modified": rec.get("last_modified"),
        "repinned": [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in files],
    }
    if previous != archive and previous.exists():
        log.info(
            "the archive of the old pin stays at %s (%.1f MB): a checkout or profile that pins md5 %s "
            "finds it there; delete its directory to reclaim the space",
            previous, previous.stat().st_size / 1e6, src.md5,
        )  # fmt: skip
    if files:
        log.info(
            "accepted %s: md5 %s -> %s, size %s -> %s; re-pinned in %s. Commit them; the next refresh "
            "(or dvc repro) re-runs download@%s and what depends on it",
            name, src.md5, rec["md5"], src.size, rec["size"], ", ".join(result["repinned"]), name,
        )  # fmt: skip
    else:
        log.info(
            "accepted %s: the upstream bytes are the pinned ones (md5 %s, %d bytes); their new "
            "ETag/Last-Modified are kept with the cached archive, so the refresh no longer flags them",
            name, rec["md5"], rec["size"],
        )  # fmt: skip
    return result


# --------------------------------------------------------------------------- CLI
def _accept_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.sources_check accept",
        description="Accept an upstream change of one source: fetch it as the server (or file:) serves "
        "it now (never from the cache), hash it, file it in the archive cache under its md5, then "
        "re-pin sources.NAME md5/size in conf/profile/<profile>.yaml and regenerate params.yaml "
        "(nothing is rewritten unless the fetch succeeded). Exit 0 accepted, 1 the fetch failed, "
        "2 bad params or a registry that cannot be re-pinned by a line edit, 3 an OS error, "
        "4 a flow run holds this checkout.",
        epilog="example: python -m tasks.sources_check accept dl19_qrels && python -m flows.refresh",
    )
    parser.add_argument("name", help="the source (a key of 'sources' in params.yaml)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="default: params.yaml")
    args = parser.parse_args(argv)
    try:
        accept(args.name, args.params, ROOT)
    except Busy as exc:
        log.error("%s", exc)
        return EXIT_BUSY
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except (DownloadError, DataError) as exc:
        log.error("%s: %s", args.name, exc)
        return 1
    except OSError as exc:
        log.error("%s: %s (check free space and permissions, then rerun)", args.name, exc)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["accept"]:
        return _accept_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m tasks.sources_check",
        description=(
            "Check each upstream source of the active profile against what the download stage\n"
            "recorded (.source.json), without downloading: HTTP HEAD (size, ETag, Last-Modified)\n"
            "or, for file: URLs, size + mtime + md5. A source changed upstream while the registry\n"
            "still pins the old file is marked 'refused' (the refresh will not take it);\n"
            "`python -m tasks.sources_check accept NAME` takes the change (see `accept --help`).\n"
            "Exit 0 nothing changed, 1 something did, 2 on errors."
        ),
        epilog="examples:\n  python -m tasks.sources_check --params params.yaml --json\n"
        "  python -m tasks.sources_check accept dl19_qrels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="default: params.yaml")
    parser.add_argument("--source", action="append", help="check only this source (repeatable)")
    parser.add_argument("--json", action="store_true", help="write the statuses as JSON to stdout")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.params)
        statuses = check_all(cfg, args.source)
    except (ConfigError, DataError, ConnectionError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    if args.json:
        out = json.dumps([asdict(s) | {"refused": s.refused} for s in statuses], indent=2)
    else:
        out = to_markdown(statuses)
        if any(s.refused for s in statuses):
            out += "\n" + refusal_markdown(statuses, cfg.profile)
    sys.stdout.write(out + os.linesep)
    return 1 if any(s.needs_refresh for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
