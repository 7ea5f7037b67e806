"""Which model a stage really runs: where a model id points, and the revision that identifies its weights.

Cache keys and manifests (``encode``'s embedding cache, ``score``'s shard cache) name a model by
what its weights are, never by where they live: a local directory by the hash of its files, a
hub id by its pinned commit, or, unpinned, by the commit of the snapshot the local Hugging Face
cache holds (the one an offline load reads). So the same weights give the same keys in any
checkout, and other weights never reuse cached work.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tasks.config import ROOT
from tasks.io import file_digest


def model_location(model: str) -> str:
    """A local model directory given relative to the project root, made absolute; hub ids as is."""
    path = Path(model)
    if not path.is_absolute() and not path.exists() and (ROOT / path).is_dir():
        return str(ROOT / path)
    return model


def hub_cache_commit(model: str, revision: str | None, cache_dir: str | Path | None = None) -> str | None:
    """The commit of the snapshot ``model`` at ``revision`` (None: ``main``) in the local HF cache.

    This is the snapshot an offline load (``HF_HUB_OFFLINE=1``) uses, found without the network;
    None when the cache holds no such snapshot (or ``model`` is no valid hub id).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = snapshot_download(model, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
        return None
    commit = Path(str(path)).name
    return commit if is_commit(commit) else None


def is_commit(revision: str | None) -> bool:
    """A full 40-hex git commit id (not a branch or tag name)."""
    return revision is not None and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def model_revision(model: str, revision: str | None, cache_dir: str | Path | None = None) -> str:
    """The revision that goes into cache keys and the manifest: what the weights really are.

    A local directory: the hash of its files (``dir-sha256:...``). A hub id: the pinned commit;
    a branch/tag or no pin resolved to the commit of the local HF cache's snapshot (what an
    offline load reads); ``unpinned`` (or the branch name) only when no snapshot is cached.
    """
    path = Path(model_location(model))
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + file_digest(f, "sha256").encode() + b"\n")
        return f"dir-sha256:{h.hexdigest()}"
    if is_commit(revision):
        return revision  # type: ignore[return-value]
    return hub_cache_commit(model, revision, cache_dir) or revision or "unpinned"
