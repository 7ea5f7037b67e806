"""The typed config: validation errors name the key; profiles compose; dvc.yaml agrees."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tasks.config import ROOT, ConfigError, compose, load_config

SEED_SYSTEMS = [
    "msmarco-distilbert-base-tas-b",
    "msmarco-distilbert-base-v3",
    "msmarco-MiniLM-L-6-v3",
    "distilbert-margin_mse-cls-dot-v2",
    "distilbert-margin_mse-cls-dot-v1",
    "distilbert-margin_mse-mean-dot-v1",
    "mpnet-margin_mse-mean-v1",
    "co-condenser-margin_mse-cls-v1",
    "distilbert-margin_mse-mnrl-mean-v1",
    "distilbert-margin_mse-sym_mnrl-mean-v1",
    "distilbert-margin_mse-sym_mnrl-mean-v2",
    "co-condenser-margin_mse-sym_mnrl-mean-v1",
]


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_committed_params_is_the_composed_sample_profile():
    assert (ROOT / "params.yaml").read_text() == compose("sample")
    cfg = load_config()
    assert cfg.profile == "sample"
    assert all(s.smoke for s in cfg.systems.values())


def test_msmarco_profile_has_the_seed_systems_and_official_sources():
    cfg_text = compose("msmarco")
    data = yaml.safe_load(cfg_text)
    assert list(data["systems"]) == SEED_SYSTEMS
    assert data["cross_encoder"]["model"] == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    urls = [s["url"] for s in data["sources"].values()]
    assert all("msmarco.blob.core.windows.net" not in u for u in urls)
    assert data["sources"]["collectionandqueries"]["md5"] == "31644046b18952c1386cd4564ba2ae69"
    assert data["paths"]["raw"] == "data/msmarco/raw"


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, lambda d: d["bm25"].update(k11=1.0))
    with pytest.raises(ConfigError, match=r"bm25\.k11: unknown key"):
        load_config(path)


def test_bad_value_lists_allowed_values(tmp_path):
    path = _write(tmp_path, lambda d: d["bm25"].update(backend="solr"))
    with pytest.raises(ConfigError, match=r"bm25\.backend: .*'embedded' or 'elasticsearch'"):
        load_config(path)


def test_bad_md5_and_url_are_named(tmp_path):
    def mutate(d):
        d["sources"]["dl19_qrels"]["md5"] = "xyz"
        d["sources"]["qa_dev"]["url"] = "ftp://example.org/x"

    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, mutate))
    assert "sources.dl19_qrels.md5" in str(err.value)
    assert "sources.qa_dev.url" in str(err.value)


def test_missing_file_and_unknown_profile(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown profile 'tiny'; known: msmarco, sample"):
        compose("tiny")


def test_reserved_system_name(tmp_path):
    path = _write(tmp_path, lambda d: d["systems"].update(bm25={"model": None, "score": "dot"}))
    with pytest.raises(ConfigError, match="reserved"):
        load_config(path)


def test_dvc_yaml_agrees_with_config():
    """Every interpolated key exists, every cmd module exists, every deps script exists."""
    cfg = load_config()
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    text = (ROOT / "dvc.yaml").read_text()
    refs = set(re.findall(r"\$\{([a-z_.]+)\}", text))
    for ref in {r for r in refs if r.split(".")[0] not in ("key", "item")}:  # foreach's own names
        node = cfg.model_dump()
        for part in ref.split("."):
            assert part in node, f"dvc.yaml uses ${{{ref}}} but params has no {part!r}"
            node = node[part]
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        module = re.search(r"python -m (tasks\.[a-z_0-9]+)", body["cmd"])
        assert module, f"stage {name}: cmd must be `python -m tasks.<stage>`"
        assert (ROOT / (module.group(1).replace(".", "/") + ".py")).exists(), name
        for dep in body.get("deps", []):
            if dep.startswith(("tasks/", "flows/")):
                assert (ROOT / dep).exists(), f"stage {name}: dep {dep} does not exist"
    assert "${sources}" in dvc["stages"]["download"]["foreach"]
    assert dvc["stages"]["encode"]["foreach"] == "${systems}"
    assert dvc["stages"]["mine"]["foreach"] == "${systems}"


def test_dev_candidates_choose_the_rerank_input(tmp_path):
    cfg = load_config()
    assert cfg.evaluate.dev_candidates == "bm25"
    assert cfg.candidates("dev") == ROOT / "data/sample/runs/bm25/dev.full.trec"
    official = load_config(_write(tmp_path, lambda d: d["evaluate"].update(dev_candidates="top1000")))
    assert official.candidates("dev") == ROOT / "data/sample/raw/top1000_dev/top1000.dev"
    assert official.candidates("dl19") == cfg.candidates("dl19")  # each set has its own knob
    with pytest.raises(ConfigError, match=r"evaluate\.dev_candidates"):
        load_config(_write(tmp_path, lambda d: d["evaluate"].update(dev_candidates="official")))


def test_dl19_candidates_are_the_official_list_registered_and_tracked():
    """DL19 re-ranks the official list by default (the published setup); the msmarco registry
    pins it as ir_datasets does; the stages that read the knob and the file declare both."""
    cfg = load_config()
    assert cfg.evaluate.dl19_candidates == "top1000"
    assert cfg.candidates("dl19") == cfg.input_path("top1000_dl19")
    assert cfg.inputs.top1000_dl19 == "dl19_top1000/msmarco-passagetest2019-top1000.tsv"
    full = yaml.safe_load(compose("msmarco"))
    assert full["sources"]["dl19_top1000"] == {
        "url": "https://msmarco.z22.web.core.windows.net/msmarcoranking/msmarco-passagetest2019-top1000.tsv.gz",
        "md5": "ec9e012746aa9763c7ff10b3336a3ce1", "size": 26634062, "unpack": "gunzip",
    }  # fmt: skip
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in (stages["mine"]["do"], stages["ce_rerank"]):
        assert {"evaluate.dev_candidates", "evaluate.dl19_candidates"} <= set(stage["params"])
        lists = {"${paths.raw}/${inputs.top1000_dev}", "${paths.raw}/${inputs.top1000_dl19}"}
        assert lists <= set(stage["deps"])


def _has(data: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def test_every_profile_has_every_param_dvc_yaml_reads(tmp_path):
    """DVC reads params from the file, not the typed defaults: a key dvc.yaml lists that a profile
    leaves out fails `dvc repro` (the msmarco profile lacked cross_encoder.smoke, read by
    evaluate); compose writes the default of each such key."""
    import argparse
    import shutil

    from tasks.config import dvc_param_keys
    from tasks.profile_init import parser, write_profile

    keys = dvc_param_keys(ROOT / "dvc.yaml")
    assert {"cross_encoder.smoke", "evaluate.rerank_depth", "paths.raw", "systems", "mining"} <= keys
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    beir = tmp_path / "beir"
    for argv in (["own", "--beir", str(beir)], ["own-inc", "--beir", str(beir), "--incremental"]):
        args: argparse.Namespace = parser().parse_args(argv)
        write_profile(args, conf)
    profiles = sorted(p.stem for p in (conf / "profile").glob("*.yaml"))
    assert {"msmarco", "sample", "own", "own-inc"} <= set(profiles)
    for profile in profiles:
        data = yaml.safe_load(compose(profile, conf))
        missing = sorted(k for k in keys if not _has(data, k))
        assert not missing, (profile, missing)
    assert yaml.safe_load(compose("msmarco", conf))["cross_encoder"]["smoke"] is False
