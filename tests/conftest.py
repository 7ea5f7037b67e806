"""Session-wide fixtures: offline model hubs, one Prefect test server, the bundled sample."""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tasks.accel import KERNEL_ENV

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample"

# Nothing in the suite may reach a model hub: models are built locally by the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# The stages pin torch's CPU kernels to AVX2 (cpu_kernels: avx2, tasks.accel.pin_cpu_kernels)
# before a model runs; tests that run models in this process must start with the same kernels,
# since ATen and oneDNN choose theirs once, at their first use.
for _var, _value in KERNEL_ENV["avx2"].items():  # ATen, oneDNN, MKL (strict CNR): read at first use
    os.environ.setdefault(_var, _value)


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API server for the whole session (it takes ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def sample_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled sample unpacked once, keyed like ``inputs`` in params.yaml."""
    out = tmp_path_factory.mktemp("sample-raw")
    for archive in ("collectionandqueries.tar.gz", "top1000.dev.tar.gz"):
        with tarfile.open(SAMPLE / archive) as tar:
            tar.extractall(out, filter="data")
    with (
        gzip.open(SAMPLE / "msmarco-test2019-queries.tsv.gz", "rb") as src,
        open(out / "msmarco-test2019-queries.tsv", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    return {
        "collection": out / "collection.tsv",
        "queries_train": out / "queries.train.tsv",
        "qrels_train": out / "qrels.train.tsv",
        "queries_dev": out / "queries.dev.small.tsv",
        "qrels_dev": out / "qrels.dev.small.tsv",
        "queries_dl19": out / "msmarco-test2019-queries.tsv",
        "qrels_dl19": SAMPLE / "2019qrels-pass.txt",
        "qa_train": SAMPLE / "train_v2.1.json.gz",
        "qa_dev": SAMPLE / "dev_v2.1.json.gz",
        "top1000_dev": out / "top1000.dev",
    }
