"""Deterministic shard functions for the scale-out tests (module level: picklable by name)."""

from __future__ import annotations

import hashlib

import numpy as np


def shard_fn(shard: int, rows: int, seed: int) -> bytes:
    """A float32 'embedding' shard: seeded random inputs through a small matmul + normalise."""
    rng = np.random.default_rng([seed, shard])
    x = rng.standard_normal((rows, 32), dtype=np.float32)
    w = np.random.default_rng(seed).standard_normal((32, 16), dtype=np.float32)
    y = np.tanh(x @ w)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return y.astype("<f4").tobytes()


def failing_shard(shard: int) -> int:
    if shard == 2:
        raise ValueError(f"shard {shard}: bad input")
    return shard


def digest(parts: list[bytes]) -> str:
    return hashlib.sha256(b"".join(parts)).hexdigest()
