"""MS MARCO QA answer evaluation, computed exactly as the official ``ms_marco_eval.py``.

What the official script does, and so what this module does:

- Text is tokenised with spaCy's English tokenizer (``spacy.lang.en.English()``, no model
  download), each token stripped and lower-cased, tokens joined by single spaces.
- A query whose answers contain ``"No Answer Present."`` is a no-answer query; its answer
  becomes the empty string. No-answer *references* are left out of BLEU and ROUGE-L.
- BLEU-1..4 is coco-caption's corpus BLEU (``closest`` reference length, the 1e-9 / 1e-15
  smoothing constants, brevity penalty on the corpus ratio); n-grams from ``str.split()``.
- ROUGE-L is coco-caption's: LCS on ``str.split(" ")`` tokens, best precision and best recall
  over the references, F-measure with beta 1.2, averaged over queries.
- F1 is the answer / no-answer F1 the script prints (its own precision and recall
  definitions, reproduced as they are).

Added from the MS MARCO novice task (seed 004): per query success is 0 for an answer where
the reference has none, 0 for "No Answer Present." where the reference has an answer, 1
otherwise; ``success`` is its mean and ``weighted_<metric>`` = metric x success.

Stricter than the official script, with errors that say what is wrong: candidate and
reference query ids must be the same set; a candidate gives exactly one answer; duplicate
query ids are refused. A reference with an empty answer list is ignored with a warning, as
the official script (silently) does. Not computed: the script's ``Semantic_Similarity``
(it needs spaCy's ``en_core_web_lg`` vectors, which this project does not download).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tasks.io import DataError, iter_lines

log = logging.getLogger(__name__)

NO_ANSWER = "No Answer Present."
MAX_BLEU_ORDER = 4
ROUGE_BETA = 1.2
_SMALL, _TINY = 1e-9, 1e-15  # coco-caption's smoothing constants


@dataclass(frozen=True)
class AnswerRecord:
    query_id: int
    answers: list[str]
    lineno: int


def read_answers(path: str | Path) -> Iterator[AnswerRecord]:
    """``{"query_id": int, "answers": [str, ...]}`` per line; bad lines raise :class:`DataError`."""
    path = Path(path)
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with query_id and answers")
        qid, answers = obj.get("query_id"), obj.get("answers")
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise DataError(f"{path}:{lineno}: 'query_id' must be an integer, found {qid!r}")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{path}:{lineno}: 'answers' must be a list of strings (query_id {qid})")
        yield AnswerRecord(qid, answers, lineno)


@lru_cache(maxsize=1)
def _tokenizer():  # type: ignore[no-untyped-def]
    from spacy.lang.en import English

    return English().tokenizer


def normalize(texts: Iterable[str]) -> list[str]:
    """The official normalisation: spaCy tokens, stripped, lower-cased, joined by spaces."""
    tok = _tokenizer()
    return [" ".join(str(w).strip().lower() for w in doc) for doc in tok.pipe(texts, batch_size=1000)]


def _ngrams(words: list[str], n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def corpus_bleu(candidates: list[str], references: list[list[str]], n: int = MAX_BLEU_ORDER) -> list[float]:
    """coco-caption ``Bleu(n).compute_score`` (option ``closest``): BLEU-1..n of the corpus."""
    testlen_sum, reflen_sum = 0, 0
    guess, correct = [0] * n, [0] * n
    for cand, refs in zip(candidates, references, strict=True):
        maxcounts: dict[tuple[str, ...], int] = {}
        reflens = []
        for ref in refs:
            words = ref.split()
            reflens.append(len(words))
            for gram, c in _ngrams(words, n).items():
                maxcounts[gram] = max(maxcounts.get(gram, 0), c)
        words = cand.split()
        testlen = len(words)
        reflen_sum += min((abs(rl - testlen), rl) for rl in reflens)[1]
        testlen_sum += testlen
        for k in range(n):
            guess[k] += max(0, testlen - k)
        for gram, c in _ngrams(words, n).items():
            correct[len(gram) - 1] += min(maxcounts.get(gram, 0), c)
    bleus, bleu = [], 1.0
    for k in range(n):
        bleu *= float(correct[k] + _TINY) / (guess[k] + _SMALL)
        bleus.append(bleu ** (1.0 / (k + 1)))
    ratio = (testlen_sum + _TINY) / (reflen_sum + _SMALL)
    if ratio < 1:
        bleus = [b * math.exp(1 - 1 / ratio) for b in bleus]
    return bleus


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, refs: list[str], beta: float = ROUGE_BETA) -> float:
    """coco-caption ``Rouge.calc_score`` for one candidate."""
    token_c = candidate.split(" ")
    prec, rec = [], []
    for ref in refs:
        token_r = ref.split(" ")
        lcs = _lcs(token_r, token_c)
        prec.append(lcs / float(len(token_c)))
        rec.append(lcs / float(len(token_r)))
    p, r = max(prec), max(rec)
    if p != 0 and r != 0:
        return ((1 + beta**2) * p * r) / float(r + beta**2 * p)
    return 0.0


def _load(path: Path, role: str) -> dict[int, AnswerRecord]:
    out: dict[int, AnswerRecord] = {}
    for rec in read_answers(path):
        if rec.query_id in out:
            raise DataError(
                f"{path}:{rec.lineno}: query_id {rec.query_id} already on line {out[rec.query_id].lineno}; "
                f"give each query one line in the {role} file"
            )
        out[rec.query_id] = rec
    return out


def _ids(ids: Iterable[int]) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def evaluate_answers(references: str | Path, candidates: str | Path) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, F1, success and the success-weighted scores of ``candidates``."""
    ref_path, cand_path = Path(references), Path(candidates)
    refs, cands = _load(ref_path, "references"), _load(cand_path, "candidates")
    for rec in cands.values():
        if not rec.answers:
            raise DataError(
                f"{cand_path}:{rec.lineno}: query_id {rec.query_id} has an empty 'answers' list; a candidate "
                f'gives exactly one answer, or ["{NO_ANSWER}"] when it finds none'
            )
        if len(rec.answers) > 1:
            raise DataError(
                f"{cand_path}:{rec.lineno}: query_id {rec.query_id} has {len(rec.answers)} answers; "
                "a candidate gives exactly one"
            )
    empty = {q: r for q, r in refs.items() if not r.answers}
    for q, rec in empty.items():
        log.warning(
            "%s:%d: query_id %d has no reference answers; left out (as the official script does)",
            ref_path,
            rec.lineno,
            q,
        )
    refs = {q: r for q, r in refs.items() if r.answers}
    if not refs:
        raise DataError(f"{ref_path}: no reference has an answer list to evaluate against")
    missing, extra = set(refs) - set(cands), set(cands) - set(refs)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference query id(s) have no candidate ({_ids(missing)})")
        if extra:
            why = [q for q in extra if q in empty]
            parts.append(
                f"{len(extra)} candidate query id(s) are not in the references ({_ids(extra)})"
                + (f"; {_ids(why)} have an empty reference answer list" if why else "")
            )
        raise DataError(f"{cand_path} vs {ref_path}: query ids differ: " + "; ".join(parts))

    order = list(refs)  # reference file order, as the official script iterates
    ref_no = {q for q in order if NO_ANSWER in refs[q].answers}
    cand_no = {q for q in order if NO_ANSWER in cands[q].answers}
    answerable = [q for q in order if q not in ref_no]
    if not answerable:
        raise DataError(f"{ref_path}: every reference is '{NO_ANSWER}'; BLEU and ROUGE-L need one answer")

    # Answer / no-answer F1 exactly as ms_marco_eval.py computes it.
    tp = len(set(answerable) - cand_no)
    fn = len(answerable) - tp
    tn = len(cand_no & ref_no)
    fp = len(ref_no) - tn
    precision = tp / (tp + fp) if tp + fp > 0 else 1.0
    recall = tp / (tp + fn) if tp + fn > 0 else 1.0
    f1 = 2 * (precision * recall) / (precision + recall) if precision + recall > 0 else 0.0

    texts: list[str] = []
    for q in answerable:
        texts.extend(refs[q].answers)
        texts.append("" if q in cand_no else cands[q].answers[0])
    norm = iter(normalize(texts))
    ref_tokens, cand_tokens = [], []
    for q in answerable:
        ref_tokens.append([next(norm) for _ in refs[q].answers])
        cand_tokens.append(next(norm))

    bleus = corpus_bleu(cand_tokens, ref_tokens)
    rouge = float(np.mean([rouge_l(c, r) for c, r in zip(cand_tokens, ref_tokens, strict=True)]))
    success = float(np.mean([0.0 if (q in ref_no) != (q in cand_no) else 1.0 for q in order]))
    scores = {f"bleu_{i + 1}": b for i, b in enumerate(bleus)}
    scores["rouge_l"] = rouge
    scores["F1"] = f1
    scores["success"] = success
    for name in [f"bleu_{i + 1}" for i in range(MAX_BLEU_ORDER)] + ["rouge_l"]:
        scores[f"weighted_{name}"] = scores[name] * success
    scores["queries"] = float(len(order))
    scores["answerable_queries"] = float(len(answerable))
    return scores
