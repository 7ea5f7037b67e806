"""The command-line frame every stage module shares: ``--params``, logging and exit codes.

    parser = stage_parser("tasks.merge", "What the stage does.", "python -m tasks.merge")
    args = parser.parse_args(argv)
    return run_stage(args.params, lambda cfg: run(...paths from cfg...))

Exit codes: 0 done; 1 bad input data or a missing input file (the message names the file,
line or key); 2 a missing or invalid ``params.yaml`` (the message names the key).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from tasks.config import Config, ConfigError, load_config
from tasks.io import DataError

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def stage_parser(module: str, description: str, example: str, **kwargs: Any) -> argparse.ArgumentParser:
    """An argument parser for ``python -m <module>`` with ``--params`` and an example epilog."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=description, epilog=f"example: {example}", **kwargs
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(params: str, work: Callable[[Config], object]) -> int:
    """Load and validate ``params``, call ``work(cfg)``; log a clear error and return the exit code."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        work(load_config(params))
    except ConfigError as exc:  # a ValueError too: caught first
        log.error("%s", exc)
        return 2
    except (DataError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0
