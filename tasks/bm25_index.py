"""Stage bm25_index: index the passage collection for BM25.

Backend ``embedded`` (default) writes a tantivy index into ``paths.bm25_index``; backend
``elasticsearch`` loads the passages into the cluster named by ``ELASTICSEARCH_URL`` and the
output directory holds only the manifest. Either way the directory also holds ``pids.npy``
(the sorted pids, so mining can check qrels against the collection) and ``manifest.json``
(backend, analyzer, k1, b, passage count). The directory is staged and renamed into place.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tasks.bm25_backends import PIDS, TANTIVY_DIR, build_embedded, write_manifest
from tasks.cli import run_stage, stage_parser
from tasks.config import Bm25
from tasks.io import DataError, atomic_dir
from tasks.records import read_collection

log = logging.getLogger(__name__)


def run(collection: Path, out_dir: Path, params: Bm25) -> dict:
    """Index ``collection`` (``pid \\t text``) into ``out_dir``; returns the manifest stats.

    Raises :class:`DataError` for a non-integer or duplicate pid (naming the line) and for an
    empty collection.
    """
    collection, out_dir = Path(collection), Path(out_dir)
    start = time.perf_counter()
    with atomic_dir(out_dir) as stage, tqdm(desc="bm25 index", unit="psg", mininterval=2) as bar:
        passages = read_collection(collection)
        if params.backend == "embedded":
            (stage / TANTIVY_DIR).mkdir()
            stats = build_embedded(stage / TANTIVY_DIR, passages, params, progress=bar)
        else:
            from tasks.bm25_elastic import build_elastic

            stats = build_elastic(passages, params, progress=bar)
        pids = np.asarray(stats.pop("pids"), dtype=np.int64)
        if len(pids) == 0:
            raise DataError(f"{collection}: no passages (empty collection); nothing to index")
        np.save(stage / PIDS, np.sort(pids), allow_pickle=False)
        stats.pop("count", None)
        write_manifest(stage, params.backend, params, len(pids), stats)
    secs = time.perf_counter() - start
    log.info(
        "bm25 index: %d passages in %.1f s (%.0f passages/s) -> %s",
        len(pids),
        secs,
        len(pids) / secs,
        out_dir,
    )
    return {"passages": int(len(pids)), "seconds": secs, **stats}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "tasks.bm25_index",
        "Build the BM25 index of the passage collection (inputs.collection -> paths.bm25_index) "
        "with the backend, analyzer and k1/b of the bm25 section of params.yaml.",
        "python -m tasks.bm25_index --params params.yaml\n"
        "elasticsearch: ELASTICSEARCH_URL=http://localhost:9200 python -m tasks.bm25_index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args = parser.parse_args(argv)
    return run_stage(
        args.params, lambda cfg: run(cfg.input_path("collection"), cfg.path("bm25_index"), cfg.bm25)
    )


if __name__ == "__main__":
    sys.exit(main())
