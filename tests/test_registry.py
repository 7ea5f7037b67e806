"""The system registry says what is evidenced (issue 15 item 8): each msmarco system's model and
how its mapping to the published system is known; unevidenced mappings are flagged, not hidden."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.config import ROOT, compose, load_config, registry_markdown

# The systems whose weights are public, and whether their mapping is evidenced today.
EVIDENCED = {
    "msmarco-distilbert-base-tas-b": True,
    "msmarco-distilbert-base-v3": True,
    "msmarco-MiniLM-L-6-v3": True,
    "co-condenser-margin_mse-sym_mnrl-mean-v1": True,
    "distilbert-margin_mse-sym_mnrl-mean-v1": False,
}


@pytest.fixture(scope="module")
def msmarco_params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "params.yaml"
    path.write_text(compose("msmarco"))
    return path


def _rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_every_public_model_says_how_it_is_known(msmarco_params: Path) -> None:
    cfg = load_config(msmarco_params)
    public = {name for name, s in cfg.systems.items() if s.model}
    assert public == set(EVIDENCED)
    for name, evidenced in EVIDENCED.items():
        assert bool(cfg.systems[name].evidence) is evidenced, name
    co = cfg.systems["co-condenser-margin_mse-sym_mnrl-mean-v1"]
    assert co.model == "sentence-transformers/msmarco-bert-base-dot-v5"
    assert "final-models/co-condenser-margin_mse-sym_mnrl-mean-v1" in co.evidence  # type: ignore[operator]


def test_registry_table_flags_the_unevidenced_and_the_skipped(msmarco_params: Path) -> None:
    rows = _rows(registry_markdown(load_config(msmarco_params)))
    assert len(rows) == 12
    assert (
        rows["distilbert-margin_mse-sym_mnrl-mean-v1"][0] == "sentence-transformers/msmarco-distilbert-dot-v5"
    )
    assert "not evidenced" in rows["distilbert-margin_mse-sym_mnrl-mean-v1"][2]
    assert "tasks.parity" in rows["distilbert-margin_mse-sym_mnrl-mean-v1"][2]
    assert "not evidenced" not in rows["msmarco-distilbert-base-tas-b"][2]
    assert rows["mpnet-margin_mse-mean-v1"][0] == "–"
    assert "no public weights" in rows["mpnet-margin_mse-mean-v1"][2]


def test_smoke_systems_are_labelled_as_such() -> None:
    rows = _rows(registry_markdown(load_config(ROOT / "params.yaml")))
    assert rows and all("smoke model" in cells[2] for cells in rows.values())


def test_cli_registry_and_check_name_the_unevidenced_system(msmarco_params: Path) -> None:
    run = [sys.executable, "-m", "tasks.config"]
    table = subprocess.run(
        [*run, "registry", "--params", str(msmarco_params)], capture_output=True, text=True
    )
    assert table.returncode == 0, table.stderr
    assert "| co-condenser-margin_mse-sym_mnrl-mean-v1 |" in table.stdout
    check = subprocess.run([*run, "check", "--params", str(msmarco_params)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    note = [line for line in check.stderr.splitlines() if line.startswith("note:")]
    assert note == [
        "note: the model of distilbert-margin_mse-sym_mnrl-mean-v1 is not evidenced to be the "
        "published system's checkpoint; see `python -m tasks.config registry`"
    ]


def test_evidence_is_a_string_or_null(tmp_path: Path, msmarco_params: Path) -> None:
    data = yaml.safe_load(msmarco_params.read_text())
    data["systems"]["msmarco-MiniLM-L-6-v3"]["evidence"] = ["not", "a", "string"]
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match=r"systems\.msmarco-MiniLM-L-6-v3\.evidence"):
        load_config(bad)


def test_auto_score_says_where_it_comes_from(tmp_path: Path, msmarco_params: Path) -> None:
    data = yaml.safe_load(msmarco_params.read_text())
    data["systems"]["msmarco-MiniLM-L-6-v3"]["score"] = "auto"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    rows = _rows(registry_markdown(load_config(path)))
    assert rows["msmarco-MiniLM-L-6-v3"][1] == "auto (the model's similarity_fn_name)"
    assert rows["msmarco-distilbert-base-v3"][1] == "cos"
