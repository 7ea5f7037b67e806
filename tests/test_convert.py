"""Stage qa@<split> (tasks.convert, tasks.qa_format): parity with the official MS MARCO QA
utilities, streaming behaviour, and one clear error per kind of bad input.

Expected outputs of the official scripts live in tests/fixtures/qa/expected/ (see its README).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import convert, qa_compact, qa_format
from tasks.config import Convert
from tasks.io import DataError

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "qa"
EXP = FIX / "expected"
SAMPLE = ROOT / "sample"


# --------------------------------------------------------------------------- helpers
def load_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return [json.loads(line) for line in fh]


def load_json(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return json.load(fh)


def reference_rows(doc: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a column document, in numeric key order (the whole file in memory: tests only)."""
    keys = sorted(doc["query"], key=int)
    return [{c: doc[c][k] for c in doc} for k in keys]


def parse_exploredata(text: str) -> dict[str, Any]:
    """The figures ``exploredata.py`` printed."""
    out: dict[str, Any] = {"query_type": {}, "first_word": {}}
    section = None
    for line in text.splitlines():
        if m := re.fullmatch(r"(\d+) queries with (\d+) judgements with (\d+) queries contain .*", line):
            out["queries"], out["judgements"], out["multiple"] = map(int, m.groups())
        elif m := re.fullmatch(r"(\d+) queries with Well Formed Answers of which (\d+) contain .*", line):
            out["wfa"], out["multiple_wfa"] = map(int, m.groups())
        elif m := re.fullmatch(r"(\d+) queries", line):
            out["queries"] = int(m.group(1))
        elif "by dataset type" in line:
            section = "query_type"
        elif "by wording" in line:
            section = "first_word"
        elif section and (m := re.fullmatch(r"(\w+),(\d+),([0-9.e-]+)", line)):
            out[section][m.group(1)] = (int(m.group(2)), float(m.group(3)))
    return out


def parse_lengths(text: str) -> dict[str, tuple[float, dict[int, int]]]:
    """``{field: (average, histogram)}`` as ``get_stats_about_length.py`` printed them."""
    out: dict[str, tuple[float, dict[int, int]]] = {}
    field = ""
    for line in text.splitlines():
        if m := re.fullmatch(r"Statistics about (\w+)", line):
            field = m.group(1)
            out[field] = (0.0, {})
        elif line.startswith("Average length:"):
            out[field] = (float(line.split()[-1]), {})
        elif m := re.fullmatch(r"(\d+):(\d+)", line):
            out[field][1][int(m.group(1))] = int(m.group(2))
    return out


def assert_stats_match(doc: dict[str, Any], hists: dict[str, dict[int, int]] | None, name: str) -> None:
    official = parse_exploredata((EXP / f"{name}.exploredata.txt").read_text())
    assert doc["queries"] == official["queries"]
    if "judgements" in official:
        assert doc["judgements"] == official["judgements"]
        assert doc["queries_with_multiple_answers"] == official["multiple"]
        assert doc["queries_with_well_formed_answers"] == official["wfa"]
        assert doc["queries_with_multiple_well_formed_answers"] == official["multiple_wfa"]
    for section in ("query_type", "first_word"):
        ours = {k: (v["count"], v["fraction"]) for k, v in doc[section].items()}
        assert ours == official[section]
    lengths = EXP / f"{name}.lengths.txt"
    if lengths.exists():
        for field, (average, histogram) in parse_lengths(lengths.read_text()).items():
            assert doc["lengths"][field]["average_words"] == pytest.approx(average, rel=1e-12), field
            if hists is not None:
                assert hists[field] == histogram, field


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# --------------------------------------------------------------------------- parity: fixtures
@pytest.mark.parametrize("name", ["train_small", "eval_small"])
def test_tojsonl_matches_official(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out.jsonl"
    assert convert.tojsonl(FIX / f"{name}.json", out) == len(load_jsonl(EXP / f"{name}.tojsonl.jsonl"))
    assert load_jsonl(out) == load_jsonl(EXP / f"{name}.tojsonl.jsonl")
    assert files_in(tmp_path) == ["out.jsonl"]  # spills cleaned up


@pytest.mark.parametrize("name", ["train_small", "eval_small"])
def test_tojson_matches_official_and_round_trips(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out.json"
    convert.tojson(EXP / f"{name}.tojsonl.jsonl", out)
    assert load_json(out) == load_json(EXP / f"{name}.tojson.json")
    assert load_json(out) == load_json(FIX / f"{name}.json")  # tojson(tojsonl(x)) == x


def test_wellformed_matches_official(tmp_path: Path) -> None:
    official = load_json(EXP / "train_small.wellformed.json")
    assert convert.wellformed(FIX / "train_small.json", tmp_path / "wf.json") == len(official["query"])
    assert load_json(tmp_path / "wf.json") == official  # same keys (original ones), same values
    # JSONL out, and JSONL in: the same rows.
    convert.wellformed(FIX / "train_small.json", tmp_path / "wf.jsonl.gz")
    assert load_jsonl(tmp_path / "wf.jsonl.gz") == reference_rows(official)
    convert.wellformed(EXP / "train_small.tojsonl.jsonl", tmp_path / "wf2.json")
    assert load_json(tmp_path / "wf2.json") == official


def test_stats_match_official_public(tmp_path: Path) -> None:
    doc = convert.stats(FIX / "eval_small.json", public=True)
    assert_stats_match(doc, None, "eval_small")
    assert doc["public"] and doc["judgements"] is None and doc["lengths"]["answers"] is None
    # A file with answers read with --public gives the same public figures.
    assert convert.stats(FIX / "train_small.json", public=True)["judgements"] is None


@pytest.mark.parametrize("name", ["train_small"])
def test_stats_match_official(tmp_path: Path, name: str) -> None:
    doc = convert.stats(FIX / f"{name}.json", tmp_path)
    hists: dict[str, dict[int, int]] = {f: {} for f in convert.LENGTH_FIELDS}
    with open(tmp_path / f"{name}.lengths.csv", encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
        for line in fh:
            values = dict(zip(header, map(int, line.split(",")), strict=True))
            for f in convert.LENGTH_FIELDS:
                if values[f]:
                    hists[f][values["length"]] = values[f]
    assert_stats_match(doc, hists, name)
    assert load_json(tmp_path / f"{name}.stats.json") == doc
    assert (tmp_path / f"{name}.lengths.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / f"{name}.distribution.png").stat().st_size > 1000


def test_official_quirks() -> None:
    assert convert.first_word("is the sun a star") == "yesno"
    assert convert.first_word("Are cats mammals") == "yesno"
    assert convert.first_word("does coffee or tea have more caffeine") == "other"  # "or" -> not yes/no
    assert convert.first_word(" is it") == "other"  # first space-separated token is ""
    assert convert.first_word("yesno or maybe") == "yesno"  # the label itself is a head word
    assert convert.first_word("What  is x") == "what"
    assert convert.first_word("") == "other"


# --------------------------------------------------------------------------- parity: the sample
@pytest.fixture(scope="module")
def sample_md5_ok() -> None:
    for line in (EXP / "sample.md5").read_text().splitlines():
        digest, rel = line.split()
        actual = hashlib.md5((ROOT / rel).read_bytes()).hexdigest()
        assert actual == digest, (
            f"{rel} changed since the official outputs in {EXP} were made: "
            "run tests/fixtures/qa/regenerate_expected.sh (see its README)"
        )


def params_for(tmp_path: Path) -> Path:
    """A params.yaml whose raw/qa paths point into tmp_path, with the sample's QA files."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text()) if (ROOT / "params.yaml").exists() else None
    if data is None:
        from tasks.config import compose

        data = yaml.safe_load(compose("sample"))
    raw, qa = tmp_path / "raw", tmp_path / "qa"
    data["paths"]["raw"], data["paths"]["qa"] = str(raw), str(qa)
    for split in ("train", "dev"):
        dst = raw / data["inputs"][f"qa_{split}"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((SAMPLE / f"{split}_v2.1.json.gz").read_bytes())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    return params


def test_pipeline_on_sample(tmp_path: Path, sample_md5_ok: None) -> None:
    params = params_for(tmp_path)
    for split in ("train", "dev"):
        assert convert.main(["pipeline", "--split", split, "--params", str(params)]) == 0
    qa = tmp_path / "qa"
    first = {str(p.relative_to(qa)): p.read_bytes() for p in qa.rglob("*") if p.is_file()}
    assert sorted(first) == sorted(
        f"{s}/{s}.{suffix}"
        for s in ("train", "dev")
        for suffix in (
            "jsonl.gz",
            "wellformed.jsonl.gz",
            "stats.json",
            "lengths.csv",
            "lengths.png",
            "distribution.png",
        )
    )
    for split in ("train", "dev"):
        source = load_json(SAMPLE / f"{split}_v2.1.json.gz")
        rows = reference_rows(source)
        out = qa / split
        assert load_jsonl(out / f"{split}.jsonl.gz") == rows
        kept = (EXP / f"sample.{split}.wellformed_keys.txt").read_text().split()
        expected_wf = [
            {
                **{c: source[c][k] for c in ("passages", "query", "query_id", "query_type")},
                "answers": source["wellFormedAnswers"][k],
            }
            for k in kept
        ]
        assert load_jsonl(out / f"{split}.wellformed.jsonl.gz") == expected_wf
        assert_stats_match(load_json(out / f"{split}.stats.json"), None, f"sample.{split}")
    # Deterministic: a second run gives the same bytes, PNGs included.
    assert convert.main(["pipeline", "--split", "dev", "--params", str(params)]) == 0
    assert {str(p.relative_to(qa)): p.read_bytes() for p in qa.rglob("*") if p.is_file()} == first


def test_pipeline_rejects_unknown_split(tmp_path: Path) -> None:
    assert convert.main(["pipeline", "--split", "eval", "--params", str(params_for(tmp_path))]) == 2


# --------------------------------------------------------------------------- streaming mechanics
def write_doc(path: Path, doc: Any, **dump: Any) -> Path:
    text = json.dumps(doc, **dump)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def train_doc() -> dict[str, dict[str, Any]]:
    return load_json(FIX / "train_small.json")


@pytest.mark.parametrize(
    "dump",
    [{}, {"indent": 3}, {"separators": (",", ":"), "ensure_ascii": False}],
    ids=["spaces", "indent", "compact"],
)
def test_round_trip_any_formatting_and_tiny_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dump: dict[str, Any]
) -> None:
    monkeypatch.setattr(qa_format, "CHUNK_BYTES", 7)  # every token straddles a chunk boundary
    src = write_doc(tmp_path / "in.json.gz", train_doc(), **dump)
    convert.tojsonl(src, tmp_path / "rows.jsonl.gz")
    assert load_jsonl(tmp_path / "rows.jsonl.gz") == load_jsonl(EXP / "train_small.tojsonl.jsonl")
    convert.tojson(tmp_path / "rows.jsonl.gz", tmp_path / "back.json.gz")
    assert load_json(tmp_path / "back.json.gz") == train_doc()


def test_keys_out_of_order_are_sorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qa_format, "SORT_RUN_LINES", 3)  # several sorted runs to merge
    doc = train_doc()
    rows = reference_rows(doc) * 2  # 22 rows: string order "0","1","10",... differs from numeric
    big = {c: {str(i): r[c] for i, r in enumerate(rows)} for c in doc}
    src = write_doc(tmp_path / "lex.json", big, sort_keys=True)
    assert json.loads(src.read_text())["query"].keys().__iter__().__next__() == "0"
    convert.tojsonl(src, tmp_path / "rows.jsonl")
    assert load_jsonl(tmp_path / "rows.jsonl") == rows


def test_distinct_lengths_spill_equals_memory(tmp_path: Path) -> None:
    texts = [f"w{i % 37} " * (i % 11) for i in range(500)]
    small, mem = convert.DistinctLengths(tmp_path, "a", batch=16), convert.DistinctLengths(tmp_path, "b")
    for t in texts:
        small.add(t)
        mem.add(t)
    expected: dict[int, int] = {}
    for t in set(texts):
        expected[len(t.split())] = expected.get(len(t.split()), 0) + 1
    assert small.spilled and not mem.spilled
    assert small.histogram() == mem.histogram() == expected


def test_empty_subset_keeps_columns(tmp_path: Path) -> None:
    doc = train_doc()
    doc["wellFormedAnswers"] = {k: "[]" for k in doc["query"]}
    src = write_doc(tmp_path / "none.json", doc)
    assert convert.wellformed(src, tmp_path / "wf.json") == 0
    assert load_json(tmp_path / "wf.json") == {c: {} for c in convert.WELL_FORMED_COLUMNS}


@pytest.mark.parametrize("cmd", ["tojsonl", "tojson", "wellformed", "stats", "pipeline"])
def test_help_explains_with_example(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        convert.main([cmd, "--help"])
    assert exc.value.code == 0
    assert "example: python -m tasks.convert " + cmd in capsys.readouterr().out


# --------------------------------------------------------------------------- bad input
def _drop_key(doc: dict[str, Any]) -> dict[str, Any]:
    del doc["query"]["5"]
    return doc


def _set(column: str, key: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> dict[str, Any]:
        doc[column][key] = value
        return doc

    return edit


BAD_DOCS = {
    "row set": (_drop_key, r"row key '5' is in column 'answers' but not in column 'query'"),
    "missing column": (lambda d: {c: v for c, v in d.items() if c != "query_id"}, r"missing .*query_id"),
    "unknown column": (lambda d: {**d, "extra": {}}, r"unknown column .*'extra'"),
    "query_id type": (
        _set("query_id", "3", "3"),
        r"query_id must be an integer .*column 'query_id', key '3'",
    ),
    "query_id float": (_set("query_id", "4", 4.5), r"query_id must be an integer .*key '4'"),
    "passage type": (
        _set("passages", "2", [{"is_selected": 0, "passage_text": "x"}]),
        r"passage 0: passage_text and url must be strings .*key '2'",
    ),
    "wfa string": (_set("wellFormedAnswers", "1", "none"), r'wellFormedAnswers must be .*"\[\]".*key \'1\''),
    "answers type": (_set("answers", "0", "text"), r"answers must be a list of strings .*key '0'"),
    "not columns": (lambda d: {"query": ["a"]}, r"each column must map row keys to values .*column 'query'"),
    "bad key": (lambda d: {c: {"x" + k: v for k, v in col.items()} for c, col in d.items()}, r"non-negative"),
}


@pytest.mark.parametrize("compact", [False, True], ids=["spaced", "compact"])  # parse path / fast path
@pytest.mark.parametrize("case", list(BAD_DOCS))
def test_bad_documents_fail_clearly(tmp_path: Path, case: str, compact: bool) -> None:
    edit, pattern = BAD_DOCS[case]
    (tmp_path / "in").mkdir()
    dump = {"separators": (",", ":")} if compact else {}
    src = write_doc(tmp_path / "in" / "bad.json", edit(train_doc()), **dump)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=pattern):
        convert.tojsonl(src, out / "rows.jsonl.gz")
    assert files_in(out) == []  # nothing under the final name, no spills left


def bad_bytes(name: str) -> tuple[bytes, str]:
    good = json.dumps(train_doc(), separators=(",", ":")).encode("utf-8")
    cases = {
        "truncated": (good[: len(good) // 2], r"truncated JSON"),
        "empty": (b"", r"empty file"),
        "whitespace": (b" \n\t\n", r"empty file"),
        "utf8": (
            good.replace(b"Hamlet is", b"Haml\xffet is"),
            r"invalid UTF-8 at byte \d+.*column 'passages', key '3'",
        ),
        "syntax": (good.replace(b'"query_id":{"0":1102432,', b'"query_id":{"0":1102432;'), r"key '0'.*"),
        "duplicate key": (good.replace(b'"query":{"0":', b'"query":{"1":"x","0":'), r"key '1'"),
        "trailing": (good + b"{}", r"unexpected data after the top-level object"),
        "top list": (b"[1, 2]", r"expected '\{' opening the object of columns"),
    }
    return cases[name]


@pytest.mark.parametrize(
    "case", ["truncated", "empty", "whitespace", "utf8", "syntax", "duplicate key", "trailing", "top list"]
)
def test_bad_bytes_fail_clearly(tmp_path: Path, case: str) -> None:
    data, pattern = bad_bytes(case)
    src = tmp_path / "bad.json"
    src.write_bytes(data)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=pattern):
        convert.tojsonl(src, out / "rows.jsonl")
    assert files_in(out) == []


def test_truncated_gzip_fails_clearly(tmp_path: Path) -> None:
    full = gzip.compress(json.dumps(train_doc()).encode(), mtime=0)
    src = tmp_path / "cut.json.gz"
    src.write_bytes(full[: len(full) - 20])
    with pytest.raises(DataError, match=r"truncated"):
        convert.tojsonl(src, tmp_path / "out" / "rows.jsonl")
    assert files_in(tmp_path / "out") == []


JSONL_BAD = {
    "invalid json": (lambda lines: lines[:2] + [lines[2][:-5]] + lines[3:], r"bad\.jsonl:3: invalid JSON"),
    "columns differ": (
        lambda lines: (
            lines[:3]
            + [json.dumps({k: v for k, v in json.loads(lines[3]).items() if k != "answers"})]
            + lines[4:]
        ),
        r"bad\.jsonl:4: columns .* differ",
    ),
    "blank line": (lambda lines: lines[:1] + [""] + lines[1:], r"bad\.jsonl:2: blank line"),
    "wrong type": (
        lambda lines: lines[:4] + [lines[4].replace('"query_id":5', '"query_id":"5"')] + lines[5:],
        r"bad\.jsonl:5: query_id must be an integer",
    ),
    "not object": (lambda lines: ["[1]"] + lines, r"bad\.jsonl:1: expected a JSON object"),
    "empty": (lambda lines: [], r"empty file"),
}


@pytest.mark.parametrize("case", list(JSONL_BAD))
def test_bad_jsonl_fails_clearly(tmp_path: Path, case: str) -> None:
    edit, pattern = JSONL_BAD[case]
    lines = [json.dumps(r, separators=(",", ":")) for r in load_jsonl(EXP / "train_small.tojsonl.jsonl")]
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(line + "\n" for line in edit(lines)), encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=pattern):
        convert.tojson(src, out / "cols.json")
    assert files_in(out) == []


def test_jsonl_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    lines = (EXP / "train_small.tojsonl.jsonl").read_bytes().splitlines(keepends=True)
    lines[6] = lines[6].replace(b"corporation", b"corpor\xc3ation", 1)
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"".join(lines))
    with pytest.raises(DataError, match=r"bad\.jsonl:7: invalid UTF-8"):
        convert.wellformed(src, tmp_path / "out" / "wf.jsonl")
    assert files_in(tmp_path / "out") == []


def test_wellformed_needs_the_column(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no 'wellFormedAnswers' column"):
        convert.wellformed(FIX / "eval_small.json", tmp_path / "wf.json")
    assert files_in(tmp_path) == []


def test_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_bytes(b"")
    assert convert.main(["tojsonl", str(tmp_path / "bad.json"), str(tmp_path / "x.jsonl")]) == 1
    assert "empty file" in capsys.readouterr().err
    assert convert.main(["tojsonl", str(FIX / "train_small.json"), str(tmp_path / "x.json")]) == 1
    assert "must be named *.jsonl" in capsys.readouterr().err


def test_run_uses_tmp_dir_param(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    doc = convert.run("dev", FIX / "train_small.json", tmp_path / "qa", Convert(tmp_dir=str(scratch)))
    assert doc["queries"] == 11
    assert scratch.is_dir() and files_in(scratch) == []
    assert len(load_jsonl(tmp_path / "qa" / "dev.wellformed.jsonl.gz")) == 7


def test_escaped_no_well_formed_marker(tmp_path: Path) -> None:
    text = json.dumps(train_doc(), separators=(",", ":"))
    marked = text.replace('"wellFormedAnswers":{"0":"[]"', '"wellFormedAnswers":{"0":"\\u005b\\u005d"')
    assert marked != text
    (tmp_path / "in.json").write_text(marked)
    assert convert.wellformed(tmp_path / "in.json", tmp_path / "wf.json") == 7


# --------------------------------------------------------------------------- fast path vs exact scanner
def read_both(src: Path, tmp_path: Path, **kw: Any) -> tuple[qa_format.RowReader, list[Any], list[Any]]:
    """(the default reader, its rows and JSONL lines); asserts they equal the exact scanner's."""
    results = []
    for compact in (True, False):
        work = tmp_path / f"work-{compact}"
        work.mkdir(exist_ok=True)
        with qa_format.RowReader(src, work, compact=compact, **kw) as reader:
            lines = list(reader.lines())
        with qa_format.RowReader(src, work, compact=compact, **kw) as again:
            rows = list(again)
        assert files_in(work) == [], "spills are removed on exit"
        results.append((reader, rows, lines))
    (fast, rows, lines), (exact, exact_rows, exact_lines) = results
    assert not exact.fast
    assert lines == exact_lines  # byte for byte
    assert rows == exact_rows
    assert fast.columns == exact.columns and fast.rows == exact.rows
    return fast, rows, lines


SAMPLE_QA = ["train_v2.1.json.gz", "dev_v2.1.json.gz"]


@pytest.mark.parametrize("name", SAMPLE_QA)
def test_fast_path_reads_the_released_layout(tmp_path: Path, name: str) -> None:
    reader, rows, lines = read_both(SAMPLE / name, tmp_path)
    assert reader.fast and len(rows) > 100
    plain = tmp_path / name.removesuffix(".gz")  # uncompressed: the entries are re-read from the input
    plain.write_bytes(gzip.decompress((SAMPLE / name).read_bytes()))
    reader, _, plain_lines = read_both(plain, tmp_path)
    assert reader.fast and plain_lines == lines


@pytest.mark.parametrize("size", [64, 4096])
def test_fast_path_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Small chunks: values longer than a chunk, cuts at every entry; same rows as the exact scanner."""
    monkeypatch.setattr(qa_compact, "CHUNK_BYTES", size)
    text = gzip.decompress((SAMPLE / "dev_v2.1.json.gz").read_bytes())
    src = tmp_path / "dev.json"
    src.write_bytes(text)
    reader, rows, _ = read_both(src, tmp_path)
    assert reader.fast and len(rows) == len(json.loads(text)["query"])


def compact_doc(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def fallback_docs() -> dict[str, str]:
    """Valid compact files at the edges of the fast path; it hands over all but :data:`FAST_CASES`."""
    doc = train_doc()
    quotes = json.loads(json.dumps(doc))
    # Boundaries inside strings: JSON escapes the quotes, so these bytes never match one.
    quotes["passages"]["3"][0]["passage_text"] = 'a,"12":[1] and },"query":{"0":"x" end'
    quotes["query"]["2"] = '},"query_id":{"5":1'
    gaps = {c: {str(int(k) * 3 + 1): v for k, v in col.items()} for c, col in doc.items()}
    extra = json.loads(json.dumps(doc))
    # Extra passage fields (kept in the output) that look like an entry and a column boundary.
    extra["passages"]["1"][0].update({"a": {}, "query": {"0": 1}, "12": [2]})
    big = json.loads(json.dumps(doc))
    big["query_id"]["4"] = 2**70  # beyond 64 bits: valid JSON integer
    wfa = '"wellFormedAnswers":{"0":'
    last = compact_doc(doc).replace(wfa + '"[]"', wfa + '"\\u005b\\u005d"')
    return {
        "escaped quotes": compact_doc(quotes),
        "key gaps": compact_doc(gaps),  # checked one by one
        "extra field": compact_doc(extra),
        "big integer": compact_doc(big),
        "escaped marker in the last column": last,
        "spaces in one column": compact_doc(doc).replace('"query_type":{"0":', '"query_type":{ "0" : '),
        "newline at the end": compact_doc(doc) + "\n",
        "lexical key order": json.dumps(doc, separators=(",", ":"), sort_keys=True),
    }


FAST_CASES = ("escaped quotes", "key gaps", "big integer", "newline at the end")


@pytest.mark.parametrize("case", list(fallback_docs()))
@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_fast_path_hands_over_what_it_does_not_know(tmp_path: Path, case: str, suffix: str) -> None:
    text = fallback_docs()[case]
    src = tmp_path / f"in{suffix}"
    src.write_bytes(gzip.compress(text.encode(), mtime=0) if suffix.endswith(".gz") else text.encode())
    reader, rows, lines = read_both(src, tmp_path)
    assert reader.fast == (case in FAST_CASES)
    doc = json.loads(text)
    assert [json.loads(line) for line in lines] == reference_rows(doc)


def test_stats_forget_what_the_fast_path_counted(tmp_path: Path) -> None:
    """The fast path gives up in the last column: the stats count every value once."""
    src = tmp_path / "in.json"
    src.write_text(fallback_docs()["escaped marker in the last column"])
    (tmp_path / "a").mkdir()
    exact = convert.QaStats(tmp_path / "a")
    with qa_format.RowReader(src, tmp_path / "a", on_value=exact.add, compact=False) as reader:
        list(reader)
    assert convert.stats(src, tmp_path / "b") == exact.result(src.name, reader.columns)[0]
    assert convert.stats(src)["queries"] == 11


@pytest.mark.parametrize(
    "edit",
    [
        (b'"query":{"0":', b'"query":{"0":"x","0":', r"duplicate row key.*key '0'"),
        (b'"query_id":{"0":1102432,', b'"query_id":{"0":1102432,"11":5,', r"row key '11' is in column"),
        (b'"query_type":{"0":"DESCRIPTION",', b'"query_type":{"0":"DESCRIPTION","1":"x","1":"y",', "key '1'"),
    ],
    ids=["duplicate first key", "extra key", "duplicate key"],
)
def test_fast_path_errors_come_from_the_exact_scanner(tmp_path: Path, edit: tuple[bytes, bytes, str]) -> None:
    old, new, pattern = edit
    good = compact_doc(train_doc()).encode()
    assert old in good
    src = tmp_path / "bad.json"
    src.write_bytes(good.replace(old, new, 1))
    with pytest.raises(DataError, match=pattern):
        convert.tojsonl(src, tmp_path / "out" / "rows.jsonl")
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == []
