"""Shard work gives byte-identical results in-process, in local processes and on Dask.

The cluster is real: ``dask scheduler`` and ``dask worker`` subprocesses on 127.0.0.1, shared by
the session (tests/_scaleout_helpers.py), so every call and result crosses a process boundary
pickled, as on a remote cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tasks.config import ConfigError, Orchestration
from tasks.scaleout import InlineExecutor, describe, executor, map_ordered
from tests._scaleout_helpers import ROOT, DaskProcesses, dask_cluster, digest, failing_shard, shard_fn

SHARDS = [(i, 50 + 7 * i, 13) for i in range(6)]


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> DaskProcesses:
    return dask_cluster(request)


@pytest.fixture(scope="module")
def reference() -> str:
    return digest([shard_fn(*args) for args in SHARDS])


def test_inline_is_the_plain_loop(reference):
    with executor(Orchestration(local_workers=1)) as ex:
        assert isinstance(ex, InlineExecutor)
        assert digest(map_ordered(ex, shard_fn, SHARDS)) == reference
    assert digest(map_ordered(None, shard_fn, SHARDS)) == reference


def test_local_processes_byte_identical(reference):
    orch = Orchestration(local_workers=2)
    assert describe(orch) == "2 local processes"
    with executor(orch) as ex:
        assert digest(map_ordered(ex, shard_fn, SHARDS)) == reference


def test_dask_cluster_byte_identical_and_ordered(cluster, reference):
    orch = Orchestration(dask_address=cluster.address)
    assert describe(orch).startswith("dask cluster at tcp://127.0.0.1:")
    with executor(orch) as ex:
        # big shards first so they finish last: results must still come back in submission order
        out = map_ordered(ex, shard_fn, SHARDS[::-1])
    assert digest(out[::-1]) == reference


def test_dask_shard_error_reaches_caller(cluster):
    with executor(Orchestration(dask_address=cluster.address)) as ex:
        with pytest.raises(ValueError, match="shard 2: bad input"):
            map_ordered(ex, failing_shard, [(i,) for i in range(4)])


def test_unreachable_scheduler_names_the_key():
    with pytest.raises(ConfigError, match="orchestration.dask_address"):
        with executor(Orchestration(dask_address="tcp://127.0.0.1:9"), timeout_s=1):
            pass


def test_cli_reports_executor(tmp_path, cluster):
    import yaml

    from tasks.config import PARAMS
    from tasks.scaleout import main

    data = yaml.safe_load(PARAMS.read_text())
    data["orchestration"]["dask_address"] = cluster.address
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    assert main(["--params", str(params), "--ping"]) == 0


def _run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests._scaleout_helpers", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_shards_of_main_module_pickle_by_reference(cluster):
    """A shard function of ``__main__`` holding a module-level lock runs on the cluster, from
    the worker's one import of the module; plain Dask pickles it by value and fails."""
    raw = _run_main(cluster.address, "--raw")
    assert raw.returncode != 0 and "cannot pickle '_thread.lock'" in raw.stderr, raw.stderr[-2000:]
    res = _run_main(cluster.address)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.splitlines()[-1]) == [1, 2, 3, 4]  # one module state per worker
