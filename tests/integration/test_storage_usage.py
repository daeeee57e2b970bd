"""Usage counting on a real PostgreSQL: each event counted once (in a batch, on redelivery, across
concurrent batches, after a rollback), semantic maps stored exactly, old rows purged.

Tests share one migrated database per module, so each uses its own language or ids.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from compass.core.errors import DataError
from compass.core.semantic_map import SemanticMap
from compass.ports.storage import UsageObservation
from compass.sql.unit_of_work import SqlStore
from tests import sql_helpers
from tests.integration.storage_support import (
    WINDOW,
    map_version_fixture,  # noqa: F401 (a fixture)
    run_together,
    scalar,
    store_fixture,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- usage counting
def test_record_usage_counts_each_event_once(store: SqlStore, map_version: int) -> None:
    def obs(event_id: str, cluster: int, **kw: Any) -> UsageObservation:
        return UsageObservation(event_id, "de", cluster, WINDOW, 3600, map_version, **kw)

    batch = [obs(f"de-{i}", i % 3) for i in range(30)] + [obs("de-0", 2)]  # in-batch duplicate
    batch.append(batch[4])  # the same object twice (a redelivery within one batch)
    batch.append(obs("de-shed", -1, sampled=False, weight=4.0))
    with store() as uow:
        assert uow.usage.record_usage(batch) == 31
        uow.commit()
    with store() as uow:  # a redelivery of half the batch plus two new events
        again = [*batch[:15], obs("de-new-1", 0), obs("de-new-2", 1, weight=2.5)]
        assert uow.usage.record_usage(again) == 2
        uow.commit()
    with store() as uow:
        counts = sql_helpers.window_counts(uow, "de", WINDOW)
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


def test_staged_copy_variant_counts_like_record_usage(store: SqlStore, map_version: int) -> None:
    """``record_usage_staged`` (COPY into a staging table, measured in bench_usage_ingest) keeps
    the same guarantee: a redelivered id is never counted again, counts are identical."""

    def obs(event_id: str, cluster: int, **kw: Any) -> UsageObservation:
        return UsageObservation(event_id, "is", cluster, WINDOW, 3600, map_version, **kw)

    batch = [obs(f"is-stage-{i}", i % 3) for i in range(30)] + [obs("is-stage-0", 2)]
    batch.append(obs("is-stage-shed", -1, sampled=False, weight=4.0))
    with store() as uow:
        assert uow.usage.record_usage_staged(batch) == 31  # type: ignore[attr-defined]
        uow.commit()
    with store() as uow:
        again = [*batch[:15], obs("is-stage-new", 0)]
        assert uow.usage.record_usage_staged(again) == 1  # type: ignore[attr-defined]
        assert uow.usage.record_usage(batch[15:20]) == 0  # the two paths share the dedup rows
        uow.commit()
    with store() as uow:
        assert sql_helpers.window_counts(uow, "is", WINDOW) == {
            -1: (4.0, 0), 0: (11.0, 11), 1: (10.0, 10), 2: (10.0, 10),
        }  # fmt: skip


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
        assert sql_helpers.window_counts(uow, "it", WINDOW)[1] == (5.0, 5)


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
        counts = sql_helpers.window_counts(uow, "nl", WINDOW)
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
        # saving a stored map again makes it the active one: the first map gets its place back
        again = uow.semantic_maps.save_semantic_map(first.semantic_map)
        assert again.version == map_version and again.active
        uow.commit()
    assert scalar(store, "SELECT count(*) FROM semantic_maps WHERE active") == 1


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


# --------------------------------------------------------------------------- re-used event ids
def test_a_reused_event_id_with_other_content_is_a_conflict_not_a_redelivery(
    store: SqlStore, map_version: int
) -> None:
    """Issue 14: the dedup row keeps the content digest. The same id with the same digest is a
    redelivery (nothing counted, no conflict); with another digest a conflict (not counted,
    named); a row or an observation without a digest is never called a conflict."""

    def obs(event_id: str, digest: bytes | None) -> UsageObservation:
        return UsageObservation(event_id, "gl", 0, WINDOW, 3600, map_version, content_digest=digest)

    a, b = b"\xaa" * 32, b"\xbb" * 32
    with store() as uow:
        first = uow.usage.record_usage_checked(
            [obs("gl-1", a), obs("gl-2", a), obs("gl-legacy", None), obs("gl-1", b)]
        )
        assert (first.counted, first.conflicts) == (3, ["gl-1"])  # in-batch: the later one
        uow.commit()
    with store() as uow:
        stored = uow.connection.execute(
            text("SELECT event_id, content_digest FROM processed_events WHERE event_id LIKE 'gl-%'")
        ).all()
        assert {(i, None if d is None else bytes(d)) for i, d in stored} == {
            ("gl-1", a), ("gl-2", a), ("gl-legacy", None),
        }  # fmt: skip
    with store() as uow:
        again = uow.usage.record_usage_checked(
            [
                obs("gl-1", a),
                obs("gl-2", b),
                obs("gl-legacy", b),
                obs("gl-3", None),
                obs("gl-1", None),
            ]
        )
        assert (again.counted, again.conflicts) == (1, ["gl-2"])
        assert uow.usage.record_usage([obs("gl-2", b)]) == 0  # the plain call: counts only
        uow.commit()
    with store() as uow:
        assert sql_helpers.window_counts(uow, "gl", WINDOW) == {0: (4.0, 4)}


def _verb(statement: str) -> str:
    return statement.split()[0].upper()


def test_the_conflict_check_runs_only_when_ids_were_seen_before(
    store: SqlStore, map_version: int
) -> None:
    """The hot path is one statement (after its ``SET LOCAL jit``): a batch of new ids sends
    no conflict check."""
    from sqlalchemy import event

    statements: list[str] = []
    obs = [
        UsageObservation(f"eu-{i}", "eu", 0, WINDOW, 3600, map_version, content_digest=bytes(32))
        for i in range(5)
    ]
    with store() as uow:
        engine = uow.connection.engine

        def seen(*args: Any) -> None:
            statements.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", seen)
        try:
            assert uow.usage.record_usage_checked(obs).counted == 5
            assert [_verb(s) for s in statements] == ["SET", "WITH"]  # jit off, the batch
            assert uow.usage.record_usage_checked(obs[:2]).conflicts == []
            # the batch again (nothing new), then the check
            assert [_verb(s) for s in statements[2:]] == ["SET", "WITH", "SELECT"]
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        uow.rollback()
