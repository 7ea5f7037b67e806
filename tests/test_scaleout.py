"""Shard work gives byte-identical results in-process, in local processes and on Dask."""

from __future__ import annotations

import pytest
from distributed import LocalCluster

from tasks.config import ConfigError, Orchestration
from tasks.scaleout import InlineExecutor, describe, executor, map_ordered
from tests._scaleout_helpers import digest, failing_shard, shard_fn

SHARDS = [(i, 50 + 7 * i, 13) for i in range(6)]


@pytest.fixture(scope="module")
def cluster():
    # real worker processes talking TCP on 127.0.0.1, as a remote cluster would
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as c:
        yield c


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
    orch = Orchestration(dask_address=cluster.scheduler_address)
    assert describe(orch).startswith("dask cluster at tcp://127.0.0.1:")
    with executor(orch) as ex:
        # big shards first so they finish last: results must still come back in submission order
        out = map_ordered(ex, shard_fn, SHARDS[::-1])
    assert digest(out[::-1]) == reference
    assert len(cluster.scheduler_info["workers"]) == 2


def test_dask_shard_error_reaches_caller(cluster):
    with executor(Orchestration(dask_address=cluster.scheduler_address)) as ex:
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
    data["orchestration"]["dask_address"] = cluster.scheduler_address
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    assert main(["--params", str(params), "--ping"]) == 0
