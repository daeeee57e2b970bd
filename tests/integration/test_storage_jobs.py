"""Drift events, training jobs, dead letters and the outbox on a real PostgreSQL: one job per
drift event, leases, redeliveries ignored, outbox batches never handed to two relays, and the
read-only role.

Tests share one migrated database per module, so each uses its own language or ids.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg.errors
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from compass.core.errors import DataError
from compass.core.events import DeadLetter
from compass.sql.unit_of_work import SqlStore
from tests import sql_helpers
from tests.integration.storage_support import (
    WINDOW,
    drift,
    run_together,
    scalar,
    store_fixture,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.integration


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
        stored = sql_helpers.get_drift_event(uow, event.drift_id)
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
            d for d in sql_helpers.recent_dead_letters(uow) if d.source == letter.source_topic
        ]
    assert len(stored) == 1 and stored[0].raw == raw and stored[0].offset == 77


# --------------------------------------------------------------------------- jobs
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


def test_expired_lease_makes_the_job_claimable_again(store: SqlStore) -> None:
    event = drift("fi")
    with store() as uow:
        uow.drift.record_drift_event(event)
        first = uow.jobs.claim_job(event.drift_id, "dies", timedelta(milliseconds=1))
        uow.commit()
    assert first is not None
    time.sleep(0.01)
    with store() as uow:
        second = uow.jobs.claim_job(event.drift_id, "rescuer", timedelta(minutes=5))
        assert second is not None and second.job_id == first.job_id and second.attempts == 2
        with pytest.raises(DataError, match="not held"):
            uow.jobs.complete_job(first.job_id, "dies", None)
        uow.jobs.complete_job(second.job_id, "rescuer", None)
        uow.commit()
        done = sql_helpers.get_job(uow, event.drift_id)
    assert done is not None and done.status == "succeeded"
    with pytest.raises(DataError, match="not stored"), store() as uow:
        uow.jobs.claim_job(uuid.uuid4(), "w", timedelta(minutes=1))


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


# --------------------------------------------------------------------------- reader role
def test_reader_role_reads_the_views_only_and_writes_nothing(store: SqlStore) -> None:
    """Migration 0007: every view readable, every table refused (issue 14)."""
    with store.engine.connect() as conn:
        kinds = dict(
            conn.execute(
                text(
                    "SELECT table_name, table_type FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            ).all()
        )
    views = {n for n, kind in kinds.items() if kind == "VIEW"}
    assert {"adapter_history", "drift_history", "language_distribution", "live_adapters"} <= views
    for name, kind in kinds.items():
        with store.engine.connect() as conn:
            conn.execute(text("SET ROLE compass_reader"))
            if kind == "VIEW":
                conn.execute(text(f"SELECT * FROM {name} LIMIT 1")).all()
                continue
            with pytest.raises(sqlalchemy.exc.ProgrammingError) as caught:
                conn.execute(text(f"SELECT * FROM {name} LIMIT 1"))
            assert isinstance(caught.value.orig, psycopg.errors.InsufficientPrivilege), name
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
