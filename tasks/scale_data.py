"""Scale generator: MS MARCO-shaped synthetic data at any size, for rehearsing the full run.

Writes the seven files of the sample (:mod:`tasks.sample`) under their official names and in the
official archive layout, at any number of passages, deterministically from a seed, and a
profile (``conf/profile/scale.yaml``) whose ``sources`` point at them with ``file:`` URLs, md5
and size. The real download, unpack and parsing code then runs on them (``python -m
tasks.config use scale && dvc repro``) with the sample's smoke systems and cross-encoder.

Counts scale like the real MS MARCO relative to its 8,841,823 passages (:func:`sizes`): 808,731
training queries, 502,939 of them judged with 532,761 qrels (some queries have two or three
positives), 6,980 dev queries with 7,437 qrels, QA v2.1 rows for every training query and for
101,093 dev queries (``qa_rows`` caps each file). The small evaluation sets keep a floor: at
least 50 dev queries and at least 50 TREC DL 2019 queries of which 43 have graded (0..3)
qrels, as the real 200/43. ``top1000.dev`` lists ``top1000_depth`` candidates per dev query
(at most the corpus size), in random order within each query, and so does the TREC DL 2019 list
``msmarco-passagetest2019-top1000.tsv.gz`` for every DL19 query (gzipped, as the official one).

The text is the sample's, at scale. Each entity (a lake, a city, a disease, a company, an
animal) has one passage per aspect (three); a query names the entity and the aspect, so BM25
finds the positive while the entity's other passages are hard negatives. Entity names are a
bijection of the entity number onto syllable strings (prefix-free, so never two entities with
one name, at any size), and passages are filled out to MS MARCO's length (about 56 words,
330 characters, gamma-distributed) with sentences drawn from a Zipf vocabulary of English
function words and generated words. Queries are 5-8 words, as MS MARCO's ~6.

Pids are dense (``0..N-1`` in file order, as the real collection); each pid maps to an
(entity, aspect) slot through a seeded affine permutation, so an entity's passages are
scattered. qids are sparse and unordered. QA rows are the training queries (same query_id
and text, ``is_selected`` on the qrels' positives, ``No Answer Present.`` for unjudged ones),
and the dev rows start with the dev queries, as in the real release.

Memory holds O(passages) small integers (pid offsets, query targets), never the text: every
file is streamed to a scratch directory beside the output, passage texts are read back by
offset where a later file quotes them, and the archives are streamed from the scratch files
(USTAR headers without time or owner, gzip ``mtime=0``) into atomic writes.

    python -m tasks.scale_data --passages 100000            # data/scale/source + conf/profile/scale.yaml
    python -m tasks.scale_data --passages 1000000 --qa-rows 50000 --top1000-depth 200
"""

from __future__ import annotations

import argparse
import array
import contextlib
import itertools
import json
import logging
import math
import os
import random
import shlex
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import yaml
from tqdm import tqdm

from tasks.io import file_digest, scratch_dir, write_bytes_atomic, write_text_atomic
from tasks.qa_format import COLUMNS, NO_WELL_FORMED
from tasks.sample import (
    ASPECTS,
    COUNTRIES,
    FILLER,
    PEOPLE,
    REGIONS,
    SOURCES,
    TYPE_PREFIX,
    TYPE_SUFFIX,
    tar_info,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "data" / "scale" / "source"
PROFILE = ROOT / "conf" / "profile" / "scale.yaml"
SAMPLE_PROFILE = ROOT / "conf" / "profile" / "sample.yaml"
DEFAULT_SEED = 13
MIN_PASSAGES = 1000
DL19_TOP1000 = "msmarco-passagetest2019-top1000.tsv.gz"  # the official TREC DL 2019 candidate list
assert DL19_TOP1000 in SOURCES  # registered (name, unpack) as the sample's

# The real MS MARCO passage-ranking and QA v2.1 counts the sizes scale from.
REAL_PASSAGES = 8_841_823
REAL = {
    "train_queries": 808_731,
    "train_judged": 502_939,
    "train_qrels": 532_761,
    "dev_queries": 6_980,
    "dev_qrels": 7_437,
    "dl19_queries": 200,
    "dl19_judged": 43,
    "qa_train": 808_731,
    "qa_dev": 101_093,
}
MIN_EVAL_QUERIES = 50  # dev and DL19 keep at least this many queries at any size
DL19_GRADE1 = 0.17  # TREC DL 2019: ~17% of the ~215 judgements per query are grade 1, ~56% grade 0
TOP1000_RECALL = 0.87  # the official BM25 top1000 holds a dev positive for about this share of queries

TYPES = sorted(ASPECTS)
ASPECT_NAMES = {t: sorted(ASPECTS[t]) for t in TYPES}  # an entity's passages, in slot order
PER_ENTITY = 3  # one passage per aspect; every type has three
assert all(len(ASPECTS[t]) == PER_ENTITY for t in TYPES)

# Names: consonant onset + vowel nucleus syllables (prefix-free: the runs delimit them) + a coda.
ONSETS = (
    "b c d f g h j k l m n p r s t v w z bl br ch cl cr dr fl fr gl gr kr pl pr sh sk sl sp st th tr"
).split()
NUCLEI = "a e i o u ai au ea ei ia io oa ou".split()
CODAS = ["", "", "", "n", "r", "l", "th", "x", "nd", "m", "ck"]  # no "s": stemmed away
SYLLABLES = [o + n for o in ONSETS for n in NUCLEI]  # 494: 244k two-syllable names, 120M three
COMMON = (
    "the of and to in a is for that was on it with as are by this be from or at which an have has "
    "its can also not their more most one other than when been were into all about many some may "
    "after only over such these them would there new first two time used during between each "
    "both year years area made water known part people including several while well often"
).split()
# Most queries get a tail, as MS MARCO's often do: ~6 words on average (the templates ~5).
QUERY_TAILS = [
    "definition", "meaning", "facts", "for kids", "in english", "wikipedia", "explained", "today",
    "per year", "in the us", "information", "near me", "history and facts", "summary", "examples",
]  # fmt: skip
LEXICON_SIZE = 30_000  # generated words (vowel-initial, so never an entity name)
ZIPF_SLOTS = 1 << 20  # lookup table of the Zipf draw (the rarest words get one slot)
LENGTH_SHAPE, LENGTH_MEAN = 4.0, 50.0  # gamma target words; with the two aspect sentences ~56 mean


@dataclass(frozen=True)
class Sizes:
    """How many of each record a run writes (:func:`sizes`)."""

    passages: int
    train_queries: int
    train_judged: int
    train_qrels: int
    dev_queries: int
    dev_qrels: int
    dl19_queries: int
    dl19_judged: int
    qa_train: int
    qa_dev: int
    top1000_depth: int


def sizes(passages: int, qa_rows: int | None = None, top1000_depth: int = 1000) -> Sizes:
    """The counts of a ``passages``-passage corpus, scaled from the real MS MARCO (module docstring)."""
    if passages < MIN_PASSAGES:
        raise ValueError(f"passages must be at least {MIN_PASSAGES}, got {passages}")
    if qa_rows is not None and qa_rows < 1:
        raise ValueError(f"qa_rows must be positive (or None for no cap), got {qa_rows}")
    if top1000_depth < 1:
        raise ValueError(f"top1000_depth must be positive, got {top1000_depth}")
    r = passages / REAL_PASSAGES

    def scaled(key: str) -> int:
        return max(1, round(REAL[key] * r))

    dev = max(MIN_EVAL_QUERIES, scaled("dev_queries"))
    cap = qa_rows if qa_rows is not None else math.inf
    return Sizes(
        passages=passages,
        train_queries=scaled("train_queries"),
        train_judged=scaled("train_judged"),
        train_qrels=scaled("train_qrels"),
        dev_queries=dev,
        dev_qrels=round(dev * REAL["dev_qrels"] / REAL["dev_queries"]),
        dl19_queries=max(MIN_EVAL_QUERIES, scaled("dl19_queries")),
        dl19_judged=max(REAL["dl19_judged"], scaled("dl19_judged")),
        qa_train=int(min(cap, scaled("qa_train"))),
        qa_dev=int(min(cap, max(dev, scaled("qa_dev")))),
        top1000_depth=min(top1000_depth, passages),
    )


# --------------------------------------------------------------------------- the corpus model
class Corpus:
    """pid <-> (entity, aspect) slots, entity names and types: arithmetic, no tables."""

    def __init__(self, n: int, seed: int) -> None:
        rng = random.Random(f"scale-corpus-{seed}")
        self.n = n
        self.entities = -(-n // PER_ENTITY)
        self._a, self._b = _coprime(rng, n), rng.randrange(n)
        self._a_inv = pow(self._a, -1, n)
        self._ea, self._eb = _coprime(rng, self.entities), rng.randrange(self.entities)

    def slot(self, pid: int) -> int:
        return (self._a * pid + self._b) % self.n

    def pid(self, slot: int) -> int:
        return ((slot - self._b) * self._a_inv) % self.n

    def entity_pids(self, entity: int) -> list[int]:
        """The entity's passages in aspect order (the last entity may have fewer than three)."""
        first = entity * PER_ENTITY
        return [self.pid(s) for s in range(first, min(first + PER_ENTITY, self.n))]

    def etype(self, entity: int) -> str:
        return TYPES[entity % len(TYPES)]

    def aspect(self, slot: int) -> str:
        return ASPECT_NAMES[self.etype(slot // PER_ENTITY)][slot % PER_ENTITY]

    def name(self, entity: int) -> str:
        v = (self._ea * entity + self._eb) % self.entities
        base = len(SYLLABLES)
        coda = CODAS[(v // 7) % len(CODAS)]
        n_syl = 2 if v < base**2 else 3
        if n_syl == 3:
            v -= base**2
        word = "".join(SYLLABLES[(v // base**i) % base] for i in range(n_syl)) + coda
        etype = self.etype(entity)
        return TYPE_PREFIX[etype] + word.capitalize() + TYPE_SUFFIX[etype]

    def random_of_type(self, etype_of: int, rng: random.Random) -> int:
        """A random pid of an entity of the same type as entity ``etype_of``."""
        k = len(TYPES)
        t = etype_of % k
        n_type = (self.entities - t + k - 1) // k
        while True:
            slot = (t + k * rng.randrange(n_type)) * PER_ENTITY + rng.randrange(PER_ENTITY)
            if slot < self.n:
                return self.pid(slot)


def _coprime(rng: random.Random, n: int) -> int:
    if n == 1:
        return 1
    while True:
        a = rng.randrange(max(1, n // 3), n)
        if math.gcd(a, n) == 1:
            return a


class Words:
    """Zipf-distributed filler sentences over English function words and generated words."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(f"scale-lexicon-{seed}")
        space = len(NUCLEI) * len(ONSETS) * len(NUCLEI) * len(CODAS)
        words = []
        for v in rng.sample(range(space), LEXICON_SIZE):
            v, n1 = divmod(v, len(NUCLEI))
            v, o = divmod(v, len(ONSETS))
            c, n2 = divmod(v, len(NUCLEI))
            words.append(NUCLEI[n1] + ONSETS[o] + NUCLEI[n2] + CODAS[c])
        self.words = list(dict.fromkeys(COMMON)) + [w for w in words if w not in COMMON]
        # rank r has weight 1/r; a lookup table draws a word with one random() (at least one slot each)
        total = sum(1.0 / r for r in range(1, len(self.words) + 1))
        self.table = [
            w for r, w in enumerate(self.words, 1) for _ in range(max(1, round(ZIPF_SLOTS / r / total)))
        ]
        self.filler = [(s, s.count(" ") + 1) for s in FILLER]

    def sentences(self, rng: random.Random, n_words: float) -> list[str]:
        """Sentences of 6-16 Zipf words (or one of the sample's filler sentences) adding up to at
        least ``n_words`` words."""
        rand, table, size = rng.random, self.table, len(self.table)
        out = []
        while n_words > 0:
            if rand() < 0.15:
                text, k = self.filler[int(rand() * len(self.filler))]
            else:
                k = 6 + int(rand() * 11)
                text = " ".join([table[int(rand() * size)] for _ in range(k)]).capitalize() + "."
            out.append(text)
            n_words -= k
        return out


def _fill(template: str, rng: random.Random, name: str) -> str:
    """The fields of :func:`tasks.sample._fill` with the same ranges, from one ``random()`` each
    (``randint`` costs ten times more; this is the hot loop of a million passages)."""
    rand = rng.random
    return template.format(
        n=name,
        num=40 + int(rand() * 8961),
        num2=3 + int(rand() * 93),
        year=1650 + int(rand() * 361),
        r=REGIONS[int(rand() * len(REGIONS))],
        c=COUNTRIES[int(rand() * len(COUNTRIES))],
        p=PEOPLE[int(rand() * len(PEOPLE))],
    )


def passage_text(corpus: Corpus, words: Words, pid: int, rng: random.Random) -> str:
    """The aspect's two sentences about the entity (the answer first), filled out with filler
    sentences to a gamma-distributed length (MS MARCO: ~56 words)."""
    slot = corpus.slot(pid)
    entity = slot // PER_ENTITY
    name = corpus.name(entity)
    first, second = (_fill(t, rng, name) for t in ASPECTS[corpus.etype(entity)][corpus.aspect(slot)][1])
    n_words = first.count(" ") + second.count(" ") + 2
    rest = words.sentences(rng, rng.gammavariate(LENGTH_SHAPE, LENGTH_MEAN / LENGTH_SHAPE) - n_words)
    rest.insert(int(rng.random() * (len(rest) + 1)), second)
    return " ".join([first, *rest])


def query_text(corpus: Corpus, pid: int, rng: random.Random) -> str:
    slot = corpus.slot(pid)
    entity = slot // PER_ENTITY
    templates = ASPECTS[corpus.etype(entity)][corpus.aspect(slot)][0]
    name = corpus.name(entity)
    text = rng.choice(templates).format(n=name.lower() if rng.random() < 0.7 else name)
    return f"{text} {rng.choice(QUERY_TAILS)}" if rng.random() < 0.7 else text


# --------------------------------------------------------------------------- generation
@dataclass
class _Queries:
    """One query set: qids, target pids and positives per query (0 = unjudged), as small ints."""

    qids: array.array[int]
    targets: array.array[int]
    positives: bytearray

    def qrels(self, corpus: Corpus, i: int) -> list[int]:
        """The judged pids of query ``i``: its target, then the entity's next aspects."""
        target = self.targets[i]
        slot = corpus.slot(target)
        first = slot - slot % PER_ENTITY
        others = [first + (slot - first + k) % PER_ENTITY for k in range(1, self.positives[i])]
        return [target] + [corpus.pid(s) for s in others]


def _query_sets(corpus: Corpus, sz: Sizes, rng: random.Random) -> dict[str, _Queries]:
    """Targets (distinct pids), qids (distinct, sparse) and positives of train, dev and dl19."""
    counts = {"train": sz.train_queries, "dev": sz.dev_queries, "dl19": sz.dl19_queries}
    n_q = sum(counts.values())
    n_ids = n_q + (sz.qa_dev - min(sz.qa_dev, sz.dev_queries))  # QA-only dev rows need qids too
    targets = rng.sample(range(corpus.n), n_q)
    qids = rng.sample(range(int(n_ids * 1.2) + 1000), n_ids)
    out: dict[str, _Queries] = {}
    start = 0
    for name, n in counts.items():
        out[name] = _Queries(
            array.array("q", qids[start : start + n]), array.array("q", targets[start : start + n]),
            bytearray(n),
        )  # fmt: skip
        start += n
    out["qa_dev_extra"] = _Queries(array.array("q", qids[n_q:]), array.array("q"), bytearray())

    def full(q: _Queries, i: int) -> bool:  # the entity has every aspect: room for 3 positives
        return corpus.slot(q.targets[i]) // PER_ENTITY < corpus.n // PER_ENTITY

    train = out["train"]
    judged = sorted(rng.sample(range(sz.train_queries), sz.train_judged))
    for i in judged:
        train.positives[i] = 1
    extra = sz.train_qrels - sz.train_judged  # rows beyond one per query: 2 positives, or 3
    threes = extra // 40  # a query with 3 positives adds 2 rows
    roomy = [i for i in judged if full(train, i)]
    multi = rng.sample(roomy, min(len(roomy), extra - threes))
    for k, i in enumerate(multi):
        train.positives[i] = 3 if k < threes else 2
    dev = out["dev"]
    for i in range(sz.dev_queries):
        dev.positives[i] = 1
    dev_roomy = [i for i in range(sz.dev_queries) if full(dev, i)]
    for i in rng.sample(dev_roomy, min(len(dev_roomy), sz.dev_qrels - sz.dev_queries)):
        dev.positives[i] = 2
    for i in range(sz.dl19_judged):
        out["dl19"].positives[i] = 1
    return out


def _collection(corpus: Corpus, words: Words, path: Path, seed: int) -> array.array[int]:
    """Write ``collection.tsv``; return the byte offset of every line (and the end)."""
    rng = random.Random(f"scale-passages-{seed}")
    offsets = array.array("Q", [0])
    pos = 0
    with open(path, "wb", buffering=1 << 20) as fh, _bar("collection", corpus.n, "psg") as bar:
        for pid in range(corpus.n):
            line = f"{pid}\t{passage_text(corpus, words, pid, rng)}\n".encode()
            fh.write(line)
            pos += len(line)
            offsets.append(pos)
            if pid % 4096 == 4095:
                bar.update(4096)
        bar.update(corpus.n % 4096)
    return offsets


class _Texts:
    """Passage texts read back from the collection scratch file by offset (page cache, not RSS)."""

    def __init__(self, path: Path, offsets: array.array[int]) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.offsets = offsets

    def line(self, pid: int) -> bytes:
        """``pid<TAB>text`` without the newline."""
        start = self.offsets[pid]
        return os.pread(self.fd, self.offsets[pid + 1] - start - 1, start)

    def text(self, pid: int) -> str:
        return self.line(pid).split(b"\t", 1)[1].decode()

    def close(self) -> None:
        os.close(self.fd)


def _write_queries(
    corpus: Corpus, q: _Queries, queries: Path, qrels: Path | None, rng: random.Random
) -> None:
    """``qid<TAB>query`` lines and (``qrels``) the binary qrels of the judged queries, in query order."""
    with (
        open(queries, "w", encoding="utf-8") as fq,
        open(qrels, "w", encoding="utf-8") if qrels else contextlib.nullcontext() as fr,
    ):
        for i, (qid, target) in enumerate(zip(q.qids, q.targets, strict=True)):
            fq.write(f"{qid}\t{query_text(corpus, target, rng)}\n")
            if fr is not None and q.positives[i]:
                fr.writelines(f"{qid}\t0\t{pid}\t1\n" for pid in q.qrels(corpus, i))


def _dl19_qrels(corpus: Corpus, q: _Queries, rng: random.Random) -> bytes:
    """Graded judgements of the judged DL19 queries: 3 the target, 2 its entity's other
    passages, 1 the same aspect of other entities of the type, 0 random; ~215 per query."""
    lines = []
    for i in sorted(range(len(q.qids)), key=lambda i: q.qids[i]):
        if not q.positives[i]:
            continue
        target = q.targets[i]
        entity = corpus.slot(target) // PER_ENTITY
        n = min(rng.randint(100, 330), corpus.n // 4)
        judged = {pid: 2 for pid in corpus.entity_pids(entity)}
        judged[target] = 3
        while len(judged) < 3 + DL19_GRADE1 * n:
            other = corpus.random_of_type(entity, rng)
            if corpus.slot(other) % PER_ENTITY == corpus.slot(target) % PER_ENTITY:
                judged.setdefault(other, 1)
        while len(judged) < n:
            judged.setdefault(rng.randrange(corpus.n), 0)
        lines += [f"{q.qids[i]} 0 {pid} {rel}\n" for pid, rel in sorted(judged.items())]
    return "".join(lines).encode()


def _top1000(
    corpus: Corpus, texts: _Texts, q: _Queries, queries: Path, out: Path, depth: int, rng: random.Random
) -> None:
    """Per query of ``q`` (dev, or DL19) ``depth`` distinct candidates: its entity's passages (the
    positive for about 87% of the queries), the same aspect of same-type entities, random others;
    shuffled (the official lists are in random order)."""
    with (
        open(queries, encoding="utf-8") as fq,
        open(out, "wb", buffering=1 << 20) as fh,
        _bar(out.name, len(q.qids), "q") as bar,
    ):
        for line, target in zip(fq, q.targets, strict=True):
            qid, query = line.rstrip("\n").split("\t", 1)
            entity = corpus.slot(target) // PER_ENTITY
            excluded = -1 if rng.random() < TOP1000_RECALL else target
            room = min(depth, corpus.n - (excluded >= 0))
            pool = dict.fromkeys(p for p in corpus.entity_pids(entity) if p != excluded)
            for _ in range(min(depth // 5, 200)):
                if len(pool) >= room:
                    break
                pool.setdefault(corpus.random_of_type(entity, rng))
            pool.pop(excluded, None)
            if room - len(pool) > corpus.n // 2:  # a large share of the corpus: draw from the rest
                rest = [p for p in range(corpus.n) if p not in pool and p != excluded]
                pool.update(dict.fromkeys(rng.sample(rest, room - len(pool))))
            while len(pool) < room:
                for p in rng.sample(range(corpus.n), room - len(pool)):
                    if p != excluded:
                        pool.setdefault(p)
            cands = list(pool)
            rng.shuffle(cands)
            head, q_b = f"{qid}\t".encode(), query.encode()
            for pid in cands:
                pid_b, text = texts.line(pid).split(b"\t", 1)
                fh.write(b"%s%s\t%s\t%s\n" % (head, pid_b, q_b, text))
            bar.update()


def _qa_row(
    corpus: Corpus, texts: _Texts, qid: int, query: str, target: int, positives: list[int], rng: random.Random
) -> dict[str, Any]:
    """A QA v2.1 row: ten passages (the entity's and others of its type), ``is_selected`` on the
    positives; no positives = ``No Answer Present.`` and the target left out."""
    slot = corpus.slot(target)
    entity = slot // PER_ENTITY
    cands = [p for p in corpus.entity_pids(entity) if positives or p != target]
    while len(cands) < 10:
        other = corpus.random_of_type(entity, rng)
        if other not in cands and other != target:
            cands.append(other)
    rng.shuffle(cands)
    passages = []
    for pid in cands:
        ps = corpus.slot(pid)
        e = ps // PER_ENTITY
        url = f"http://www.{corpus.etype(e)}-facts.example/{corpus.name(e).lower().replace(' ', '-')}"
        passages.append(
            {
                "is_selected": int(pid in positives),
                "passage_text": texts.text(pid),
                "url": f"{url}/{corpus.aspect(ps)}",
            }
        )
    well_formed: Any = NO_WELL_FORMED
    if positives:
        answer = texts.text(target).split(". ", 1)[0].rstrip(".") + "."
        answers = [answer, answer.split(",")[0].rstrip(".") + "."] if rng.random() < 0.05 else [answer]
        if rng.random() < 0.3:
            well_formed = [answer] if rng.random() < 0.9 else [answer, f"In short: {answer}"]
    else:
        answers = ["No Answer Present."]
    return {
        "answers": answers,
        "passages": passages,
        "query": query,
        "query_id": qid,
        "query_type": ASPECTS[corpus.etype(entity)][corpus.aspect(slot)][2],
        "wellFormedAnswers": well_formed,
    }


def _qa_rows(
    corpus: Corpus, texts: _Texts, q: _Queries, queries: Path, n: int, extra: _Queries, rng: random.Random
) -> Iterator[dict[str, Any]]:
    """The first ``n`` queries of ``q`` (texts re-read from ``queries``), then ``extra``'s qids
    on random targets (dev rows beyond dev.small)."""
    with open(queries, encoding="utf-8") as fq:
        for i, line in enumerate(itertools.islice(fq, n)):
            query = line.rstrip("\n").split("\t", 1)[1]
            pos = q.qrels(corpus, i) if q.positives[i] else []
            yield _qa_row(corpus, texts, q.qids[i], query, q.targets[i], pos, rng)
    for qid in extra.qids[: max(0, n - len(q.qids))]:
        target = rng.randrange(corpus.n)
        judged = rng.random() < REAL["train_judged"] / REAL["train_queries"]
        yield _qa_row(
            corpus, texts, qid, query_text(corpus, target, rng), target, [target] if judged else [], rng
        )


def _write_qa(rows: Iterator[dict[str, Any]], n: int, final: Path, tmp: Path, desc: str) -> None:
    """Column JSON as the official files (and the sample): one spill per column, then joined."""
    spills = {col: tmp / f"{final.name}.{col}" for col in COLUMNS}
    with contextlib.ExitStack() as stack:
        fhs = {
            c: stack.enter_context(open(p, "w", encoding="utf-8", newline="\n")) for c, p in spills.items()
        }
        for i, row in enumerate(tqdm(rows, total=n, desc=desc, unit="row", mininterval=2, disable=None)):
            sep = "," if i else ""
            for col in COLUMNS:
                value = json.dumps(row[col], ensure_ascii=False, separators=(",", ":"))
                value = value.replace("/", "\\/")  # pandas escapes '/' like the official files
                fhs[col].write(f'{sep}"{i}":{value}')
    with write_bytes_atomic(final, gz=True) as zf:
        for k, col in enumerate(COLUMNS):
            zf.write(("{" if k == 0 else "},").encode() + f'"{col}":{{'.encode())
            _copy(spills[col], zf)
        zf.write(b"}}")


def _copy(src: Path, dst: IO[bytes]) -> None:
    with open(src, "rb") as fh:
        while chunk := fh.read(1 << 20):
            dst.write(chunk)


def _tar(final: Path, members: dict[str, Path]) -> None:
    total = sum(p.stat().st_size for p in members.values())
    with (
        write_bytes_atomic(final, gz=True) as zf,
        tarfile.open(fileobj=zf, mode="w|", format=tarfile.USTAR_FORMAT) as tar,
        _bar(final.name, total, "B") as bar,
    ):
        for name in sorted(members):
            with open(members[name], "rb") as fh:
                tar.addfile(tar_info(name, members[name].stat().st_size), fh)
            bar.update(members[name].stat().st_size)


def _bar(desc: str, total: int, unit: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, mininterval=2, disable=None)


def generate(sz: Sizes, seed: int, out_dir: Path) -> None:
    """Write the seven files of ``sz`` into ``out_dir`` (module docstring)."""
    corpus, words = Corpus(sz.passages, seed), Words(seed)
    rng = random.Random(f"scale-queries-{seed}")
    sets = _query_sets(corpus, sz, rng)
    with scratch_dir(out_dir, "scale_data") as tmp:
        offsets = _collection(corpus, words, tmp / "collection.tsv", seed)
        names = {"train": "train", "dev": "dev.small"}
        for key, name in names.items():
            _write_queries(corpus, sets[key], tmp / f"queries.{name}.tsv", tmp / f"qrels.{name}.tsv", rng)
        _write_queries(corpus, sets["dl19"], tmp / "dl19.tsv", None, rng)
        with write_bytes_atomic(out_dir / "msmarco-test2019-queries.tsv.gz", gz=True) as zf:
            _copy(tmp / "dl19.tsv", zf)
        with write_bytes_atomic(out_dir / "2019qrels-pass.txt", gz=False) as fh:
            fh.write(_dl19_qrels(corpus, sets["dl19"], random.Random(f"scale-dl19-{seed}")))
        texts = _Texts(tmp / "collection.tsv", offsets)
        try:
            dev_q, top = tmp / "queries.dev.small.tsv", random.Random(f"scale-top1000-{seed}")
            _top1000(corpus, texts, sets["dev"], dev_q, tmp / "top1000.dev", sz.top1000_depth, top)
            _tar(out_dir / "top1000.dev.tar.gz", {"top1000.dev": tmp / "top1000.dev"})
            dl19_top = tmp / DL19_TOP1000.removesuffix(".gz")  # its own stream: the other files stay
            dl19_rng = random.Random(f"scale-top1000-dl19-{seed}")
            _top1000(corpus, texts, sets["dl19"], tmp / "dl19.tsv", dl19_top, sz.top1000_depth, dl19_rng)
            with write_bytes_atomic(out_dir / DL19_TOP1000, gz=True) as zf:
                _copy(dl19_top, zf)
            qa_rng = random.Random(f"scale-qa-{seed}")
            none = _Queries(array.array("q"), array.array("q"), bytearray())
            for split, key, n, extra in (
                ("train", "train", sz.qa_train, none),
                ("dev", "dev", sz.qa_dev, sets["qa_dev_extra"]),
            ):
                q_file = tmp / f"queries.{names[key]}.tsv"
                rows = _qa_rows(corpus, texts, sets[key], q_file, n, extra, qa_rng)
                _write_qa(rows, n, out_dir / f"{split}_v2.1.json.gz", tmp, f"qa {split}")
        finally:
            texts.close()
        members = ["collection.tsv", "queries.train.tsv", "qrels.train.tsv"]
        members += ["queries.dev.small.tsv", "qrels.dev.small.tsv"]
        _tar(out_dir / "collectionandqueries.tar.gz", {m: tmp / m for m in members})


# --------------------------------------------------------------------------- profile
def _url(path: Path) -> str:
    path = path.resolve()
    try:
        return f"file:{path.relative_to(ROOT).as_posix()}"
    except ValueError:
        return path.as_uri()


def sources_block(out_dir: Path) -> dict[str, dict[str, object]]:
    """The ``sources`` entries for the files in ``out_dir`` (names and unpack as the sample's)."""
    out: dict[str, dict[str, object]] = {}
    for fname, (name, unpack) in SOURCES.items():
        path = out_dir / fname
        entry: dict[str, object] = {"url": _url(path), "md5": file_digest(path), "size": path.stat().st_size}
        if unpack != "none":
            entry["unpack"] = unpack
        out[name] = entry
    return out


def command(sz: Sizes, seed: int, out_dir: Path, profile_out: Path, qa_rows: int | None, depth: int) -> str:
    """The CLI line that writes these files: goes into the profile's header."""
    args = ["python", "-m", "tasks.scale_data", "--passages", str(sz.passages), "--seed", str(seed)]
    if qa_rows is not None:
        args += ["--qa-rows", str(qa_rows)]
    if depth != 1000:
        args += ["--top1000-depth", str(depth)]
    for flag, path, default in (("--out", out_dir, OUT_DIR), ("--profile-out", profile_out, PROFILE)):
        if path.resolve() != default:
            args += [flag, _rel(path)]
    return shlex.join(args)


def _rel(path: Path) -> str:
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


# Where the scale profile departs from the sample's: batch and shard sizes of the msmarco profile's
# order (the sample's small ones are per-batch overhead at 1M passages), and a smoke vocabulary that
# holds the generated lexicon, so words are not spelt out letter by letter. Measured on 5k scale
# passages, 2 cores: 64 instead of 102 tokens per passage, and the smoke cross-encoder at 389
# instead of 160 pairs per CPU-second (batch 256 vs 32).
SCALE_OVERRIDES: dict[str, dict[str, object]] = {
    "smoke_models": {"vocab_size": 40_000},
    "encode": {"batch_size": 256, "shard_size": 20_000},
    "cross_encoder": {"batch_size": 256, "shard_size": 50_000},
}


def profile_text(sz: Sizes, sources: dict[str, dict[str, object]], cmd: str) -> str:
    """The scale profile: these sources, :data:`SCALE_OVERRIDES`, and every other section of the
    sample profile (smoke systems, smoke cross-encoder, denoise margin) as
    ``conf/profile/sample.yaml`` has them."""
    sample = yaml.safe_load(SAMPLE_PROFILE.read_text(encoding="utf-8"))
    sample.pop("sources")
    for section, values in SCALE_OVERRIDES.items():
        sample[section] = {**sample.get(section, {}), **values}
    header = (
        f"# The scale profile: MS MARCO-shaped synthetic data, {sz.passages:,} passages, "
        f"{sz.train_queries:,} train queries\n"
        f"# ({sz.train_judged:,} judged, {sz.train_qrels:,} qrels), {sz.dev_queries:,} dev, "
        f"{sz.dl19_queries:,} DL19 ({sz.dl19_judged} judged), QA {sz.qa_train:,}/{sz.qa_dev:,} rows, "
        f"top1000 depth {sz.top1000_depth:,}.\n"
        f"# Written by: {cmd}\n"
        "# (tasks/scale_data.py) with the files it points at; run that command again to recreate them.\n"
        "# Every other section is copied from conf/profile/sample.yaml by the generator, with the\n"
        "# batch/shard sizes and smoke vocabulary of tasks.scale_data.SCALE_OVERRIDES.\n"
    )
    return header + yaml.safe_dump({"sources": sources, **sample}, sort_keys=False, width=100)


def run(
    passages: int,
    seed: int = DEFAULT_SEED,
    out_dir: Path = OUT_DIR,
    profile_out: Path | None = PROFILE,
    qa_rows: int | None = None,
    top1000_depth: int = 1000,
) -> dict[str, dict[str, object]]:
    """Generate the files into ``out_dir``, write the profile to ``profile_out`` (None = none);
    return its ``sources`` block."""
    sz = sizes(passages, qa_rows, top1000_depth)
    out_dir = Path(out_dir)
    log.info("scale data: %s", ", ".join(f"{k} {v:,}" for k, v in asdict(sz).items()))
    generate(sz, seed, out_dir)
    sources = sources_block(out_dir)
    if profile_out is not None:
        cmd = command(sz, seed, out_dir, Path(profile_out), qa_rows, top1000_depth)
        with write_text_atomic(profile_out, gz=False) as fh:
            fh.write(profile_text(sz, sources, cmd))
        log.info("%s: profile scale (%s)", profile_out, cmd)
    for name, src in sources.items():
        log.info("%s: %s, %s bytes, md5 %s", name, src["url"], f"{src['size']:,}", src["md5"])
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.scale_data",
        description="Write MS MARCO-shaped synthetic data of any size (the official file names and "
        "archive layout, deterministic from --seed) and the profile that points at it.",
        epilog="example: python -m tasks.scale_data --passages 100000 && python -m tasks.config use scale",
    )
    parser.add_argument("--passages", type=int, required=True, help=f"corpus size (at least {MIN_PASSAGES})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="output directory (default: data/scale/source)"
    )
    parser.add_argument(
        "--profile-out",
        type=Path,
        default=PROFILE,
        help="profile to write (default: conf/profile/scale.yaml)",
    )
    parser.add_argument("--qa-rows", type=int, default=None, help="cap on the rows of each QA v2.1 file")
    parser.add_argument(
        "--top1000-depth",
        type=int,
        default=1000,
        help="candidates per dev and per DL19 query in the top-1000 lists (at most the corpus size)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args.passages, args.seed, args.out, args.profile_out, args.qa_rows, args.top1000_depth)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
