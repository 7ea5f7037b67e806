"""Provenance records: the md5s they name, model identities, and bytes that do not depend on where
or how a stage ran (:mod:`tasks.provenance`).

The merge stage is the vehicle for the records of a whole stage run (it is fast and needs no model
to run); the score / denoise / export records are checked by ``tests/test_score_cli.py`` and the
hf_export cards and folders by ``tests/test_hf_export.py``, through their CLIs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks import merge, provenance
from tasks.config import compose, load_config
from tasks.io import file_digest
from tasks.models import model_revision
from tasks.records import Qrel, hits_table, write_hits, write_qrels

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("smoke-a", "smoke-b")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_model(folder: Path, seed: int) -> Path:
    """A model directory as far as provenance sees one: config, tokenizer and weight files."""
    rng = np.random.default_rng(seed)
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "seed": seed}))
    (folder / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "model.safetensors").write_bytes(rng.bytes(4096))
    return folder


def _hits(path: Path, rows: dict[int, list[int]]) -> None:
    qids = [q for q in sorted(rows) for _ in rows[q]]
    pids = [p for q in sorted(rows) for p in rows[q]]
    write_hits(
        path, hits_table(np.array(qids), np.array(pids), np.array([10.0 - i for i in range(len(pids))]))
    )


def _world(root: Path) -> None:
    """Mined hits, training qrels and two model directories at the sample's relative paths under
    ``root`` (a project root)."""
    data = yaml.safe_load(compose("sample"))
    neg = root / data["paths"]["negatives"]
    neg.mkdir(parents=True)
    _hits(neg / "bm25.parquet", {1: [11, 12, 13], 2: [21, 22]})
    _hits(neg / "smoke-a.parquet", {1: [13, 14], 2: [23]})
    _hits(neg / "smoke-b.parquet", {1: [15], 2: [24, 25]})
    qrels = root / data["paths"]["raw"] / data["inputs"]["qrels_train"]
    qrels.parent.mkdir(parents=True)
    write_qrels(qrels, [Qrel(1, 10, 1), Qrel(2, 20, 1)])
    for i, name in enumerate(SYSTEMS):
        _fake_model(root / data["paths"]["models"] / name, seed=i)


def _params(data: dict, models: str) -> dict:
    data["systems"] = {
        "smoke-a": {"model": f"{models}/smoke-a", "score": "cos", "smoke": True},
        "smoke-b": {"model": f"{models}/smoke-b", "score": "dot", "smoke": True},
        "no-weights": {"model": None, "score": "dot"},
    }
    return data


@pytest.fixture
def merge_params(tmp_path: Path) -> Path:
    """A sample params.yaml whose paths all point into ``tmp_path`` (absolute), with the world."""
    _world(tmp_path)
    data = yaml.safe_load(compose("sample"))
    data["paths"] = {k: str(tmp_path / v) for k, v in data["paths"].items()}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_params(data, data["paths"]["models"]), sort_keys=False))
    return path


def test_merge_record_names_its_inputs_models_params_and_changes_with_an_input(
    merge_params: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(merge_params)
    assert merge.main(["--params", str(merge_params)]) == 0
    out = cfg.path("out") / merge.OUT_NAME
    sidecar = out.with_name(out.name + ".provenance.json")
    record = json.loads(sidecar.read_text())
    assert record["stage"] == "merge" and record["format"] == provenance.FORMAT
    qrels = cfg.input_path("qrels_train")
    neg = cfg.path("negatives")
    want = {f"${{paths.negatives}}/{p.name}": p for p in sorted(neg.iterdir())}
    want["${paths.raw}/" + cfg.inputs.qrels_train] = qrels
    assert {e["path"]: (e["md5"], e["size"]) for e in record["inputs"]} == {
        k: (file_digest(p), p.stat().st_size) for k, p in want.items()
    }
    assert record["outputs"] == [
        {"path": "${paths.out}/" + merge.OUT_NAME, "md5": file_digest(out), "size": out.stat().st_size}
    ]
    source = cfg.inputs.qrels_train.split("/")[0]  # the download the qrels came from
    assert record["sources"] == [
        {"name": source, **cfg.sources[source].model_dump(include={"url", "md5", "size"})}
    ]
    models = {m["role"]: m for m in record["models"]}
    assert sorted(models) == ["systems.no-weights", "systems.smoke-a", "systems.smoke-b"]
    a = models["systems.smoke-a"]
    assert a["kind"] == "local-dir" and a["model"] == "${paths.models}/smoke-a"
    assert a["resolved"] == model_revision(str(cfg.path("models") / "smoke-a"), None)
    assert a["resolved"] != models["systems.smoke-b"]["resolved"]
    assert models["systems.no-weights"] == {
        "role": "systems.no-weights", "model": None, "revision": None, "kind": "none", "resolved": None
    }  # fmt: skip
    assert record["params"] == {"systems": cfg.model_dump(mode="json")["systems"]}
    assert {"python", "numpy", "pyarrow", "hardnegs"} <= set(record["packages"])
    assert sidecar.read_text() == provenance.dumps_json(record)  # canonical: sorted keys, indent 2
    # no absolute path of its own (the params hold what params.yaml says: absolute, in this test)
    assert str(merge_params.parent) not in json.dumps({k: v for k, v in record.items() if k != "params"})

    # verify: all as recorded; then one qrels line more: verify names the file, a rerun re-records it
    assert provenance.main(["verify", str(out), "--params", str(merge_params)]) == 0
    assert "5 of 5 file(s) as recorded" in capsys.readouterr().out
    with open(qrels, "a", encoding="utf-8") as fh:
        fh.write("2\t0\t21\t1\n")
    assert provenance.main(["verify", str(sidecar), "--params", str(merge_params)]) == 1
    text = capsys.readouterr().out
    assert f"input ${{paths.raw}}/{cfg.inputs.qrels_train}: changed (" in text and "4 of 5" in text
    before = record
    assert merge.main(["--params", str(merge_params)]) == 0
    after = json.loads(sidecar.read_text())
    changed = {e["path"] for e in after["inputs"]} ^ {e["path"] for e in before["inputs"]}
    assert not changed
    diff = [e["path"] for e, f in zip(after["inputs"], before["inputs"], strict=True) if e != f]
    assert diff == ["${paths.raw}/" + cfg.inputs.qrels_train]
    assert after["outputs"] != before["outputs"]  # 21 is now a positive of qid 2: dropped from its list
    assert provenance.main(["verify", str(out), "--params", str(merge_params)]) == 0


def test_a_local_model_hash_follows_every_byte_and_name(tmp_path: Path) -> None:
    folder = _fake_model(tmp_path / "m", seed=1)
    first = provenance.resolve_model("cross_encoder", str(folder), None)
    assert first["kind"] == "local-dir" and first["resolved"].startswith("dir-sha256:")
    assert provenance.resolve_model("cross_encoder", str(folder), None) == first  # stable
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[100] ^= 1
    (folder / "model.safetensors").write_bytes(bytes(weights))
    flipped = provenance.resolve_model("cross_encoder", str(folder), None)["resolved"]
    assert flipped != first["resolved"]
    (folder / "1_Pooling" / "config.json").rename(folder / "1_Pooling" / "config2.json")  # same bytes
    renamed = provenance.resolve_model("cross_encoder", str(folder), None)["resolved"]
    assert renamed not in (flipped, first["resolved"])
    # the identity the stage already computed is taken as it is (hashed once per stage run)
    known = "dir-sha256:" + "f" * 64
    assert provenance.resolve_model("cross_encoder", str(folder), None, known=known)["resolved"] == known


def test_a_hub_id_resolves_to_the_commit_of_the_local_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny-model"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = provenance.resolve_model("cross_encoder", "org/tiny-model", None)
    assert got == {"role": "cross_encoder", "model": "org/tiny-model", "revision": None, "kind": "hub",
                   "resolved": COMMIT}  # fmt: skip
    assert provenance.resolve_model("x", "org/tiny-model", "main")["resolved"] == COMMIT
    pinned = "f" * 40  # a pin is the identity
    assert provenance.resolve_model("x", "org/tiny-model", pinned)["resolved"] == pinned
    assert provenance.resolve_model("x", "org/not-cached", None)["resolved"] is None
    assert provenance.resolve_model("x", "no/such/dir", None)["kind"] == "absent"  # neither dir nor hub id


def test_the_hub_is_not_asked_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert provenance.hub_offline() and provenance.hub_commit("org/tiny-model", None) is None
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "true")
    assert provenance.hub_offline()
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    assert not provenance.hub_offline()


def _checkout(dest: Path) -> Path:
    """A copy of the project (code, dvc.yaml, relative sample paths) with the merge world."""
    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "tasks", dest / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    data = yaml.safe_load(compose("sample"))
    (dest / "params.yaml").write_text(yaml.safe_dump(_params(data, data["paths"]["models"]), sort_keys=False))
    _world(dest)
    return dest


def _merge(checkout: Path, cwd: Path, env: dict[str, str]) -> bytes:
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.merge", "--params", str(checkout / "params.yaml")],
        cwd=cwd, env={**env, "PYTHONPATH": str(checkout)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = yaml.safe_load((checkout / "params.yaml").read_text())
    return (checkout / data["paths"]["out"] / f"{merge.OUT_NAME}.provenance.json").read_bytes()


def test_records_are_byte_identical_across_checkouts_cwd_and_environments(tmp_path: Path) -> None:
    path = os.environ.get("PATH", "/usr/bin:/bin")
    a = _checkout(tmp_path / "a" / "proj")
    b = _checkout(tmp_path / "elsewhere" / "deeper" / "checkout-b")
    env_a = {"PATH": path, "HOME": str(tmp_path / "home-a"), "USER": "alice", "LANG": "C.UTF-8",
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    env_b = {"PATH": path, "HOME": str(tmp_path / "home-b"), "USER": "bob", "LC_ALL": "de_DE.UTF-8",
             "HF_HOME": str(tmp_path / "hf-b"), "TZ": "Pacific/Kiritimati"}  # fmt: skip
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    first = _merge(a, a, env_a)
    assert _merge(a, a, env_a) == first  # rerun
    assert _merge(b, elsewhere, env_b) == first  # other checkout, cwd and environment
    text = first.decode()
    assert str(tmp_path) not in text and socket.gethostname() not in text
    record = json.loads(text)
    assert [e["path"] for e in record["outputs"]] == [f"data/sample/out/{merge.OUT_NAME}"]
    assert {m["model"] for m in record["models"]} == {None, "data/models/smoke-a", "data/models/smoke-b"}


def test_cli_help_show_and_errors_name_the_file(
    merge_params: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        provenance.main(["--help"])
    assert exc.value.code == 0 and "verify" in capsys.readouterr().out
    assert merge.main(["--params", str(merge_params)]) == 0
    out = load_config(merge_params).path("out") / merge.OUT_NAME
    assert provenance.main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "stage: merge" in shown and "systems.smoke-a: ${paths.models}/smoke-a" in shown
    assert provenance.main(["show", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["stage"] == "merge"
    bogus = tmp_path / "x.provenance.json"
    bogus.write_text('{"stage": "merge"}')
    assert provenance.main(["show", str(bogus)]) == 1
    assert provenance.main(["verify", str(tmp_path / "nothing.jsonl.gz")]) == 1
    err = caplog.text
    assert f"{bogus}: not a provenance record (lacks format" in err
    assert f"{tmp_path / 'nothing.jsonl.gz.provenance.json'}: no provenance record" in err


def test_stage_declaration_errors_name_dvc_yaml(tmp_path: Path) -> None:
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match="dvc.yaml: no such file"):
        provenance.stage_declaration("merge", tmp_path / "dvc.yaml")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"mine": {"foreach": [1], "do": {}}}}))
    with pytest.raises(ConfigError, match="no single stage 'mine'"):
        provenance.stage_declaration("mine", tmp_path / "dvc.yaml")
    deps, params = provenance.stage_declaration("merge")
    assert "tasks/provenance.py" in deps and params == ["systems"]
