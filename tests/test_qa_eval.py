"""QA answer metrics against the official MS MARCO QA evaluation's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.evaluate import main
from tasks.io import DataError
from tasks.qa_eval import corpus_bleu, evaluate_answers, normalize, rouge_l
from tests._evaluate_helpers import fixture_dir

# Printed by the official ms_marco_eval.py (coco-caption Bleu/Rouge, spaCy English tokenizer).
SAMPLE = {
    "bleu_1": 0.004374576242730617,
    "bleu_2": 2.396054086871068e-10,
    "bleu_3": 9.099485274200084e-10,
    "bleu_4": 1.7732784289178339e-09,
    "rouge_l": 0.020622041920216362,
    "F1": 0.5714285714285715,
}


def _write(path: Path, rows: list[tuple[int, list[str]]]) -> Path:
    path.write_text("".join(json.dumps({"query_id": q, "answers": a}) + "\n" for q, a in rows))
    return path


def test_sample_matches_official_output():
    fx = fixture_dir("msmarco-qa-eval")
    scores = evaluate_answers(fx / "sample_references.json", fx / "sample_candidates.json")
    assert scores["bleu_1"] == pytest.approx(0.004374576, abs=1e-6)
    assert scores["rouge_l"] == pytest.approx(0.020622042, abs=1e-6)
    assert scores["F1"] == pytest.approx(0.571428571, abs=1e-6)
    for name, value in SAMPLE.items():
        assert scores[name] == pytest.approx(value, rel=1e-9), name
    # Novice-task success: 14043, 14509 right; 14042, 14041 answered a no-answer; 1 said no answer.
    assert scores["success"] == pytest.approx(2 / 5)
    assert scores["weighted_bleu_1"] == pytest.approx(SAMPLE["bleu_1"] * 0.4)
    assert scores["weighted_rouge_l"] == pytest.approx(SAMPLE["rouge_l"] * 0.4)


def test_same_answer_pair_scores_one(caplog):
    fx = fixture_dir("msmarco-qa-eval")
    scores = evaluate_answers(
        fx / "same_answer_test_references.json", fx / "same_answer_test_candidates.json"
    )
    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "F1", "success"):
        assert scores[name] == pytest.approx(1.0, abs=1e-6), name
    assert "query_id 2 has no reference answers" in caplog.text  # empty list: left out, as official


def test_no_answer_fixture_says_what_is_wrong():
    fx = fixture_dir("msmarco-qa-eval")
    with pytest.raises(
        DataError, match=r"no_answer_test_candidates.json:1: query_id 0 has an empty 'answers'"
    ):
        evaluate_answers(fx / "no_answer_test_references.json", fx / "no_answer_test_candidates.json")


def test_clear_errors(tmp_path):
    refs = _write(tmp_path / "refs.json", [(1, ["a b"]), (2, ["c"])])
    multi = _write(tmp_path / "multi.json", [(1, ["a", "b"]), (2, ["c"])])
    with pytest.raises(DataError, match="multi.json:1: query_id 1 has 2 answers"):
        evaluate_answers(refs, multi)
    short = _write(tmp_path / "short.json", [(1, ["a"]), (3, ["c"])])
    with pytest.raises(
        DataError, match=r"1 reference query id\(s\) have no candidate \(2\).*not in the references \(3\)"
    ):
        evaluate_answers(refs, short)
    dup = _write(tmp_path / "dup.json", [(1, ["a"]), (1, ["c"])])
    with pytest.raises(DataError, match="dup.json:2: query_id 1 already on line 1"):
        evaluate_answers(refs, dup)
    bad = tmp_path / "bad.json"
    bad.write_text('{"query_id": "x", "answers": ["a"]}\n')
    with pytest.raises(DataError, match="bad.json:1: 'query_id' must be an integer"):
        evaluate_answers(refs, bad)
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="bad.json:1: invalid JSON"):
        evaluate_answers(refs, bad)


def test_success_weighting_and_f1(tmp_path):
    refs = _write(
        tmp_path / "r.json", [(1, ["the cat sat"]), (2, ["No Answer Present."]), (3, ["dogs bark"])]
    )
    cands = _write(
        tmp_path / "c.json", [(1, ["the cat sat"]), (2, ["No Answer Present."]), (3, ["No Answer Present."])]
    )
    s = evaluate_answers(refs, cands)
    assert s["success"] == pytest.approx(2 / 3)
    # ms_marco_eval's F1: tp=1 (q1), fn=1 (q3), tn=1 (q2), fp=0 -> P=1, R=0.5.
    assert s["F1"] == pytest.approx(2 / 3)
    assert s["weighted_rouge_l"] == pytest.approx(s["rouge_l"] * 2 / 3)
    assert s["rouge_l"] == pytest.approx(0.5)  # q1 perfect, q3's empty answer scores 0


def test_tokenisation_bleu_and_rouge_units():
    assert normalize(["Hello, World.", "It's  A test"]) == ["hello , world .", "it 's  a test"]
    assert corpus_bleu(["a b c d"], [["a b c d"]])[3] == pytest.approx(1.0, abs=1e-6)
    # LCS("a b c d", "a c e") = 2: P = 2/3, R = 2/4, beta 1.2.
    p, r = 2 / 3, 0.5
    assert rouge_l("a c e", ["a b c d"]) == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p))


def test_cli_qa(tmp_path, capsys):
    fx = fixture_dir("msmarco-qa-eval")
    out = tmp_path / "qa.json"
    assert (
        main(
            [
                "qa",
                str(fx / "sample_references.json"),
                str(fx / "sample_candidates.json"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert "bleu_1: 0.00437457624" in capsys.readouterr().out
    assert json.loads(out.read_text())["rouge_l"] == pytest.approx(SAMPLE["rouge_l"])
    assert (
        main(["qa", str(fx / "no_answer_test_references.json"), str(fx / "no_answer_test_candidates.json")])
        == 2
    )
    assert "empty 'answers' list" in capsys.readouterr().err
