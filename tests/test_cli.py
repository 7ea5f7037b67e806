"""Every stage CLI shares one frame: a bad params file is one clear error and exit code 2."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest

STAGES = [
    ("bm25_index", []),
    ("bm25_mine", []),
    ("smoke_models", []),
    ("encode", ["--system", "x"]),
    ("dense_mine", ["--system", "x"]),
    ("merge", []),
    ("score", []),
    ("rerank", []),
    ("denoise", []),
    ("export", []),
    ("hf_export", []),
    ("mine_scores", []),
    ("mine_export", []),
    ("parity", []),
]


@pytest.mark.parametrize(("stage", "extra"), STAGES)
def test_missing_params_is_exit_2_naming_the_file(stage, extra, tmp_path: Path, caplog):
    main = importlib.import_module(f"tasks.{stage}").main
    missing = tmp_path / "nope.yaml"
    with caplog.at_level(logging.ERROR):
        assert main(["--params", str(missing), *extra]) == 2
    assert f"{missing}: no such params file" in caplog.text


@pytest.mark.parametrize(
    ("stage", "extra"),
    [s for s in STAGES if s[0] in ("merge", "denoise", "export", "hf_export", "mine_scores", "mine_export")],
)
def test_missing_input_is_exit_1_naming_it(stage, extra, tmp_path: Path, caplog):
    """A valid params file whose data paths point into an empty directory."""
    import yaml

    from tasks.config import ROOT

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["paths"] = {key: str(tmp_path / key) for key in data["paths"]}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    main = importlib.import_module(f"tasks.{stage}").main
    with caplog.at_level(logging.ERROR):
        assert main(["--params", str(params), *extra]) == 1
    assert str(tmp_path) in caplog.text
