"""Download stage against a real, fault-injecting HTTP server on 127.0.0.1 (tests/_http_server.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tasks.config import ROOT, Download, Source, compose
from tasks.download import DownloadError, archive_path, fetch_fresh, main, run
from tasks.io import DataError
from tests._http_server import FaultyServer, Route

FAST = Download(retries=3, backoff_s=0.01, backoff_max_s=0.05, stall_timeout_s=0.5, chunk_bytes=16 * 1024)
BODY = random.Random(7).randbytes(300_000)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def source(url: str, data: bytes, **kw: object) -> Source:
    return Source(url=url, md5=md5(data), size=len(data), **kw)


def gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as zf:
        zf.write(data)
    return buf.getvalue()


def tgz(members: dict[str, bytes], special: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in special:
            tar.addfile(info)
    return buf.getvalue()


class Dirs:
    def __init__(self, tmp: Path) -> None:
        self.root, self.raw, self.dl = tmp / "proj", tmp / "raw", tmp / "downloads"
        self.root.mkdir()

    def run(self, name: str, src: Source, params: Download = FAST) -> Path:
        return run(name, src, self.raw, self.dl, params, self.root)

    def assert_nothing_final(self, name: str, archive: str) -> None:
        finals = list(self.dl.rglob(archive)) if self.dl.exists() else []
        assert not finals, "a bad or partial file is under the archive's final name"
        assert not (self.raw / name).exists(), "an output directory exists after a failure"

    def cached(self, src: Source, suffix: str = "") -> Path:
        """The archive cache path of ``src`` (plus ``suffix``: .part, .corrupt)."""
        path = archive_path(self.dl, src)
        return path.with_name(path.name + suffix)

    def files(self) -> list[str]:
        """Every file of the archive cache (not the lock files), relative to it."""
        return sorted(
            p.relative_to(self.dl).as_posix()
            for p in self.dl.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )


@pytest.fixture
def srv():
    with FaultyServer() as server:
        yield server


@pytest.fixture
def d(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path)


# --------------------------------------------------------------------------- HTTP
def test_http_success_writes_verified_file_and_stable_record(srv, d):
    headers = {"ETag": '"0x8D9"', "Last-Modified": "Tue, 01 Jun 2021 10:00:00 GMT"}
    url = srv.route("/msmarcoranking/qrels.train.tsv", Route(BODY, headers=headers))
    out = d.run("qrels", source(url, BODY))
    assert (out / "qrels.train.tsv").read_bytes() == BODY
    rec = json.loads((out / ".source.json").read_text())
    assert rec == {
        "name": "qrels",
        "url": url,
        "file": "qrels.train.tsv",
        "size": len(BODY),
        "md5": md5(BODY),
        "md5_from": "params",
        "unpack": "none",
        "etag": '"0x8D9"',
        "last_modified": "Tue, 01 Jun 2021 10:00:00 GMT",
    }
    (get,) = srv.seen("/msmarcoranking/qrels.train.tsv")
    assert get.headers["x-ms-version"] == "2019-12-12"
    assert get.headers["accept-encoding"] == "identity"
    assert d.files() == [  # keyed by md5: no other profile or version can meet it at this path
        f"md5-{md5(BODY)}/qrels.train.tsv",
        f"md5-{md5(BODY)}/qrels.train.tsv.source.json",
    ]
    # a rerun re-verifies the cached archive (no request) and writes the very same record
    first = (out / ".source.json").read_bytes()
    d.run("qrels", source(url, BODY))
    assert len(srv.seen("/msmarcoranking/qrels.train.tsv")) == 1
    assert (out / ".source.json").read_bytes() == first


def test_resume_with_range_when_server_answers_206(srv, d):
    url = srv.route("/a.bin", Route(BODY, drop_after=100_000, drops=1))
    out = d.run("a", source(url, BODY))
    assert (out / "a.bin").read_bytes() == BODY
    first, second = srv.seen("/a.bin")
    assert first.range_start is None and first.sent == 100_000
    assert second.range_start == 100_000 and second.status == 206
    assert second.sent == len(BODY) - 100_000


def test_restart_from_zero_when_server_ignores_range(srv, d, caplog):
    url = srv.route("/a.bin", Route(BODY, drop_after=100_000, drops=1, ignore_range=True))
    with caplog.at_level(logging.INFO, logger="tasks.download"):
        out = d.run("a", source(url, BODY))
    assert (out / "a.bin").read_bytes() == BODY
    second = srv.seen("/a.bin")[1]
    assert second.range_start == 100_000 and second.status == 200 and second.sent == len(BODY)
    assert "ignored the Range request" in caplog.text


def test_retries_5xx_and_429_then_succeeds(srv, d):
    url = srv.route("/a.bin", Route(BODY, fail=[500, 503, 429]))
    out = d.run("a", source(url, BODY))
    assert (out / "a.bin").read_bytes() == BODY
    assert [r.status for r in srv.seen("/a.bin")] == [500, 503, 429, 200]


def test_gives_up_after_retries_on_persistent_500(srv, d):
    url = srv.route("/a.bin", Route(BODY, status=500))
    with pytest.raises(DownloadError, match=r"failed after 4 attempt\(s\): HTTP 500"):
        d.run("a", source(url, BODY))
    assert len(srv.seen("/a.bin")) == FAST.retries + 1
    d.assert_nothing_final("a", "a.bin")


def test_404_fails_at_once_with_one_clear_error(srv, d):
    url = srv.url("/missing.tsv")
    with pytest.raises(DownloadError, match=r"HTTP 404 .*check sources\.a\.url"):
        d.run("a", source(url, BODY))
    assert len(srv.seen("/missing.tsv")) == 1
    d.assert_nothing_final("a", "missing.tsv")


def test_checksum_mismatch_keeps_corrupt_file_aside(srv, d):
    url = srv.route("/a.bin", Route(BODY, wrong_bytes=True))
    with pytest.raises(DownloadError, match=f"md5 mismatch: expected {md5(BODY)}, got [0-9a-f]{{32}}"):
        d.run("a", source(url, BODY))
    corrupt = d.cached(source(url, BODY), ".corrupt")
    assert corrupt.stat().st_size == len(BODY) and corrupt.read_bytes() != BODY
    assert not d.cached(source(url, BODY), ".part").exists()
    d.assert_nothing_final("a", "a.bin")


def test_html_error_page_with_200_is_refused(srv, d):
    page = b"<html><body>Sorry, this page is not available</body></html>"
    url = srv.route("/collection.tar.gz", Route(page, content_type="text/html; charset=utf-8"))
    with pytest.raises(DownloadError, match="server returned an HTML page, not collection.tar.gz"):
        d.run("c", source(url, BODY, unpack="untar"))
    assert len(srv.seen("/collection.tar.gz")) == 1
    d.assert_nothing_final("c", "collection.tar.gz")


def test_short_body_is_resumed(srv, d):
    url = srv.route("/a.bin", Route(BODY, truncate_to=120_000, truncations=1))
    out = d.run("a", source(url, BODY))
    assert (out / "a.bin").read_bytes() == BODY
    assert srv.seen("/a.bin")[1].range_start == 120_000


def test_short_body_every_time_is_a_clear_error(srv, d):
    url = srv.route("/a.bin", Route(BODY, truncate_to=120_000, truncations=-1))
    with pytest.raises(
        DownloadError, match=f"failed after 4 attempt.*short body: .*120000 of {len(BODY)} bytes"
    ):
        d.run("a", source(url, BODY))
    d.assert_nothing_final("a", "a.bin")


def test_stall_times_out_then_retry_resumes(srv, d, caplog):
    url = srv.route("/a.bin", Route(BODY, stall_after=64_000, stall_s=6.0, stalls=1))
    params = FAST.model_copy(update={"stall_timeout_s": 0.3})
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tasks.download"):
        out = d.run("a", source(url, BODY), params)
    assert time.monotonic() - start < 5.0, "the stall was waited out instead of timed out"
    assert (out / "a.bin").read_bytes() == BODY
    assert "stalled" in caplog.text
    assert srv.seen("/a.bin")[1].range_start == 64_000


def test_complete_part_from_a_killed_run_is_verified_not_refetched(srv, d):
    url = srv.route("/a.bin", Route(BODY, headers={"ETag": '"e1"'}))
    part = d.cached(source(url, BODY), ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY)  # killed after the last byte, before the rename
    out = d.run("a", source(url, BODY))
    assert srv.seen("/a.bin") == [] and len(srv.seen("/a.bin", "HEAD")) == 1
    assert (out / "a.bin").read_bytes() == BODY
    assert json.loads((out / ".source.json").read_text())["etag"] == '"e1"'


def test_disk_full_is_a_clear_error_and_leaves_no_temp(srv, d):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to inject ENOSPC")
    url = srv.route("/a.bin", Route(BODY))
    part = d.cached(source(url, BODY), ".part")
    part.parent.mkdir(parents=True)
    part.symlink_to("/dev/full")  # every write to the temp file fails with ENOSPC
    with pytest.raises(DownloadError, match="disk full"):
        d.run("a", source(url, BODY))
    assert not os.path.lexists(part)
    d.assert_nothing_final("a", "a.bin")


def test_corrupted_cached_archive_is_detected_and_fetched_again(srv, d, caplog):
    url = srv.route("/a.bin", Route(BODY))
    d.run("a", source(url, BODY))
    archive = d.cached(source(url, BODY))
    bad = bytearray(archive.read_bytes())
    bad[1000] ^= 0xFF  # same size, different content: only the md5 can tell
    archive.write_bytes(bytes(bad))
    with caplog.at_level(logging.WARNING, logger="tasks.download"):
        out = d.run("a", source(url, BODY))
    assert "cached archive fails verification" in caplog.text
    assert len(srv.seen("/a.bin")) == 2
    assert (out / "a.bin").read_bytes() == BODY
    assert d.cached(source(url, BODY), ".corrupt").read_bytes() == bytes(bad)


def test_md5_null_warns_and_records_computed_md5(srv, d, caplog):
    url = srv.route("/extra.bin", Route(BODY))
    with caplog.at_level(logging.WARNING, logger="tasks.download"):
        out = d.run("extra", Source(url=url, md5=None))
    assert "md5 is null" in caplog.text
    rec = json.loads((out / ".source.json").read_text())
    assert rec["md5"] == md5(BODY) and rec["md5_from"] == "computed" and rec["size"] == len(BODY)
    d.cached(Source(url=url, md5=None)).write_bytes(BODY[:-1] + b"x")  # the recorded md5 guards it
    d.run("extra", Source(url=url, md5=None))
    assert len(srv.seen("/extra.bin")) == 2
    assert (out / "extra.bin").read_bytes() == BODY


def test_retry_resumes_with_if_range_of_the_first_response(srv, d):
    url = srv.route("/a.bin", Route(BODY, headers={"ETag": '"v1"'}, drop_after=100_000, drops=1))
    d.run("a", source(url, BODY))
    first, second = srv.seen("/a.bin")
    assert "if-range" not in first.headers
    assert second.range_start == 100_000 and second.headers["if-range"] == '"v1"'


def test_file_replaced_upstream_mid_download_is_never_spliced(srv, d):
    """A server that ignores If-Range but sends the new ETag: the retry restarts from zero."""
    new = BODY[::-1]
    url = srv.route(
        "/a.bin", Route(BODY, headers={"ETag": '"v1"'}, stall_after=100_000, stall_s=2.0, stalls=1)
    )
    params = FAST.model_copy(update={"stall_timeout_s": 0.5})
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(got=fetch_fresh("a", source(url, BODY), d.dl, params, d.root))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while not srv.seen("/a.bin") and time.monotonic() < deadline:
        time.sleep(0.001)
    srv.route("/a.bin", Route(new, headers={"ETag": '"v2"'}))  # replaced while the first GET stalls
    worker.join(20)
    archive, rec = result["got"]
    assert archive.read_bytes() == new and rec["md5"] == md5(new) and rec["etag"] == '"v2"'
    statuses = [(r.range_start, r.status) for r in srv.seen("/a.bin")]
    assert statuses[1] == (100_000, 206) and statuses[-1] == (None, 200)  # resumed, refused, restarted


# --------------------------------------------------------------------------- cache keys
def test_profiles_sharing_file_names_never_collide_and_download_nothing_twice(srv, d, tmp_path):
    """Two profiles, one archive cache, the same file names with other bytes: A, B, A, B."""
    bodies = {"sample": tgz({"collection.tsv": b"1\tsample\n"}), "msmarco": tgz({"collection.tsv": BODY})}
    shared = srv.route("/shared/extra.tsv", Route(b"same bytes for both\n"))  # md5: null, same URL
    params = {}
    for prof, body in bodies.items():
        url = srv.route(f"/{prof}/collectionandqueries.tar.gz", Route(body))
        srcs = {
            "collectionandqueries": {"url": url, "md5": md5(body), "size": len(body), "unpack": "untar"},
            "extra": {"url": shared, "md5": None},
        }
        params[prof] = _params_file(tmp_path / prof, d, srcs, raw=tmp_path / prof / "raw")
    for prof in ("sample", "msmarco", "sample", "msmarco"):
        assert main(["--all", "--params", str(params[prof])]) == 0
        got = (tmp_path / prof / "raw" / "collectionandqueries" / "collection.tsv").read_bytes()
        assert got == (b"1\tsample\n" if prof == "sample" else BODY)
    for path in (
        "/sample/collectionandqueries.tar.gz",
        "/msmarco/collectionandqueries.tar.gz",
        "/shared/extra.tsv",
    ):
        assert len(srv.seen(path)) == 1, f"{path} downloaded more than once"
    assert not [f for f in d.files() if f.endswith((".corrupt", ".part"))]
    assert len([f for f in d.files() if f.endswith("collectionandqueries.tar.gz")]) == 2


def test_old_layout_archive_is_adopted_and_another_profiles_file_left_alone(srv, d, caplog):
    other = random.Random(9).randbytes(1000)
    url = srv.route("/a.bin", Route(BODY))
    d.dl.mkdir()
    (d.dl / "a.bin").write_bytes(BODY)  # the cache before keys: downloads/<file name>
    with caplog.at_level(logging.INFO, logger="tasks.download"):
        out = d.run("a", source(url, BODY))
    assert srv.seen("/a.bin") == [] and "adopted from the old cache layout" in caplog.text
    assert (out / "a.bin").read_bytes() == BODY and d.cached(source(url, BODY)).exists()
    assert not (d.dl / "a.bin").exists()

    (d.dl / "b.bin").write_bytes(other)  # another profile's b.bin: other bytes, same name
    url_b = srv.route("/b.bin", Route(BODY))
    d.run("b", source(url_b, BODY))
    assert len(srv.seen("/b.bin")) == 1
    assert (d.dl / "b.bin").read_bytes() == other, "another profile's archive was moved or changed"
    assert not [f for f in d.files() if f.endswith(".corrupt")]


def test_fetch_fresh_files_the_new_upstream_bytes_under_their_own_md5(srv, d):
    url = srv.route("/a.bin", Route(BODY, headers={"ETag": '"v1"'}))
    d.run("a", source(url, BODY))
    new = BODY[::-1]
    srv.route("/a.bin", Route(new, headers={"ETag": '"v2"'}))
    archive, rec = fetch_fresh("a", source(url, BODY), d.dl, FAST, d.root)
    assert archive == d.cached(source(url, new)) and archive.read_bytes() == new
    assert (rec["md5"], rec["size"], rec["etag"]) == (md5(new), len(new), '"v2"')
    assert d.cached(source(url, BODY)).read_bytes() == BODY  # the old version stays where it was
    assert not [p for p in (d.dl / ".fresh").rglob("*") if p.is_file() and not p.name.startswith(".")]
    out = d.run("a", source(url, new))  # the re-pinned source: a cache hit, no third GET
    assert len(srv.seen("/a.bin")) == 2 and (out / "a.bin").read_bytes() == new
    assert json.loads((out / ".source.json").read_text())["etag"] == '"v2"'


# --------------------------------------------------------------------------- unpacking
def test_gunzip_and_untar_over_http(srv, d):
    text = b"1\tpassage one\n2\tpassage two\n"
    data = tgz({"collection.tsv": text, "sub/queries.tsv": b"3\tq\n"})
    out = d.run("cq", source(srv.route("/cq.tar.gz", Route(data)), data, unpack="untar"))
    assert (out / "collection.tsv").read_bytes() == text
    assert (out / "sub" / "queries.tsv").read_bytes() == b"3\tq\n"
    zdata = gz(text)
    out = d.run("q", source(srv.route("/q.tsv.gz", Route(zdata)), zdata, unpack="gunzip"))
    assert sorted(p.name for p in out.iterdir()) == [".source.json", "q.tsv"]
    assert (out / "q.tsv").read_bytes() == text


@pytest.mark.parametrize("unpack,name", [("gunzip", "x.tsv.gz"), ("untar", "x.tar.gz")])
def test_truncated_archive_is_a_clear_error(srv, d, unpack, name):
    whole = gz(random.Random(1).randbytes(200_000)) if unpack == "gunzip" else tgz({"a": BODY, "b": BODY})
    cut = whole[: len(whole) - 1000]  # the registry's md5 is of the truncated file: only unpack can tell
    url = srv.route("/" + name, Route(cut))
    with pytest.raises(DataError, match=f"{name}: cannot unpack, the archive is truncated"):
        d.run("x", source(url, cut, unpack=unpack))
    assert not (d.raw / "x").exists()
    assert [p.name for p in d.raw.iterdir()] == [], "staging leftovers"


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "members,special,why",
    [
        ({"../evil.txt": b"x"}, [], "'..' path component"),
        ({"ok/../../evil.txt": b"x"}, [], "'..' path component"),
        ({"/tmp/evil.txt": b"x"}, [], "absolute path"),
        ({}, [_link("passwd", "../../etc/passwd")], "link leaving the directory"),
        ({}, [_link("passwd", "/etc/passwd")], "link leaving the directory"),
        ({}, [_link("hard", "../outside", tarfile.LNKTYPE)], "link leaving the directory"),
        ({}, [_link("null", "", tarfile.CHRTYPE)], "device file"),
    ],
)
def test_unsafe_tar_members_are_refused(d, members, special, why):
    data = tgz({"fine.txt": b"ok", **members}, special)
    (d.root / "sample").mkdir()
    (d.root / "sample" / "evil.tar.gz").write_bytes(data)
    with pytest.raises(DataError, match=f"refusing member .*{why}"):
        d.run("evil", source("file:sample/evil.tar.gz", data, unpack="untar"))
    assert not (d.raw / "evil").exists()
    assert not (d.root.parent / "evil.txt").exists() and not (d.raw.parent / "evil.txt").exists()


# --------------------------------------------------------------------------- file: URLs
def test_file_urls_relative_to_root_and_absolute(d, tmp_path):
    text = b"1042\tWhat is the capital of France?\n"
    (d.root / "sample").mkdir()
    (d.root / "sample" / "dl19.tsv.gz").write_bytes(gz(text))
    out = d.run("rel", source("file:sample/dl19.tsv.gz", gz(text), unpack="gunzip"))
    assert (out / "dl19.tsv").read_bytes() == text
    assert json.loads((out / ".source.json").read_text())["url"] == "file:sample/dl19.tsv.gz"
    elsewhere = tmp_path / "elsewhere" / "qrels.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(text)
    out = d.run("abs", source(elsewhere.as_uri(), text))
    assert (out / "qrels.txt").read_bytes() == text
    with pytest.raises(DownloadError, match="no such file"):
        d.run("gone", source("file:sample/gone.tsv", text))


def test_file_url_with_wrong_md5_keeps_corrupt_aside(d):
    (d.root / "x.tsv").write_bytes(b"changed\n")
    with pytest.raises(DownloadError, match="size mismatch|md5 mismatch"):
        d.run("x", source("file:x.tsv", b"original\n"))
    assert d.cached(source("file:x.tsv", b"original\n"), ".corrupt").read_bytes() == b"changed\n"
    d.assert_nothing_final("x", "x.tsv")


# --------------------------------------------------------------------------- CLI and kill -9
def _params_file(tmp_path: Path, d: Dirs, sources: dict[str, dict], raw: Path | None = None) -> Path:
    cfg = yaml.safe_load(compose("sample"))
    cfg["paths"]["raw"], cfg["paths"]["downloads"] = str(raw or d.raw), str(d.dl)  # absolute: outside ROOT
    cfg["sources"] = sources
    cfg["download"] = FAST.model_dump()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_help_errors_and_exit_codes(tmp_path, d, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "python -m tasks.download --source" in capsys.readouterr().out
    (d.root / "x.tsv").write_bytes(b"x\n")
    params = _params_file(
        tmp_path, d, {"x": {"url": (d.root / "x.tsv").as_uri(), "md5": md5(b"y\n"), "size": 2}}
    )
    assert main(["--source", "nope", "--params", str(params)]) == 2
    assert "no source 'nope'" in capsys.readouterr().err
    assert main(["--all", "--params", str(params)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: x: ") and "md5 mismatch" in err[0]


def test_sigkill_mid_file_then_rerun_resumes_to_verified_file(srv, d, tmp_path):
    body = random.Random(3).randbytes(1_500_000)
    route = Route(body, chunk=16 * 1024, delay_s=0.02)  # ~2 s for the whole file
    url = srv.route("/big.tsv", route)
    params = _params_file(tmp_path, d, {"big": {"url": url, "md5": md5(body), "size": len(body)}})
    cmd = [sys.executable, "-m", "tasks.download", "--source", "big", "--params", str(params)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    final = d.cached(source(url, body))
    part = final.with_name("big.tsv.part")
    try:
        deadline = time.monotonic() + 20
        while not (part.exists() and part.stat().st_size >= 300_000):
            assert not final.exists() and not (d.raw / "big").exists(), "final name used while partial"
            assert proc.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.01)
        assert not final.exists()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    kept = part.stat().st_size
    assert 300_000 <= kept < len(body) and not final.exists()
    assert part.read_bytes() == body[:kept]

    route.delay_s = 0.0
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert final.read_bytes() == body and not part.exists()
    assert (d.raw / "big" / "big.tsv").read_bytes() == body
    last = srv.seen("/big.tsv")[-1]
    assert last.status == 206 and last.range_start == kept
