"""Which model a stage really runs: where a model id points, and the revision that identifies its weights.

Cache keys and manifests (``encode``'s embedding cache, ``score``'s shard cache) name a model by
what its weights are, never by where they live: a local directory by the hash of its files, a
hub id by its pinned commit, or, unpinned, by the commit of the snapshot the local Hugging Face
cache holds (the one an offline load reads). So the same weights give the same keys in any
checkout, and other weights never reuse cached work.

What a model says about itself (:func:`resolve_encoding`): its ``config_sentence_transformers.json``
prompts and ``similarity_fn_name`` and its max sequence length, merged with a system's overrides
into the :class:`Encoding` that ``encode`` keys its shards by and writes into its manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.config import ROOT, DenseSystem
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


# --------------------------------------------------------------------------- what a model says about itself
ST_CONFIG = "config_sentence_transformers.json"
# sentence-transformers' own choices: SentenceTransformer always holds a "query" and a "document"
# prompt (empty unless saved), and encode_document takes the first of these names it holds.
ST_DEFAULT_PROMPTS = ("query", "document")
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
SIMILARITY_SCORES = {"cosine": "cos", "dot": "dot"}


@dataclass(frozen=True)
class ModelConfig:
    """The inference settings a SentenceTransformer save carries in ``config_sentence_transformers.json``.

    ``prompts`` is merged the way SentenceTransformer does on load: ``query`` and ``document``
    always present (empty unless saved), a saved null read as empty. ``similarity_fn_name`` is
    None when the save names none (sentence-transformers would then silently fall back to
    cosine; this pipeline asks the user instead, since cosine vs dot changes the rankings).
    """

    prompts: dict[str, str]
    default_prompt_name: str | None
    similarity_fn_name: str | None

    def query_prompt(self) -> str:
        """The prompt ``encode_query`` applies when given none."""
        return self.prompts.get("query", "")

    def document_prompt(self) -> str:
        """The prompt ``encode_document`` applies when given none."""
        return next((self.prompts[n] for n in DOCUMENT_PROMPT_NAMES if n in self.prompts), "")


def _model_file(location: str, revision: str | None, filename: str) -> Path | None:
    """``filename`` of the model at ``location`` (a local directory, or a hub id at ``revision``),
    or None when the model has no such file. A hub file comes from the local HF cache when it
    is there (always offline, ``HF_HUB_OFFLINE=1``), else it is downloaded like the weights."""
    path = Path(location)
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(location, filename, revision=revision))
    except EntryNotFoundError:  # not in the repo, or (offline) not in the cached snapshot either
        return None


def read_model_config(location: str, revision: str | None) -> ModelConfig:
    """What ``config_sentence_transformers.json`` of the model says (defaults where it is absent)."""
    path = _model_file(location, revision, ST_CONFIG)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); is the model download complete?") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
    saved = data.get("prompts") or {}
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: 'prompts' must be a mapping of name -> text, got {saved!r}")
    prompts = {name: "" for name in ST_DEFAULT_PROMPTS}
    prompts.update({str(k): "" if v is None else str(v) for k, v in saved.items()})
    return ModelConfig(prompts, data.get("default_prompt_name"), data.get("similarity_fn_name"))


def model_max_seq_length(location: str, revision: str | None) -> int:
    """The model's own max sequence length, as SentenceTransformer reports it once loaded.

    sentence-transformers derives it from the tokenizer (its saved ``model_max_length``, capped
    at the model's ``max_position_embeddings``) and no single file states it, so the model is
    loaded once, on the CPU, to ask it.
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(location, revision=revision, device="cpu")
    value = model.max_seq_length
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{location}: the model states no max sequence length ({value!r})")
    _PROBED.clear()  # one model held at a time, for the process that asked
    _PROBED[(location, revision)] = model
    return value


_PROBED: dict[tuple[str, str | None], Any] = {}


def take_probed_model(location: str, revision: str | None) -> Any | None:
    """The model :func:`model_max_seq_length` just loaded (on the CPU) for ``location``, once.

    Encoding in the same process takes it instead of loading the same weights a second time
    (~0.2-0.3 s for MiniLM-L6 on 2 cores); ``None`` when another model, or none, was probed.
    """
    return _PROBED.pop((location, revision), None)


@dataclass(frozen=True)
class Encoding:
    """How one system encodes, fully resolved: what goes into cache keys and the manifest.

    ``method`` is ``encode`` (today's path: no prompt passed, so a model's ``default_prompt_name``
    applies as it always did) or ``prompted``: queries through ``encode_query`` with
    ``query_prompt``, the corpus through ``encode_document`` with ``document_prompt``.
    ``score_from`` / ``max_seq_length_from`` say whether the value is the system's (``params``)
    or the model's own (``model``).
    """

    method: Literal["encode", "prompted"]
    query_prompt: str | None
    document_prompt: str | None
    score: Literal["cos", "dot"]
    score_from: Literal["params", "model"]
    similarity_fn_name: str | None
    max_seq_length: int
    max_seq_length_from: Literal["params", "model"]


def _prompt(
    system: str, config: ModelConfig, side: str, text: str | None, name: str | None, default: str
) -> str:
    if text is not None:
        return text
    if name is None:
        return default
    if name not in config.prompts:
        raise ValueError(
            f"systems.{system}.{side}_prompt_name: {name!r} is not one of the model's prompts "
            f"({', '.join(sorted(config.prompts))}); set systems.{system}.{side}_prompt to give the text"
        )
    return config.prompts[name]


def resolve_encoding(system: str, params: DenseSystem, location: str, revision: str | None) -> Encoding:
    """Resolve a system's prompts, similarity and max sequence length against the model's own config.

    Prompts: the system's literal ``*_prompt`` or a ``*_prompt_name`` from the model's ``prompts``,
    else the model's query / document prompt. When the system sets one or the model holds a
    non-empty one, queries go through ``encode_query`` and the corpus through ``encode_document``;
    otherwise the plain ``encode`` of earlier releases runs (so their cache keys stay valid).
    ``score: auto`` takes the model's ``similarity_fn_name`` (cosine -> cos, dot -> dot);
    ``max_seq_length: null`` the model's own.
    """
    config = read_model_config(location, revision)
    q = _prompt(system, config, "query", params.query_prompt, params.query_prompt_name, config.query_prompt())
    d = _prompt(system, config, "document", params.document_prompt, params.document_prompt_name,
                config.document_prompt())  # fmt: skip
    set_by_system = any(
        v is not None
        for v in (
            params.query_prompt,
            params.query_prompt_name,
            params.document_prompt,
            params.document_prompt_name,
        )
    )
    prompted = set_by_system or bool(q) or bool(d)
    if params.score == "auto":
        name = config.similarity_fn_name
        if name is None:
            raise ValueError(
                f"systems.{system}.score is auto but the model {params.model} names no similarity_fn_name "
                f"in its {ST_CONFIG}; set systems.{system}.score to cos or dot"
            )
        if name not in SIMILARITY_SCORES:
            raise ValueError(
                f"systems.{system}.score is auto and the model {params.model} has similarity_fn_name "
                f"{name!r}; only cosine (cos) and dot (dot) are supported: set systems.{system}.score "
                "to cos or dot to override"
            )
        score, score_from = SIMILARITY_SCORES[name], "model"
    else:
        score, score_from, name = params.score, "params", None
    if params.max_seq_length is None:
        max_len, len_from = model_max_seq_length(location, revision), "model"
    else:
        max_len, len_from = params.max_seq_length, "params"
    return Encoding(
        method="prompted" if prompted else "encode",
        query_prompt=q if prompted else None,
        document_prompt=d if prompted else None,
        score=score,  # type: ignore[arg-type]
        score_from=score_from,  # type: ignore[arg-type]
        similarity_fn_name=name,
        max_seq_length=max_len,
        max_seq_length_from=len_from,  # type: ignore[arg-type]
    )
