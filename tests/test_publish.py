"""publish: the int-id outputs rewritten with the user's string ids (tiny inputs, the real writers)."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks import publish
from tasks.config import CORPUS_IDS, QUERY_IDS, ROOT, compose, load_config
from tasks.io import DataError
from tasks.records import HardNegatives, Hit, write_hard_negatives, write_run
from tasks.scores_pickle import load_scores_pickle_ids, write_scores_pickle

CE = "smoke-cross-encoder"
PICKLE = f"{CE}-scores.pkl.gz"
QIDS = ["q-é0", "質問-1", "q2", "q3"]  # int qid i -> QIDS[i]
PIDS = ["doc-ü0", "文書-1", "d2", "d3", "d4", "d5"]
NEGATIVES = [
    HardNegatives(0, [1], {"bm25": [2, 3], "smoke-a": [4, 2]}),
    HardNegatives(2, [5, 0], {"bm25": [3], "smoke-a": []}),
]
DENOISED = [
    HardNegatives(0, [1], {"bm25": [3], "smoke-a": [4]}),
    HardNegatives(2, [5, 0], {"bm25": [], "smoke-a": []}),
]
SCORES = [(0, 1, 2.5), (0, 2, -1.25), (0, 3, 0.125), (0, 4, 1.0), (2, 0, 3.0), (2, 3, -0.5), (2, 5, 4.0)]
RUN = [Hit(1, 3, 1, 7.25), Hit(1, 0, 2, 6.5), Hit(3, 5, 1, 0.333333)]


def _build(
    raw: Path, out: Path, runs: Path, query_ids: list[str] = QIDS, corpus_ids: list[str] = PIDS
) -> None:
    """The int-id inputs of publish, written by the stages' own writers, and the id maps."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / QUERY_IDS).write_text("".join(f"{q}\n" for q in query_ids), encoding="utf-8")
    (raw / CORPUS_IDS).write_text("".join(f"{p}\n" for p in corpus_ids), encoding="utf-8")
    write_hard_negatives(out / "msmarco-hard-negatives.jsonl.gz", NEGATIVES)
    write_hard_negatives(out / "msmarco-hard-negatives.denoised.jsonl.gz", DENOISED)
    q, p, s = (np.array(c) for c in zip(*SCORES, strict=True))
    write_scores_pickle(out / PICKLE, q, p, s)
    write_run(runs / "bm25" / "dev.full.trec", RUN, "bm25")
    write_run(runs / "smoke-a" / "dev.trec", RUN[:1], "smoke-a")


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    paths = {"raw": tmp_path / "raw" / "x", "out": tmp_path / "out", "runs": tmp_path / "runs"}
    _build(paths["raw"], paths["out"], paths["runs"])
    return paths


def _publish(inputs: dict[str, Path], dest: Path | None = None) -> tuple[Path, dict[str, object]]:
    dest = dest or inputs["out"] / "x"
    counts = publish.run("x", inputs["raw"], inputs["out"], PICKLE, inputs["runs"], dest)
    return dest, counts


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def _named(rec: HardNegatives) -> dict[str, object]:
    return {"qid": QIDS[rec.qid], "pos": [PIDS[p] for p in rec.pos],
            "neg": {s: [PIDS[p] for p in v] for s, v in rec.neg.items()}}  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_hard_negatives_are_mapped_in_order_and_shape(inputs: dict[str, Path]) -> None:
    dest, counts = _publish(inputs)
    assert counts["negatives"] == 2 and counts["denoised"] == 2
    for name, records in (
        ("hard-negatives.jsonl.gz", NEGATIVES),
        ("hard-negatives.denoised.jsonl.gz", DENOISED),
    ):
        raw = (dest / name).read_bytes()
        assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
        lines = _lines(dest / name)
        assert [json.loads(line) for line in lines] == [_named(r) for r in records]
        assert all(list(json.loads(line)) == ["qid", "pos", "neg"] for line in lines)
        assert list(json.loads(lines[0])["neg"]) == ["bm25", "smoke-a"]
    assert _lines(dest / "hard-negatives.jsonl.gz")[0] == (
        '{"qid": "q-é0", "pos": ["文書-1"], "neg": {"bm25": ["d2", "d3"], "smoke-a": ["d4", "d2"]}}'
    )


def test_score_pickle_is_plain_and_loads_both_ways(inputs: dict[str, Path]) -> None:
    dest, counts = _publish(inputs)
    want: dict[str, dict[str, float]] = {}
    for q, p, s in SCORES:
        want.setdefault(QIDS[q], {})[PIDS[p]] = s
    with gzip.open(dest / PICKLE, "rb") as fh:
        plain = pickle.load(fh)
    assert plain == want and counts["score_queries"] == 2
    assert list(plain) == list(want) and [list(v) for v in plain.values()] == [list(v) for v in want.values()]
    assert all(type(s) is float for inner in plain.values() for s in inner.values())
    assert load_scores_pickle_ids(dest / PICKLE) == want
    # the same bytes as pickle.dumps of the dict built over the id lists (strings shared, memoised once)
    shared = {QIDS[q]: {} for q, _, _ in SCORES}
    for q, p, s in SCORES:
        shared[QIDS[q]][PIDS[p]] = s
    assert gzip.decompress((dest / PICKLE).read_bytes()) == pickle.dumps(shared, protocol=2)


def test_runs_are_mapped_keeping_the_other_columns(inputs: dict[str, Path]) -> None:
    dest, counts = _publish(inputs)
    assert counts["runs"] == {"bm25/dev.full.trec": 3, "smoke-a/dev.trec": 1}
    assert (dest / "runs/bm25/dev.full.trec").read_text(encoding="utf-8").splitlines() == [
        "質問-1 Q0 d3 1 7.250000 bm25",
        "質問-1 Q0 doc-ü0 2 6.500000 bm25",
        "q3 Q0 d5 1 0.333333 bm25",
    ]
    assert (dest / "runs/smoke-a/dev.trec").read_text(encoding="utf-8") == "質問-1 Q0 d3 1 7.250000 smoke-a\n"
    readme = (dest / "README.md").read_text(encoding="utf-8")
    assert "YOURS" in readme and PICKLE in readme and "hard-negatives.denoised.jsonl.gz" in readme


def test_rerun_gives_the_same_bytes(inputs: dict[str, Path], tmp_path: Path) -> None:
    first, _ = _publish(inputs)
    before = _snapshot(first)
    _publish(inputs)
    assert _snapshot(first) == before
    other, _ = _publish(inputs, tmp_path / "elsewhere" / "x")
    assert _snapshot(other) == before
    assert set(before) == {
        "README.md", "hard-negatives.jsonl.gz", "hard-negatives.denoised.jsonl.gz", PICKLE,
        "runs/bm25/dev.full.trec", "runs/smoke-a/dev.trec",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("short", "where", "message"),
    [
        ("corpus", "msmarco-hard-negatives.jsonl.gz:1 (neg.bm25)", "pid 3 is not in"),
        ("queries", "msmarco-hard-negatives.jsonl.gz:2", "qid 2 is not in"),
    ],
)
def test_an_id_outside_the_map_names_file_line_and_id(
    inputs: dict[str, Path], short: str, where: str, message: str
) -> None:
    dest, _ = _publish(inputs)
    good = _snapshot(dest)
    name = CORPUS_IDS if short == "corpus" else QUERY_IDS
    ids = PIDS[:3] if short == "corpus" else QIDS[:2]  # drops pid 3 (line 1) / qid 2 (line 2)
    (inputs["raw"] / name).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        _publish(inputs)
    assert where in str(err.value) and name in str(err.value)
    assert _snapshot(dest) == good  # the previous folder stays as it was
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".x.")]  # no staging left behind


def test_bad_ids_in_a_run_and_the_pickle(inputs: dict[str, Path]) -> None:
    write_run(inputs["runs"] / "bm25" / "dev.full.trec", [*RUN, Hit(1, 99, 3, 0.5)], "bm25")
    with pytest.raises(DataError, match=r"dev\.full\.trec:4: pid 99 is not in .*corpus_ids\.txt"):
        _publish(inputs)
    write_run(inputs["runs"] / "bm25" / "dev.full.trec", RUN, "bm25")
    write_scores_pickle(inputs["out"] / PICKLE, np.array([0, 7]), np.array([1, 1]), np.array([0.5, 0.5]))
    with pytest.raises(DataError, match=r"scores\.pkl\.gz: scores\[7\]: qid 7 is not in"):
        _publish(inputs)
    assert not (inputs["out"] / "x").exists()


def test_an_id_with_whitespace_cannot_go_into_a_run(tmp_path: Path) -> None:
    paths = {"raw": tmp_path / "raw" / "x", "out": tmp_path / "out", "runs": tmp_path / "runs"}
    _build(paths["raw"], paths["out"], paths["runs"], corpus_ids=[*PIDS[:3], "d 3", *PIDS[4:]])
    with pytest.raises(DataError, match=r"dev\.full\.trec:1: pid 3 is 'd 3' .* holds whitespace"):
        _publish(paths)


def test_missing_or_broken_id_maps(inputs: dict[str, Path]) -> None:
    (inputs["raw"] / QUERY_IDS).unlink()
    with pytest.raises(FileNotFoundError, match=r"query_ids\.txt: no id map .*dvc repro ingest@x"):
        _publish(inputs)
    (inputs["raw"] / QUERY_IDS).write_text("a\nb\na\nc\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"query_ids\.txt:3: id 'a' already names qid 0 \(line 1\)"):
        _publish(inputs)
    (inputs["raw"] / QUERY_IDS).write_text("a\n\nb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"query_ids\.txt:2: empty id"):
        _publish(inputs)


def test_missing_inputs_name_the_stage(inputs: dict[str, Path]) -> None:
    (inputs["out"] / "msmarco-hard-negatives.denoised.jsonl.gz").unlink()
    with pytest.raises(FileNotFoundError, match="denoised.jsonl.gz: not found; run the denoise stage"):
        _publish(inputs)


def test_cli_with_a_profile_of_your_own(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "profile").mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "base.yaml", conf / "base.yaml")
    sample = yaml.safe_load((ROOT / "conf" / "profile" / "sample.yaml").read_text(encoding="utf-8"))
    base = yaml.safe_load((conf / "base.yaml").read_text(encoding="utf-8"))
    (tmp_path / "beir").mkdir()
    profile = {
        "datasets": {"x": {"format": "beir", "path": str(tmp_path / "beir")}},
        "systems": sample["systems"],
        "cross_encoder": sample["cross_encoder"],
        "paths": {key: str(tmp_path / "data" / key) for key in base["paths"]},
    }
    (conf / "profile" / "x.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    params = tmp_path / "params.yaml"
    params.write_text(compose("x", conf), encoding="utf-8")
    cfg = load_config(params)
    assert cfg.cross_encoder.name == CE and cfg.path("out") == tmp_path / "data" / "out"
    _build(cfg.path("raw") / "x", cfg.path("out"), cfg.path("runs"))

    assert publish.main(["--dataset", "x", "--params", str(params)]) == 0
    dest = cfg.path("out") / "x"
    assert [json.loads(line) for line in _lines(dest / "hard-negatives.jsonl.gz")] == [
        _named(r) for r in NEGATIVES
    ]
    for name in ("hard-negatives.jsonl.gz", "hard-negatives.denoised.jsonl.gz", PICKLE):
        record = json.loads((dest / f"{name}.provenance.json").read_text(encoding="utf-8"))
        assert record["stage"] == "publish@x"
        assert [e["path"] for e in record["outputs"]] == [f"${{paths.out}}/x/{name}"]
        assert "${paths.raw}/x/corpus_ids.txt" in [e["path"] for e in record["inputs"]]
        assert record["params"] == {"cross_encoder.name": CE}
    first = _snapshot(dest)
    assert publish.main(["--dataset", "x", "--params", str(params)]) == 0
    assert _snapshot(dest) == first  # records included: no timestamps
    assert publish.main(["--dataset", "nope", "--params", str(params)]) == 2
    (cfg.path("raw") / "x" / CORPUS_IDS).unlink()
    assert publish.main(["--dataset", "x", "--params", str(params)]) == 1
    assert _snapshot(dest) == first
