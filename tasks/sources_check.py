"""Cheap "has anything upstream changed?" checks for the scheduled refresh.

The download stage leaves in every raw source directory a ``.source.json`` recording what
it fetched (url, size, md5 and, over HTTP, the ``ETag`` and ``Last-Modified`` it saw). This
module compares each source of the active profile against that record without downloading:

- ``http(s)://``: one ``HEAD`` request; ``Content-Length``, ``ETag`` and ``Last-Modified``
  against the record (a header the server does not send is not compared);
- ``file:``: size first; then the md5, which is computed only when size or mtime moved since
  the last check (a small stat cache, ``paths.downloads/.sources_check.json``, remembers
  ``size, mtime_ns -> md5``), so a ``touch`` alone is not a change and an unchanged big file
  is not re-hashed every week;
- both: the registry entry in ``params.yaml`` (url, md5, size) against the record, so an
  edited registry counts as a change too. A source with no record was never downloaded
  (``new``).

    python -m tasks.sources_check                 # table of every source; exit 1 if any changed
    python -m tasks.sources_check --json          # the same as JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.config import ROOT, Config, ConfigError, Source, load_config
from tasks.download import RECORD, file_url_path
from tasks.io import DataError, file_digest, read_json, write_json

log = logging.getLogger(__name__)

STAT_CACHE = ".sources_check.json"
#: the MS MARCO host (Azure blob storage) needs a recent API version for range/HEAD semantics
HEAD_HEADERS = {"User-Agent": "hardnegs-refresh", "X-Ms-Version": "2019-12-12"}
State = Literal["unchanged", "changed", "new", "unknown"]


@dataclass(frozen=True)
class SourceStatus:
    """What one check found: ``state`` and, for a change, one reason per differing field."""

    name: str
    url: str
    state: State
    reasons: list[str] = field(default_factory=list)
    seen: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_refresh(self) -> bool:
        return self.state in ("changed", "new")


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


def check_source(
    name: str,
    src: Source,
    rec: dict[str, Any] | None,
    *,
    timeout_s: float = 30.0,
    root: Path = ROOT,
    stat_cache: dict[str, Any] | None = None,
) -> SourceStatus:
    """Compare one source with its download record (see the module docstring).

    ``stat_cache`` (updated in place) lets an unchanged ``file:`` source skip hashing.
    """
    if rec is None:
        return SourceStatus(name, src.url, "new", ["never downloaded (no .source.json)"])
    reasons = _registry_diff(src, rec)
    seen: dict[str, Any]
    if src.url.startswith("file:"):
        path = file_url_path(src.url, root)
        if not path.exists():
            raise FileNotFoundError(f"source {name}: {path} (from {src.url}) does not exist")
        size = path.stat().st_size
        seen = {"size": size}
        if rec.get("size") is not None and size != rec["size"]:
            reasons.append(f"size: {rec['size']} -> {size}")
        else:
            seen["md5"], seen["hashed"] = _file_md5(path, {} if stat_cache is None else stat_cache)
            if rec.get("md5") is not None and seen["md5"] != rec["md5"]:
                reasons.append(f"md5: {rec['md5']} -> {seen['md5']}")
    else:
        seen = head(src.url, timeout_s)
        compared = 0
        for key in ("size", "etag", "last_modified"):
            if seen[key] is not None and rec.get(key) is not None:
                compared += 1
                if seen[key] != rec[key]:
                    reasons.append(f"{key}: {rec[key]!r} -> {seen[key]!r}")
        if not compared and not reasons:
            return SourceStatus(
                name, src.url, "unknown", ["server sent no size, ETag or Last-Modified"], seen
            )
    return SourceStatus(name, src.url, "changed" if reasons else "unchanged", reasons, seen)


def check_all(cfg: Config, names: list[str] | None = None, root: Path = ROOT) -> list[SourceStatus]:
    """Check every source of the profile (or ``names``), in registry order.

    ``root`` is the project checkout whose records (and relative ``file:`` URLs) are checked.
    """
    names = list(cfg.sources) if names is None else names
    unknown = [n for n in names if n not in cfg.sources]
    if unknown:
        raise ConfigError(f"params.yaml: no source(s) {', '.join(unknown)} under 'sources'")
    cache_file = root / cfg.paths.downloads / STAT_CACHE
    stat_cache = read_json(cache_file) if cache_file.exists() else {}
    before = dict(stat_cache)
    out = []
    for name in names:
        st = check_source(
            name,
            cfg.sources[name],
            load_record(record_path(cfg, name, root)),
            timeout_s=cfg.orchestration.check_timeout_s,
            root=root,
            stat_cache=stat_cache,
        )
        log.info("source %s: %s%s", name, st.state, f" ({'; '.join(st.reasons)})" if st.reasons else "")
        out.append(st)
    if stat_cache != before:
        write_json(cache_file, stat_cache)
    return out


def to_markdown(statuses: list[SourceStatus]) -> str:
    """A table of the checks, for the refresh artifact."""
    rows = ["| source | state | what differs |", "|---|---|---|"]
    for st in statuses:
        rows.append(f"| `{st.name}` | {st.state} | {'; '.join(st.reasons) or '-'} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.sources_check",
        description="Check each upstream source of the active profile against what the download "
        "stage recorded (.source.json), without downloading: HTTP HEAD (size, ETag, Last-Modified) "
        "or, for file: URLs, size + mtime + md5. Exit 0 if nothing changed, 1 if something did.",
        epilog="example: python -m tasks.sources_check --params params.yaml --json",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--source", action="append", help="check only this source (repeatable)")
    parser.add_argument("--json", action="store_true", help="write the statuses as JSON to stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        statuses = check_all(load_config(args.params), args.source)
    except (ConfigError, DataError, ConnectionError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    out = json.dumps([asdict(s) for s in statuses], indent=2) if args.json else to_markdown(statuses)
    sys.stdout.write(out + os.linesep)
    return 1 if any(s.needs_refresh for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
