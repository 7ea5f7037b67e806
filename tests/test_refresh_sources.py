"""Upstream change detection against a real HTTP server and real files (no downloads)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml

from tasks.config import PARAMS, Config, Source
from tasks.sources_check import RECORD, check_all, check_source, main, to_markdown
from tests._refresh_helpers import Served, http_server

BODY = b"collection\tbytes\n" * 100


def _record(body: bytes, url: str, **extra: object) -> dict:
    return {"url": url, "size": len(body), "md5": hashlib.md5(body).hexdigest(), **extra}


@pytest.fixture()
def server():
    files = {
        "/a.tsv": Served(BODY),
        "/bare.tsv": Served(BODY, etag=None, last_modified=None, send_length=False),
    }
    with http_server(files) as (base, handler):
        yield base, files, handler


def _src(url: str, body: bytes = BODY) -> Source:
    return Source(url=url, md5=hashlib.md5(body).hexdigest(), size=len(body))


def test_http_unchanged_then_each_header_change(server):
    base, files, handler = server
    url = f"{base}/a.tsv"
    rec = _record(BODY, url, etag='"v1"', last_modified="Mon, 02 Nov 2026 10:00:00 GMT")
    st = check_source("a", _src(url), rec)
    assert (st.state, st.reasons) == ("unchanged", [])
    assert handler.requests == [("HEAD", "/a.tsv")]  # a HEAD, never a GET

    files["/a.tsv"] = Served(BODY, etag='"v2"')
    st = check_source("a", _src(url), rec)
    assert st.state == "changed" and st.reasons == ["etag: '\"v1\"' -> '\"v2\"'"]

    files["/a.tsv"] = Served(BODY, last_modified="Tue, 03 Nov 2026 10:00:00 GMT")
    assert check_source("a", _src(url), rec).reasons[0].startswith("last_modified:")

    files["/a.tsv"] = Served(BODY + b"x")
    assert check_source("a", _src(url), rec).reasons == [f"size: {len(BODY)} -> {len(BODY) + 1}"]


def test_http_unknown_new_and_errors(server):
    base, _, _ = server
    url = f"{base}/bare.tsv"
    assert check_source("b", _src(url), _record(BODY, url, etag='"v1"')).state == "unknown"
    assert check_source("b", _src(url), None).state == "new"
    with pytest.raises(ConnectionError, match="HTTP 404"):
        check_source("c", _src(f"{base}/missing"), _record(BODY, f"{base}/missing"))


def test_registry_edit_is_a_change(server):
    base, _, _ = server
    url = f"{base}/a.tsv"
    rec = _record(BODY, url, etag='"v1"')
    st = check_source("a", Source(url=url, md5="0" * 32, size=len(BODY)), rec)
    assert st.state == "changed" and st.reasons[0].startswith("params md5:")


def test_file_size_then_md5_with_stat_cache(tmp_path):
    f = tmp_path / "qrels.txt"
    f.write_bytes(BODY)
    url = f"file://{f}"
    rec = _record(BODY, url)
    cache: dict = {}
    st = check_source("q", _src(url), rec, stat_cache=cache)
    assert st.state == "unchanged" and st.seen["hashed"] is True
    st = check_source("q", _src(url), rec, stat_cache=cache)
    assert st.state == "unchanged" and st.seen["hashed"] is False  # same size+mtime: not re-hashed

    os.utime(f, ns=(10**9, 10**9))  # touched, same bytes: hashed again, still unchanged
    st = check_source("q", _src(url), rec, stat_cache=cache)
    assert st.state == "unchanged" and st.seen["hashed"] is True

    f.write_bytes(BODY.replace(b"collection", b"COLLECTION"))  # same size, new bytes, new mtime
    st = check_source("q", _src(url), rec, stat_cache=cache)
    assert st.state == "changed" and st.reasons[0].startswith("md5:") and st.seen["hashed"]

    f.write_bytes(BODY[:-1])
    assert check_source("q", _src(url), rec, stat_cache=cache).reasons == [
        f"size: {len(BODY)} -> {len(BODY) - 1}"
    ]


def test_relative_file_url_resolves_against_root(tmp_path):
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "x.tsv").write_bytes(BODY)
    st = check_source("x", _src("file:sample/x.tsv"), _record(BODY, "file:sample/x.tsv"), root=tmp_path)
    assert st.state == "unchanged"
    with pytest.raises(FileNotFoundError, match="source y"):
        check_source("y", _src("file:sample/y.tsv"), _record(BODY, "file:sample/y.tsv"), root=tmp_path)


def _cfg(tmp_path, sources: dict[str, Source]) -> tuple[Config, str]:
    data = yaml.safe_load(PARAMS.read_text())
    data["paths"]["raw"] = str(tmp_path / "raw")
    data["sources"] = {k: v.model_dump() for k, v in sources.items()}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    return Config.model_validate(data), str(params)


def test_check_all_and_cli(server, tmp_path, capsys):
    base, files, _ = server
    srcs = {"a": _src(f"{base}/a.tsv"), "b": _src(f"{base}/a.tsv")}
    cfg, params = _cfg(tmp_path, srcs)
    for name in srcs:
        rec_dir = tmp_path / "raw" / name
        rec_dir.mkdir(parents=True)
        rec = _record(BODY, srcs[name].url, etag='"v1"', last_modified=files["/a.tsv"].last_modified)
        (rec_dir / RECORD).write_text(json.dumps(rec))
    statuses = check_all(cfg)
    assert [s.state for s in statuses] == ["unchanged", "unchanged"]
    assert main(["--params", params]) == 0
    assert "| `a` | unchanged | - |" in capsys.readouterr().out

    files["/a.tsv"] = Served(BODY, etag='"v9"')
    assert main(["--params", params, "--json", "--source", "b"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["state"]) for s in out] == [("b", "changed")]
    assert "| `a` | changed | etag:" in to_markdown(check_all(cfg))
    assert main(["--params", params, "--source", "nope"]) == 2
