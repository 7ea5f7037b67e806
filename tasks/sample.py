"""Deterministic generator of the bundled MS MARCO-format sample (``sample/``).

The sample mirrors the official packaging so the ``sample`` profile runs the very same
download, unpack and parsing code as the full profile:

- ``collectionandqueries.tar.gz``: ``collection.tsv``, ``queries.train.tsv``,
  ``qrels.train.tsv``, ``queries.dev.small.tsv``, ``qrels.dev.small.tsv``
- ``msmarco-test2019-queries.tsv.gz`` + ``2019qrels-pass.txt`` (graded 0..3, TREC DL style)
- ``train_v2.1.json.gz`` / ``dev_v2.1.json.gz``: QA v2.1 column-oriented JSON, with
  ``No Answer Present.`` answers and ``wellFormedAnswers`` equal to the string ``"[]"``.
- ``top1000.dev.tar.gz``: ``top1000.dev``, re-ranking candidates for the dev queries
  (``qid<TAB>pid<TAB>query<TAB>passage``, 50 per query, unscored, in no particular order).
- ``msmarco-passagetest2019-top1000.tsv.gz``: the same format for every TREC DL 2019 query
  (100 per query, random order), gzipped as the official TREC DL 2019 candidate list.

The text is synthetic but English-like: each entity (a lake, a city, a disease...) has
three passages on different aspects, and a query names the entity and the aspect, so BM25
finds the positive for most queries while the entity's other passages are hard negatives.

    python -m tasks.sample            # (re)write sample/ and print md5/size per file
    python -m tasks.sample --check    # verify sample/ is what the generator writes
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import random
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tasks.io import write_bytes_atomic

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "sample"

# type -> (aspects, region words). Each aspect: (query templates, passage sentences, qa type).
REGIONS = ["northern", "southern", "eastern", "western", "central", "coastal", "highland", "lowland"]
COUNTRIES = ["Norway", "Chile", "Kenya", "Canada", "Peru", "Japan", "Italy", "Egypt", "Brazil", "India"]

ASPECTS: dict[str, dict[str, tuple[list[str], list[str], str]]] = {
    "lake": {
        "depth": (
            ["how deep is {n}", "{n} depth", "what is the maximum depth of {n}"],
            [
                "The maximum depth of {n} is {num} meters, which makes it one of the deepest lakes"
                " in the {r} region.",
                "Surveys measured the average depth of {n} at about {num2} meters.",
            ],
            "NUMERIC",
        ),
        "fish": (
            ["what fish live in {n}", "{n} fishing species", "which fish can you catch in {n}"],
            [
                "Anglers visit {n} to catch trout, perch and pike, the most common fish species"
                " in its waters.",
                "Fishing in {n} is regulated and a license is required for every angler.",
            ],
            "ENTITY",
        ),
        "location": (
            ["where is {n} located", "{n} location", "in which country is {n}"],
            [
                "{n} is located in the {r} part of {c}, close to the border of the national park.",
                "The lake lies at an elevation of {num} meters above sea level.",
            ],
            "LOCATION",
        ),
    },
    "city": {
        "population": (
            ["what is the population of {n}", "{n} population", "how many people live in {n}"],
            [
                "{n} has a population of {num} inhabitants according to the latest census.",
                "The population of {n} grew steadily during the last decade as families moved to the city.",
            ],
            "NUMERIC",
        ),
        "founded": (
            ["when was {n} founded", "{n} history founding", "who founded the city of {n}"],
            [
                "{n} was founded in the year {year} by merchants who traded salt along the river.",
                "The old town of {n} still shows the walls built shortly after the city was founded.",
            ],
            "NUMERIC",
        ),
        "climate": (
            ["what is the climate like in {n}", "{n} weather", "{n} average temperature"],
            [
                "{n} has a mild climate with warm summers and an average temperature of {num2} degrees.",
                "Rain falls mostly in autumn, and the weather in {n} is dry during the summer months.",
            ],
            "DESCRIPTION",
        ),
    },
    "disease": {
        "symptoms": (
            ["what are the symptoms of {n}", "{n} symptoms", "signs of {n}"],
            [
                "Common symptoms of {n} include fever, fatigue, headache and a persistent cough.",
                "Patients with {n} often report symptoms that begin a few days after infection.",
            ],
            "DESCRIPTION",
        ),
        "treatment": (
            ["how is {n} treated", "{n} treatment", "what medication treats {n}"],
            [
                "Treatment of {n} usually involves rest, fluids and an antiviral medication"
                " prescribed by a doctor.",
                "Doctors treat severe cases of {n} in hospital with oxygen therapy.",
            ],
            "DESCRIPTION",
        ),
        "cause": (
            ["what causes {n}", "{n} cause", "is {n} contagious"],
            [
                "{n} is caused by a virus that spreads through droplets when an infected person coughs.",
                "The cause of {n} was identified in {year} by researchers studying contagious infections.",
            ],
            "DESCRIPTION",
        ),
    },
    "company": {
        "founder": (
            ["who founded {n}", "{n} founder", "who is the founder of {n}"],
            [
                "{n} was founded by {p}, an engineer who started the company in a small garage in {year}.",
                "The founder of {n}, {p}, remained chief executive for many years.",
            ],
            "PERSON",
        ),
        "headquarters": (
            ["where is {n} headquartered", "{n} headquarters", "{n} head office address"],
            [
                "{n} is headquartered in {c}, where its head office employs {num} people.",
                "The headquarters of {n} moved to a new office building near the harbor.",
            ],
            "LOCATION",
        ),
        "revenue": (
            ["how much revenue does {n} make", "{n} annual revenue", "{n} sales per year"],
            [
                "{n} reported annual revenue of {num} million dollars, with most sales coming from exports.",
                "Revenue at {n} grew by {num2} percent compared with the previous year.",
            ],
            "NUMERIC",
        ),
    },
    "animal": {
        "diet": (
            ["what does the {n} eat", "{n} diet", "is the {n} a carnivore"],
            [
                "The {n} eats insects, seeds and small fruits, and its diet changes with the seasons.",
                "In captivity the {n} is fed a diet of vegetables and protein pellets.",
            ],
            "DESCRIPTION",
        ),
        "habitat": (
            ["where does the {n} live", "{n} habitat", "what is the natural habitat of the {n}"],
            [
                "The {n} lives in the {r} forests of {c}, where its natural habitat is dense and humid.",
                "Loss of habitat has reduced the range of the {n} in recent decades.",
            ],
            "LOCATION",
        ),
        "lifespan": (
            ["how long does a {n} live", "{n} lifespan", "average life expectancy of a {n}"],
            [
                "The average lifespan of the {n} is {num2} years in the wild and longer in captivity.",
                "A healthy {n} can live up to {num2} years when predators are absent.",
            ],
            "NUMERIC",
        ),
    },
}

SYLLABLES = [
    "ka",
    "lo",
    "ve",
    "ri",
    "mon",
    "tar",
    "sel",
    "du",
    "vin",
    "bra",
    "nor",
    "che",
    "ul",
    "mi",
    "gan",
    "pes",
    "tor",
    "ala",
    "ken",
    "zu",
    "fel",
    "rho",
    "dra",
    "quin",
    "os",
    "ber",
    "lia",
    "mar",
]
PEOPLE = [
    "Anna Berg",
    "Luis Ortega",
    "Mei Tanaka",
    "Omar Haddad",
    "Sara Nilsen",
    "Ivan Petrov",
    "Grace Mensah",
    "Tom Keller",
    "Priya Rao",
    "Elena Rossi",
]
FILLER = [
    "Visitors often describe it as a remarkable place to learn about the region.",
    "Local guides offer tours throughout the year.",
    "Several studies have been published about it in scientific journals.",
    "Historical records mention it in documents from the nineteenth century.",
    "It appears frequently in travel guides and school textbooks.",
]
TYPE_PREFIX = {"lake": "Lake ", "city": "", "disease": "", "company": "", "animal": ""}
TYPE_SUFFIX = {"lake": "", "city": "", "disease": " fever", "company": " Industries", "animal": " lemur"}


DL19_DEPTH = 100  # candidates per DL19 query: as many as the cross-encoder re-ranked of BM25's before


@dataclass(frozen=True)
class Doc:
    pid: int
    entity: int
    etype: str
    aspect: str
    name: str
    text: str
    answer: str


def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if word not in used:
            used.add(word)
            return word


def _fill(template: str, rng: random.Random, name: str) -> str:
    return template.format(
        n=name,
        num=rng.randint(40, 9000),
        num2=rng.randint(3, 95),
        year=rng.randint(1650, 2010),
        r=rng.choice(REGIONS),
        c=rng.choice(COUNTRIES),
        p=rng.choice(PEOPLE),
    )


def generate_docs(n_entities: int, seed: int) -> list[Doc]:
    rng = random.Random(seed)
    used: set[str] = set()
    docs: list[Doc] = []
    types = sorted(ASPECTS)
    for ent in range(n_entities):
        etype = types[ent % len(types)]
        name = TYPE_PREFIX[etype] + _name(rng, used) + TYPE_SUFFIX[etype]
        for aspect in sorted(ASPECTS[etype]):
            _, sentences, _ = ASPECTS[etype][aspect]
            filled = [_fill(s, rng, name) for s in sentences]
            body = filled + rng.sample(FILLER, 2)
            docs.append(Doc(0, ent, etype, aspect, name, " ".join(body), filled[0]))
    rng.shuffle(docs)
    # pids are sparse and unordered in MS MARCO; keep them integers with gaps.
    pids = rng.sample(range(10, 10 * len(docs) + 10), len(docs))
    return [
        Doc(pid, d.entity, d.etype, d.aspect, d.name, d.text, d.answer)
        for pid, d in zip(pids, docs, strict=True)
    ]


def query_for(doc: Doc, rng: random.Random) -> str:
    templates, _, _ = ASPECTS[doc.etype][doc.aspect]
    return rng.choice(templates).format(n=doc.name.lower() if rng.random() < 0.7 else doc.name)


def _tsv(rows: list[tuple[int, str]]) -> bytes:
    return "".join(f"{a}\t{b}\n" for a, b in rows).encode("utf-8")


def _qrels(rows: list[tuple[int, int, int]], sep: str) -> bytes:
    return "".join(f"{q}{sep}0{sep}{p}{sep}{r}\n" for q, p, r in rows).encode("utf-8")


def _gzip(data: bytes) -> bytes:
    import gzip

    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as zf:
        zf.write(data)
    return buf.getvalue()


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A tar member header without owner, time or mode variation: the same bytes every run."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_gz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            tar.addfile(tar_info(name, len(members[name])), io.BytesIO(members[name]))
    return _gzip(raw.getvalue())


def _qa_json(rows: list[dict[str, object]]) -> bytes:
    """Column-oriented v2.1 JSON as the official files have it (pandas ``to_json`` layout)."""
    columns = ["answers", "passages", "query", "query_id", "query_type", "wellFormedAnswers"]
    table = {col: {str(i): row[col] for i, row in enumerate(rows)} for col in columns}
    text = json.dumps(table, ensure_ascii=False, separators=(",", ":"))
    return text.replace("/", "\\/").encode("utf-8")  # pandas escapes '/' like the official files


def _qa_rows(
    docs: list[Doc], by_entity: dict[int, list[Doc]], n: int, qid0: int, rng: random.Random
) -> list[dict[str, object]]:
    rows = []
    by_type: dict[str, list[Doc]] = {}
    for d in docs:
        by_type.setdefault(d.etype, []).append(d)
    for i, doc in enumerate(rng.sample(docs, n)):
        others = [d for d in by_type[doc.etype] if d.entity != doc.entity]
        cands = by_entity[doc.entity] + rng.sample(others, 10 - len(by_entity[doc.entity]))
        rng.shuffle(cands)
        no_answer = rng.random() < 0.3
        if no_answer:  # the judge found no answer: the positive is not among the passages
            cands = [c if c.pid != doc.pid else rng.choice(others) for c in cands]
        passages = [
            {
                "is_selected": int(c.pid == doc.pid and not no_answer),
                "passage_text": c.text,
                "url": f"http://www.{c.etype}-facts.example/{c.name.lower().replace(' ', '-')}/{c.aspect}",
            }
            for c in cands
        ]
        well_formed: object = "[]"
        if not no_answer and rng.random() < 0.25:
            well_formed = [doc.answer] if rng.random() < 0.9 else [doc.answer, f"In short: {doc.answer}"]
        answers = ["No Answer Present."] if no_answer else [doc.answer]
        if not no_answer and rng.random() < 0.05:
            answers = [doc.answer, doc.answer.split(",")[0] + "."]
        rows.append(
            {
                "answers": answers,
                "passages": passages,
                "query": query_for(doc, rng),
                "query_id": qid0 + i,
                "query_type": ASPECTS[doc.etype][doc.aspect][2],
                "wellFormedAnswers": well_formed,
            }
        )
    return rows


def _top1000(
    queries: list[tuple[int, str]],
    targets: list[Doc],
    docs: list[Doc],
    by_entity: dict[int, list[Doc]],
    rng: random.Random,
    depth: int = 50,
) -> bytes:
    """``top1000.dev``-style candidates: per query the passages of its entity (the positive
    among them), 20 of its aspect and random others up to ``depth``, shuffled."""
    by_aspect: dict[str, list[Doc]] = {}
    for d in docs:
        by_aspect.setdefault(d.aspect, []).append(d)
    lines = []
    for (qid, query), d in zip(queries, targets, strict=True):
        pool = {o.pid: o for o in by_entity[d.entity]}
        for o in rng.sample(by_aspect[d.aspect], min(20, len(by_aspect[d.aspect]))):
            pool.setdefault(o.pid, o)
        while len(pool) < depth:
            o = rng.choice(docs)
            pool.setdefault(o.pid, o)
        cands = sorted(pool.values(), key=lambda o: o.pid)[:depth]
        rng.shuffle(cands)
        lines += [f"{qid}\t{o.pid}\t{query}\t{o.text}\n" for o in cands]
    return "".join(lines).encode("utf-8")


def build(seed: int = 20261122, n_entities: int = 1000) -> dict[str, bytes]:
    """Return ``{file name: bytes}`` of the whole sample. Pure function of its arguments."""
    rng = random.Random(seed + 1)
    docs = generate_docs(n_entities, seed)
    by_entity: dict[int, list[Doc]] = {}
    for d in docs:
        by_entity.setdefault(d.entity, []).append(d)
    collection = sorted((d.pid, d.text) for d in docs)

    order = rng.sample(docs, len(docs))
    train_docs, dev_docs, dl_docs = order[:1100], order[1100:1300], order[1300:1350]
    qids = rng.sample(range(1000, 900000), len(train_docs) + len(dev_docs) + len(dl_docs))
    train_q = [(qids[i], query_for(d, rng)) for i, d in enumerate(train_docs)]
    dev_q = [(qids[1100 + i], query_for(d, rng)) for i, d in enumerate(dev_docs)]
    dl_q = [(qids[1300 + i], query_for(d, rng)) for i, d in enumerate(dl_docs)]

    # Train: 1,000 of 1,100 queries have qrels (MS MARCO has train queries without qrels);
    # a few have two positives (another passage of the same entity).
    qrels_train: list[tuple[int, int, int]] = []
    for (qid, _), d in list(zip(train_q, train_docs, strict=True))[:1000]:
        qrels_train.append((qid, d.pid, 1))
        if rng.random() < 0.05:
            other = next(o for o in by_entity[d.entity] if o.pid != d.pid)
            qrels_train.append((qid, other.pid, 1))
    qrels_dev = [(qid, d.pid, 1) for (qid, _), d in zip(dev_q, dev_docs, strict=True)]
    # DL19-style: 43 of 50 queries judged, graded: 3 answer, 2 same entity, 1 same aspect, 0 other.
    qrels_dl: list[tuple[int, int, int]] = []
    for (qid, _), d in list(zip(dl_q, dl_docs, strict=True))[:43]:
        judged = {d.pid: 3}
        for o in by_entity[d.entity]:
            judged.setdefault(o.pid, 2)
        same_aspect = [o for o in docs if o.aspect == d.aspect and o.entity != d.entity]
        for o in rng.sample(same_aspect, 3):
            judged[o.pid] = 1
        for o in rng.sample(docs, 6):
            judged.setdefault(o.pid, 0)
        qrels_dl.extend((qid, pid, rel) for pid, rel in sorted(judged.items()))

    files = {
        "collectionandqueries.tar.gz": _tar_gz(
            {
                "collection.tsv": _tsv(collection),
                "queries.train.tsv": _tsv(train_q),
                "qrels.train.tsv": _qrels(qrels_train, "\t"),
                "queries.dev.small.tsv": _tsv(dev_q),
                "qrels.dev.small.tsv": _qrels(qrels_dev, "\t"),
            }
        ),
        "msmarco-test2019-queries.tsv.gz": _gzip(_tsv(dl_q)),
        "2019qrels-pass.txt": _qrels(qrels_dl, " "),
        "train_v2.1.json.gz": _gzip(_qa_json(_qa_rows(docs, by_entity, 400, 2000000, rng))),
        "dev_v2.1.json.gz": _gzip(_qa_json(_qa_rows(docs, by_entity, 120, 3000000, rng))),
        # its own random stream: adding it left every other file as it was
        "top1000.dev.tar.gz": _tar_gz(
            {"top1000.dev": _top1000(dev_q, dev_docs, docs, by_entity, random.Random(seed + 2))}
        ),
        # the DL19 list: a random stream of its own too, so no other file changed when it came
        "msmarco-passagetest2019-top1000.tsv.gz": _gzip(
            _top1000(dl_q, dl_docs, docs, by_entity, random.Random(seed + 3), depth=DL19_DEPTH)
        ),
    }
    return files


# file name -> (source name, unpack) in conf/profile/sample.yaml
SOURCES = {
    "collectionandqueries.tar.gz": ("collectionandqueries", "untar"),
    "msmarco-test2019-queries.tsv.gz": ("dl19_queries", "gunzip"),
    "2019qrels-pass.txt": ("dl19_qrels", "none"),
    "train_v2.1.json.gz": ("qa_train", "none"),
    "dev_v2.1.json.gz": ("qa_dev", "none"),
    "top1000.dev.tar.gz": ("top1000_dev", "untar"),
    "msmarco-passagetest2019-top1000.tsv.gz": ("dl19_top1000", "gunzip"),
}


def sources_block(files: dict[str, bytes]) -> dict[str, dict[str, object]]:
    """The ``sources`` entries of the sample profile for these files."""
    out: dict[str, dict[str, object]] = {}
    for fname, (name, unpack) in SOURCES.items():
        data = files[fname]
        entry: dict[str, object] = {
            "url": f"file:sample/{fname}",
            "md5": hashlib.md5(data).hexdigest(),
            "size": len(data),
        }
        if unpack != "none":
            entry["unpack"] = unpack
        out[name] = entry
    return out


def run(out_dir: Path = SAMPLE_DIR, seed: int = 20261122) -> dict[str, dict[str, object]]:
    files = build(seed)
    for fname, data in files.items():
        with write_bytes_atomic(out_dir / fname, gz=False) as fh:
            fh.write(data)
    return sources_block(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.sample",
        description="Write the bundled MS MARCO-format sample (deterministic) and print the "
        "md5/size of each file for conf/profile/sample.yaml.",
        epilog="example: python -m tasks.sample --check",
    )
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--check", action="store_true", help="verify files on disk, write nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        files = build()
        bad = [
            f
            for f, data in files.items()
            if not (args.out / f).exists() or (args.out / f).read_bytes() != data
        ]
        if bad:
            sys.stderr.write(f"error: {args.out}: differs from the generator: {', '.join(bad)}\n")
            return 1
        sys.stderr.write(f"{args.out}: {len(files)} files match the generator\n")
        return 0
    import yaml

    block = run(args.out)
    sys.stdout.write(yaml.safe_dump({"sources": block}, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
