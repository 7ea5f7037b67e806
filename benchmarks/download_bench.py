"""Benchmark: ``tasks.download`` vs curl / cp / tar + md5sum, in one run.

Question: what does the download stage's safety (md5 + size verified while streaming, fsync,
atomic rename, safe streaming untar) cost against the plain tools a person would use, i.e.
``curl -o f URL && md5sum f``, ``cp && md5sum`` for a local file, and ``tar xzf``?

It writes a random binary file (``--mb``, default 256 MB) and a tar.gz of a text TSV of about
the same uncompressed size, serves the directory with ``python -m http.server`` on 127.0.0.1,
then runs every tool in its own subprocess ``--repeat`` times and reads the child's wall time
and peak RSS (``os.wait4``); the table shows medians and ours/peer ratios. Outputs are checked
(same md5, same extracted bytes) before the table is printed.

    python benchmarks/download_bench.py --mb 256 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def timed(cmds: list[list[str]], cwd: Path) -> tuple[float, float]:
    """Run commands one after another; (total wall seconds, peak RSS MB of any of them).

    RSS is sampled with psutil every 10 ms once the child has exec'd (``ru_maxrss``, and any
    sample taken before the exec, would include this Python's own memory).
    """
    wall, peak = 0.0, 0.0
    for cmd in cmds:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                if ps.cmdline() == cmd:
                    peak = max(peak, ps.memory_info().rss / 2**20)
            time.sleep(0.01)
        wall += time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, peak


def ours(code: str) -> list[str]:
    return [PY, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dlbench-"))
    serve = work / "serve"
    serve.mkdir()
    try:
        blob = serve / "blob.bin"
        rng = random.Random(13)
        with open(blob, "wb") as fh:
            for _ in range(args.mb):
                fh.write(rng.randbytes(1 << 20))
        words = ["".join(rng.choices("etaoinshrdlucmfw", k=rng.randint(2, 9))) for _ in range(20000)]
        tsv = work / "collection.tsv"
        with open(tsv, "w") as fh:
            pid = 0
            while fh.tell() < args.mb << 20:
                fh.write(f"{pid}\t{' '.join(rng.choices(words, k=60))}\n")
                pid += 1
        tgz = serve / "cq.tar.gz"
        with tarfile.open(tgz, "w:gz", compresslevel=6) as tar:
            tar.add(tsv, arcname="collection.tsv")
        md5 = hashlib.md5(blob.read_bytes()).hexdigest()
        size = blob.stat().st_size
        port = free_port()
        server = subprocess.Popen(
            [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(serve)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        url = f"http://127.0.0.1:{port}/blob.bin"
        setup = (
            "from pathlib import Path; from tasks.config import Download, Source; "
            "from tasks.download import fetch, unpack; "
        )
        cases = {
            "python start + import tasks.download": (
                lambda d: [ours("import tasks.download")],
                lambda d: [["true"]],
            ),
            "http fetch + md5": (
                lambda d: [
                    ours(
                        setup + f"fetch('b', Source(url={url!r}, md5={md5!r}, size={size}), "
                        f"Path({str(d)!r}), Download(), Path('.'))"
                    )
                ],
                lambda d: [["curl", "-sS", "-o", str(d / "blob.bin"), url], ["md5sum", str(d / "blob.bin")]],
            ),
            "file: copy + md5": (
                lambda d: [
                    ours(
                        setup + f"fetch('b', Source(url={blob.as_uri()!r}, md5={md5!r}, size={size}), "
                        f"Path({str(d)!r}), Download(), Path('.'))"
                    )
                ],
                lambda d: [["cp", str(blob), str(d / "blob.bin")], ["md5sum", str(d / "blob.bin")]],
            ),
            "untar .tar.gz": (
                lambda d: [ours(setup + f"unpack(Path({str(tgz)!r}), Path({str(d)!r}), 'untar')")],
                lambda d: [["tar", "xzf", str(tgz), "-C", str(d)]],
            ),
        }
        rows = []
        for name, (mine, peer) in cases.items():
            res: dict[str, list[tuple[float, float]]] = {"ours": [], "peer": []}
            for _ in range(args.repeat):
                for who, make in (("ours", mine), ("peer", peer)):
                    out = work / f"out-{who}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    res[who].append(timed(make(out), work))
                    if "import" in name:
                        continue
                    produced = out / ("collection.tsv" if "untar" in name else "blob.bin")
                    want = tsv if "untar" in name else blob
                    if produced.read_bytes() != want.read_bytes():
                        raise SystemExit(f"{name} ({who}): output differs")
            o = statistics.median(w for w, _ in res["ours"]), max(m for _, m in res["ours"])
            p = statistics.median(w for w, _ in res["peer"]), max(m for _, m in res["peer"])
            rows.append((name, o, p))
        server.terminate()
        server.wait()
        mb = args.mb * (1 << 20) / 1e6
        print(f"{args.mb} MiB payloads, median of {args.repeat} runs, load avg {os.getloadavg()[0]:.1f}")
        print("| case | ours s | peer s | ours/peer | ours MB/s | ours peak RSS MB | peer peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        peers = {
            "python start + import tasks.download": "true",
            "http fetch + md5": "curl + md5sum",
            "file: copy + md5": "cp + md5sum",
            "untar .tar.gz": "tar xzf",
        }
        for name, (ow, orss), (pw, prss) in rows:
            print(
                f"| {name} (peer: {peers[name]}) | {ow:.2f} | {pw:.2f} | {ow / pw:.2f} "
                f"| {'-' if 'import' in name else f'{mb / ow:.0f}'} "
                f"| {orss:.0f} | {prss:.0f} |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
