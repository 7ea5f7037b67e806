"""Upstream change detection and ``accept`` against a real HTTP server on 127.0.0.1 and real files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.config import PARAMS, ROOT, Config, ConfigError, Download, Source, compose, load_config
from tasks.download import DownloadError, archive_path
from tasks.download import run as download
from tasks.sources_check import (
    RECORD,
    _repin_text,
    accept,
    check_all,
    check_source,
    main,
    refusal_markdown,
    to_markdown,
)
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
    assert "| `a` | changed (refused) | etag:" in to_markdown(check_all(cfg))
    assert main(["--params", params, "--source", "nope"]) == 2


# --------------------------------------------------------------------------- refusal and accept
FAST = Download(retries=1, backoff_s=0.01, backoff_max_s=0.02, stall_timeout_s=5)


def _project(tmp_path: Path, sources: dict[str, dict] | None = None) -> Path:
    """conf/ of the project (comments and all) + a composed params.yaml + the sample files."""
    root = tmp_path / "proj"
    shutil.copytree(ROOT / "conf", root / "conf")
    shutil.copytree(ROOT / "sample", root / "sample")
    if sources is not None:  # replace the profile's sources block, keep the rest of the file
        prof = root / "conf" / "profile" / "sample.yaml"
        head, rest = prof.read_text().split("\nsources:\n", 1)
        tail = rest.split("\nsystems:\n", 1)[1]
        prof.write_text(f"{head}\n{yaml.safe_dump({'sources': sources}, sort_keys=False)}\nsystems:\n{tail}")
    (root / "params.yaml").write_text(compose("sample", root / "conf"))
    return root


def _download(root: Path, name: str) -> None:
    cfg = load_config(root / "params.yaml")
    download(name, cfg.sources[name], root / cfg.paths.raw, root / cfg.paths.downloads, FAST, root)


def _check(root: Path, name: str):
    (st,) = check_all(load_config(root / "params.yaml"), [name], root=root)
    return st


def test_file_change_with_old_pin_is_refused_until_accepted(tmp_path):
    root = _project(tmp_path)
    _download(root, "dl19_qrels")
    assert _check(root, "dl19_qrels").state == "unchanged"
    qrels = root / "sample" / "2019qrels-pass.txt"
    old, new = qrels.read_bytes(), b"".join(qrels.read_bytes().splitlines(keepends=True)[:-3])
    qrels.write_bytes(new)
    conf_before = (root / "conf" / "profile" / "sample.yaml").read_text()

    for _ in range(2):  # every check says the same until it is accepted
        st = _check(root, "dl19_qrels")
        assert st.state == "changed" and st.upstream_changed and st.refused
        assert st.seen["md5"] == hashlib.md5(new).hexdigest()
    md = refusal_markdown([st], "sample")
    assert f"| size | `{len(old)}` | `{len(new)}` |" in md
    assert f"| md5 | `{hashlib.md5(old).hexdigest()}` | `{hashlib.md5(new).hexdigest()}` |" in md
    assert "python -m tasks.sources_check accept dl19_qrels" in md

    res = accept("dl19_qrels", root / "params.yaml", root)
    assert (res["old_md5"], res["new_md5"]) == (hashlib.md5(old).hexdigest(), hashlib.md5(new).hexdigest())
    assert res["repinned"] == ["conf/profile/sample.yaml", "params.yaml"]
    conf_after = (root / "conf" / "profile" / "sample.yaml").read_text()
    changed = [
        (a, b) for a, b in zip(conf_before.splitlines(), conf_after.splitlines(), strict=True) if a != b
    ]
    assert changed == [
        (f"    md5: {hashlib.md5(old).hexdigest()}", f"    md5: {hashlib.md5(new).hexdigest()}"),
        (f"    size: {len(old)}", f"    size: {len(new)}"),
    ]  # two lines, comments and layout kept
    assert (root / "params.yaml").read_text() == compose("sample", root / "conf")  # regenerated
    cfg = load_config(root / "params.yaml")
    assert archive_path(root / cfg.paths.downloads, cfg.sources["dl19_qrels"]).read_bytes() == new

    st = _check(root, "dl19_qrels")
    assert st.state == "changed" and st.accepted and not st.refused
    assert any(r.startswith("params md5:") for r in st.reasons)
    _download(root, "dl19_qrels")
    assert _check(root, "dl19_qrels").state == "unchanged"
    assert accept("dl19_qrels", root / "params.yaml", root)["repinned"] == []  # idempotent


def test_http_new_etag_same_bytes_accepted_without_repin(tmp_path):
    files = {"/q.tsv": Served(BODY, etag='"v1"')}
    with http_server(files) as (base, handler):
        url = f"{base}/q.tsv"
        root = _project(
            tmp_path, {"q": {"url": url, "md5": hashlib.md5(BODY).hexdigest(), "size": len(BODY)}}
        )
        _download(root, "q")
        files["/q.tsv"] = Served(BODY, etag='"v2"')  # re-uploaded: same bytes, new ETag
        st = _check(root, "q")
        assert st.refused and "md5" not in st.seen
        assert "| md5 | `" in (md := refusal_markdown([st], "sample")) and "unknown (not downloaded" in md
        assert '| ETag | `"v1"` | `"v2"` |' in md
        params_before = (root / "params.yaml").read_bytes()
        gets = sum(m == "GET" for m, _ in handler.requests)

        res = accept("q", root / "params.yaml", root)
        assert res["repinned"] == [] and (root / "params.yaml").read_bytes() == params_before
        assert sum(m == "GET" for m, _ in handler.requests) == gets + 1  # fetched, not taken from the cache
        st = _check(root, "q")
        assert st.state == "unchanged" and not st.refused and "accept fetched those bytes" in st.reasons[0]

        files["/q.tsv"] = Served(BODY + b"more", etag='"v3"')  # a real change after that: refused again
        assert _check(root, "q").refused


def test_accept_that_cannot_fetch_rewrites_nothing(tmp_path):
    with http_server({}) as (base, _):
        root = _project(tmp_path, {"q": {"url": f"{base}/gone.tsv", "md5": "0" * 32, "size": 3}})
        before = {
            p: p.read_bytes() for p in (root / "params.yaml", root / "conf" / "profile" / "sample.yaml")
        }
        with pytest.raises(DownloadError, match="HTTP 404"):
            accept("q", root / "params.yaml", root)
        assert {p: p.read_bytes() for p in before} == before
        with pytest.raises(ConfigError, match="no source 'nope'"):
            accept("nope", root / "params.yaml", root)


def test_repin_text_keeps_comments_adds_size_and_refuses_what_it_cannot_edit(tmp_path):
    text = (
        "seed: 1\nsources:\n  a:   # first\n    url: file:a\n    md5: %s  # pinned\n\n"
        "  b:\n    url: file:b\n    md5: null\nx: 1\n"
    )
    out = _repin_text(text % ("a" * 32), "a", {"md5": "1" * 32, "size": 7}, Path("f.yaml"))
    assert f'    md5: "{"1" * 32}"  # pinned\n    size: 7\n' in out  # all digits: quoted, stays a string
    assert yaml.safe_load(out)["sources"]["a"] == {"url": "file:a", "md5": "1" * 32, "size": 7}
    assert "  a:   # first\n" in out and out.endswith("  b:\n    url: file:b\n    md5: null\nx: 1\n")
    with pytest.raises(ConfigError, match="f.yaml: no block 'sources.c:'"):
        _repin_text(text % ("a" * 32), "c", {"md5": "1" * 32}, Path("f.yaml"))
    with pytest.raises(ConfigError, match="by hand"):
        _repin_text("sources:\n  a: {url: file:a, md5: null}\n", "a", {"size": 3}, Path("f.yaml"))


def test_accept_cli_help_and_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["accept", "--help"])
    assert exc.value.code == 0 and "re-pin sources.NAME" in capsys.readouterr().out
    assert main(["accept", "no-such-source"]) == 2


def test_accept_refuses_while_a_flow_run_holds_the_checkout(tmp_path):
    from tasks.locks import Busy, lock_path

    root = _project(tmp_path)
    lock = lock_path("flow", root)
    code = (
        "import sys, time; from pathlib import Path; from tasks.locks import hold\n"
        "with hold(Path(sys.argv[1]), 'a test flow run'):\n"
        "    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        params_before = (root / "params.yaml").read_bytes()
        with pytest.raises(Busy, match="a test flow run is already running"):
            accept("dl19_qrels", root / "params.yaml", root)
        assert (root / "params.yaml").read_bytes() == params_before
    finally:
        holder.kill()
        holder.wait()
