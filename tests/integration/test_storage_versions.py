"""Adapter versions on a real PostgreSQL: consecutive numbers under concurrent writers, atomic
activation, all-or-nothing transactions with the outbox, immutable versions, one per drift event.

Tests share one migrated database per module, so each uses its own language.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from compass.core.errors import DataError
from compass.sql.unit_of_work import SqlStore
from tests import sql_helpers
from tests.integration.storage_support import (
    BASE,
    drift,
    new_version,
    run_together,
    scalar,
    store_fixture,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.integration


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
        stored = sql_helpers.list_versions(uow, adapter.adapter_id)
        again = uow.adapters.get_or_create_adapter("pt-BR", BASE)
    assert [v.number for v in stored] == list(range(1, 9))
    assert again.adapter_id == adapter.adapter_id and again.last_version == 8


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
        versions = {v.number: v for v in sql_helpers.list_versions(uow, a)}
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
        found = sql_helpers.version_for_drift(uow, event.drift_id)
    assert found is not None and found.number == 1


def test_versions_are_immutable(store: SqlStore) -> None:
    with store() as uow:
        a = uow.adapters.get_or_create_adapter("el", BASE).adapter_id
        uow.adapters.create_version(a, new_version(metrics={"perplexity": 9.0}))
        uow.commit()
    statements = [
        "UPDATE adapter_versions SET metrics = '{\"perplexity\": 1}' WHERE adapter_id = :a",
        "UPDATE adapter_versions SET number = 5 WHERE adapter_id = :a",
        "DELETE FROM adapter_versions WHERE adapter_id = :a",
        "INSERT INTO adapter_versions (adapter_id, number, artifact_uri, artifact_sha256, sampler)"
        " VALUES (:a, 7, 'x', repeat('a', 64), 'random')",  # a number out of sequence
    ]
    for sql in statements:
        with store.engine.connect() as conn, pytest.raises(sqlalchemy.exc.DBAPIError):
            conn.execute(text(sql), {"a": a})
    with store() as uow:
        assert sql_helpers.reject_version(uow, a, 1) == 1  # candidate → rejected is allowed
        uow.commit()
        with pytest.raises(DataError, match="rejected"):
            uow.adapters.activate_version(a, 1)
    # candidate → retired is allowed since 0005 (compass adapters retire); rejected → retired not
    retire = "UPDATE adapter_versions SET status = 'retired' WHERE adapter_id = :a"
    with store.engine.connect() as conn, pytest.raises(sqlalchemy.exc.DBAPIError):
        conn.execute(text(retire), {"a": a})


def test_reference_distribution_comes_from_the_live_version(store: SqlStore) -> None:
    with store() as uow:
        assert uow.adapters.active_version("hu", BASE) is None
        a = uow.adapters.get_or_create_adapter("hu", BASE).adapter_id
        v = uow.adapters.create_version(a, new_version(reference_distribution={0: 0.4, 3: 0.6}))
        assert uow.adapters.active_version("hu", BASE) is None  # only a candidate
        uow.adapters.activate_version(a, v.number)
        live = uow.adapters.active_version("hu", BASE)
        assert live is not None and live.reference_distribution == {0: 0.4, 3: 0.6}
        assert v.adapter_name == f"hu-v1-{v.artifact_sha256[:8]}"


def test_repositories_take_canonical_language_codes(store: SqlStore) -> None:
    """Codes are normalised at the edge (events, records, CLI options), not again here."""
    with store() as uow:
        a = uow.adapters.get_or_create_adapter("pt-PT", BASE).adapter_id
        uow.adapters.activate_version(a, uow.adapters.create_version(a, new_version()).number)
        assert uow.adapters.active_version("pt-PT", BASE) is not None
        assert uow.adapters.active_version("pt_pt", BASE) is None
