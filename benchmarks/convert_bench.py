"""Benchmark: ``tasks.convert`` vs the official MS MARCO QA utilities, in one run.

Question: is the streaming converter faster than the official ``tojsonl.py`` (target >= 3x),
is its peak RSS small (target <= 300 MB), and does that peak stay flat (within 10%) when the
file grows 4x? And how does ``stats`` compare with ``exploredata.py``?

It generates a synthetic QA v2.1 file of N queries in the official column layout (10 passages
of ~35 words each, about 3.6 KB per query: 50,000 queries are ~180 MB), then runs each tool
in its own subprocess and reads the child's wall time and peak RSS (``os.wait4``). Outputs
are checked for parity (same rows as parsed JSON) before the table is printed.

The official scripts are not part of this project: clone them yourself and point
``--official-dir`` at their ``Utils/`` folder (they need pandas; ``--official-python`` picks
the interpreter, default: this one)::

    git clone https://github.com/microsoft/MSMARCO-Question-Answering /tmp/msmarco-qa
    python benchmarks/convert_bench.py --official-dir /tmp/msmarco-qa/Utils --queries 50000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("answers", "passages", "query", "query_id", "query_type", "wellFormedAnswers")
TYPES = ("DESCRIPTION", "NUMERIC", "ENTITY", "LOCATION", "PERSON")
HEADS = ("what", "how", "is", "who", "where", "when", "does", "why", "which", "can", "define")
WORDS = [
    "".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=random.Random(-i).randint(2, 10)))
    for i in range(5000)
]


def generate(path: Path, n: int, seed: int = 13) -> None:
    """Write a column-layout v2.1 file of ``n`` queries (one pass, a spill per column)."""
    rng = random.Random(seed)
    tmp = {c: path.with_name(f"{path.name}.{c}") for c in COLUMNS}
    files = {c: open(p, "w", encoding="utf-8") for c, p in tmp.items()}
    try:
        for i in range(n):
            words = rng.choices(WORDS, k=rng.randint(2, 8))
            answered = rng.random() < 0.65
            passages = [
                {
                    "is_selected": int(answered and j == 0),
                    "passage_text": " ".join(rng.choices(WORDS, k=rng.randint(20, 50))),
                    "url": f"http://www.example{rng.randint(0, 999)}.com/{'/'.join(rng.choices(WORDS, k=3))}",
                }
                for j in range(10)
            ]
            answers = (
                [" ".join(rng.choices(WORDS, k=rng.randint(1, 20)))] if answered else ["No Answer Present."]
            )
            wfa: object = "[]"
            if answered and rng.random() < 0.25:
                wfa = [
                    " ".join(rng.choices(WORDS, k=rng.randint(5, 20))) for _ in range(rng.choice((1, 1, 2)))
                ]
            row = {
                "answers": answers,
                "passages": passages,
                "query": " ".join([rng.choice(HEADS), *words]),
                "query_id": 1_000_000 + i,
                "query_type": rng.choice(TYPES),
                "wellFormedAnswers": wfa,
            }
            sep = "," if i else ""
            for c in COLUMNS:
                # Compact, with "/" escaped as "\/": the layout of the released files (pandas to_json).
                text = json.dumps(row[c], separators=(",", ":")).replace("/", "\\/")
                files[c].write(f'{sep}"{i}":{text}')
    finally:
        for fh in files.values():
            fh.close()
    with open(path, "w", encoding="utf-8") as out:
        for n_col, c in enumerate(COLUMNS):
            out.write(("{" if n_col == 0 else ",") + f'"{c}":{{')
            with open(tmp[c], encoding="utf-8") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
            out.write("}")
            tmp[c].unlink()
        out.write("}")


class Run:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of a child process.

    The command runs ``repeat`` times; the figures are those of the fastest run (wall), as
    ``timeit`` does: on a shared machine the slower runs measure the neighbours.
    """

    repeat = 3

    def __init__(self, cmd: list[str], cwd: Path = ROOT) -> None:
        best: tuple[float, float, float] | None = None
        for _ in range(self.repeat):
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert proc.stderr is not None
            err = proc.stderr.read().decode("utf-8", "replace")
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({status}):\n{err[-2000:]}")
            run = (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)  # maxrss: KiB
            if best is None or run[0] < best[0]:
                best = run
        assert best is not None
        self.wall, self.cpu, self.rss = best


def row(task: str, ours: Run, official: Run | None, parity: str = "-") -> tuple[str, ...]:
    if official is None:
        return (
            task,
            f"{ours.wall:.1f}",
            "-",
            "-",
            f"{ours.cpu:.1f}",
            "-",
            "-",
            f"{ours.rss:.0f}",
            "-",
            parity,
        )
    return (
        task,
        f"{ours.wall:.1f}",
        f"{official.wall:.1f}",
        f"**{official.wall / ours.wall:.1f}x**",
        f"{ours.cpu:.1f}",
        f"{official.cpu:.1f}",
        f"{official.cpu / ours.cpu:.1f}x",
        f"{ours.rss:.0f}",
        f"{official.rss:.0f}",
        parity,
    )


def same_rows(a: Path, b: Path) -> bool:
    with open(a, encoding="utf-8") as fa, open(b, encoding="utf-8") as fb:
        for la, lb in zip(fa, fb, strict=False):
            if json.loads(la) != json.loads(lb):
                return False
        return fa.readline() == "" and fb.readline() == ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=50_000, help="N (default 50,000, ~180 MB)")
    parser.add_argument("--official-dir", type=Path, help="checkout of the official Utils/ folder")
    parser.add_argument("--official-python", default=sys.executable, help="interpreter with pandas")
    parser.add_argument("--work-dir", type=Path, help="where the synthetic files go (default: a temp dir)")
    parser.add_argument("--no-scale", action="store_true", help="skip the 4N run")
    parser.add_argument("--gz", action="store_true", help="also time tojsonl on the gzipped file")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the fastest counts (default 3)")
    args = parser.parse_args(argv)
    if args.repeat <= 0:
        parser.error("--repeat must be positive")
    Run.repeat = args.repeat
    if args.queries <= 0:
        parser.error("--queries must be positive")
    work = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.work_dir))
    ours = [sys.executable, "-m", "tasks.convert"]
    official = args.official_python
    rows: list[tuple[str, ...]] = []
    try:
        src = work / "train.json"
        t0 = time.perf_counter()
        generate(src, args.queries)
        size_mb = src.stat().st_size / 1e6
        sys.stderr.write(
            f"generated {args.queries} queries, {size_mb:.0f} MB in {time.perf_counter() - t0:.0f} s\n"
        )

        ours_j = Run([*ours, "tojsonl", str(src), str(work / "ours.jsonl")])
        if args.official_dir:
            off_j = Run([official, str(args.official_dir / "tojsonl.py"), str(src), str(work / "off.jsonl")])
            same = same_rows(work / "ours.jsonl", work / "off.jsonl")
            rows.append(row("tojsonl", ours_j, off_j, "same rows" if same else "ROWS DIFFER"))
            (work / "off.jsonl").unlink()
        else:
            rows.append(row("tojsonl", ours_j, None))

        if args.gz:  # the released files come gzipped: both tools decompress as they read
            gz = work / "train.json.gz"
            with open(src, "rb") as fin, gzip.GzipFile(gz, "wb", compresslevel=6, mtime=0) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            ours_z = Run([*ours, "tojsonl", str(gz), str(work / "ours_z.jsonl")])
            if args.official_dir:
                off_tool = str(args.official_dir / "tojsonl.py")
                off_z = Run([official, off_tool, str(gz), str(work / "off.jsonl")])
                parity = (
                    "same rows" if same_rows(work / "ours_z.jsonl", work / "off.jsonl") else "ROWS DIFFER"
                )
                rows.append(row("tojsonl from .json.gz", ours_z, off_z, parity))
                (work / "off.jsonl").unlink()
            else:
                rows.append(row("tojsonl from .json.gz", ours_z, None))
            gz.unlink()
            (work / "ours_z.jsonl").unlink()

        ours_s = Run([*ours, "stats", str(src)])
        off_s = (
            Run([official, str(args.official_dir / "exploredata.py"), str(src)])
            if args.official_dir
            else None
        )
        rows.append(row("stats vs exploredata.py", ours_s, off_s))
        rows.append(row("wellformed", Run([*ours, "wellformed", str(src), str(work / "wf.jsonl")]), None))

        scale = ""
        if not args.no_scale:
            (work / "ours.jsonl").unlink()
            big = work / "train4.json"
            generate(big, 4 * args.queries)
            src.unlink()
            ours_4 = Run([*ours, "tojsonl", str(big), str(work / "ours4.jsonl")])
            ratio = ours_4.rss / ours_j.rss
            scale = (
                f"tojsonl at 4N ({4 * args.queries} queries, {big.stat().st_size / 1e6:.0f} MB): "
                f"{ours_4.wall:.1f} s wall, {ours_4.cpu:.1f} s CPU, peak RSS {ours_4.rss:.0f} MB = "
                f"{ratio:.2f}x the peak at N ({'flat, within 10%' if ratio <= 1.1 else 'NOT within 10%'})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = [
        f"N = {args.queries} queries ({size_mb:.0f} MB column JSON), fastest of {args.repeat} runs each, "
        f"official python: {args.official_python}",
        "",
        "| task | ours wall s | official wall s | speed-up | ours CPU s | official CPU s | CPU ratio "
        "| ours peak RSS MB | official peak RSS MB | parity |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in rows),
    ]
    if scale:
        out += ["", scale]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
