"""Process faults downstream of the stream (issue 14, part 1): the outbox relay and the adapter
worker killed at their most delicate moments.

A fault point is a PostgreSQL trigger that sleeps while a row of ``fault_points`` names it: the
process under test then hangs inside the exact statement (marking outbox rows published;
inserting the adapter version), the test sees it there (the message on the topic;
``pg_stat_activity``) and SIGKILLs it. No code of the process is changed for the test; the
trigger lives in the test's own database and is gone with it.

- ``compass relay`` killed between publishing and marking: on restart it publishes the same
  ``message_id`` again, and the subscriber (:mod:`compass.kafka.subscribe`, which serve-sync
  uses) applies it once.
- the adapter worker killed mid-training, then again between writing the artifact and committing
  the version: one version for the drift event, and serving (which reads only committed, live
  versions: :func:`compass.serving.live.read_live_adapters`) never sees the orphan.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from compass.core.events import AdapterUpdated, DriftEvent
from compass.infra.net import free_port
from compass.kafka.broker import EmbeddedBroker
from compass.kafka.subscribe import Received, subscribe_adapter_updated
from compass.sql.unit_of_work import open_store
from tests.reliability.helpers import (
    COMPASS,
    REPO,
    Ledger,
    ManagedProcess,
    create_topics,
    wait_until,
)

GOLDEN = REPO / "tests" / "golden" / "adapter-updated" / "v1" / "first-version.json"
FAULT_SLEEP_S = 15


def install_fault_point(engine: Engine, name: str, table: str, timing: str) -> None:
    """A trigger ``<timing>`` on ``table`` that sleeps :data:`FAULT_SLEEP_S` while
    ``fault_points`` holds ``name`` (armed with :func:`arm`, disarmed with :func:`disarm`)."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS fault_points (name text PRIMARY KEY)"))
        connection.execute(
            text(
                f"""
                CREATE OR REPLACE FUNCTION fault_{name}() RETURNS trigger AS $$
                BEGIN
                  IF EXISTS (SELECT 1 FROM fault_points WHERE name = '{name}') THEN
                    PERFORM pg_sleep({FAULT_SLEEP_S});
                  END IF;
                  RETURN NEW;
                END $$ LANGUAGE plpgsql
                """
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER fault_{name} {timing} ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION fault_{name}()"
            )
        )


def arm(engine: Engine, name: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO fault_points VALUES (:n) ON CONFLICT DO NOTHING"), {"n": name}
        )


def disarm(engine: Engine, name: str) -> None:
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM fault_points WHERE name = :n"), {"n": name})


@pytest.fixture
def engine(fresh_database: str) -> Iterator[Engine]:
    e = create_engine(fresh_database)
    yield e
    e.dispose()


class Applier:
    """The subscriber's handler: applies an announcement (records it) and says how often each
    ``message_id`` was applied."""

    def __init__(self) -> None:
        self.applied: dict[str, int] = {}

    def __call__(self, received: Received[AdapterUpdated]) -> None:
        key = str(received.event.message_id)
        self.applied[key] = self.applied.get(key, 0) + 1


def _raw_message_ids(bootstrap: str, topic: str) -> list[str]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=3000, group_id=None,
    )  # fmt: skip
    try:
        return [json.loads(record.value)["message_id"] for record in consumer]
    finally:
        consumer.close()


def _published_at(engine: Engine, outbox_id: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT published_at FROM outbox WHERE id = :id"), {"id": outbox_id}
        ).scalar_one()


def test_relay_killed_between_publish_and_mark_resends_the_same_message_applied_once(
    private_broker: EmbeddedBroker, fresh_database: str, engine: Engine, tmp_path: Path
) -> None:
    prefix = f"rel-{uuid.uuid4().hex[:8]}"
    env = {
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": private_broker.bootstrap_servers,
        "COMPASS_DATABASE_URL": fresh_database,
        "COMPASS_DATA_DIR": str(tmp_path / "data"),
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_METRICS_PORT": str(free_port()),
    }
    settings = create_topics(private_broker.bootstrap_servers, env)
    topic = settings.topic_adapter_updated
    message_id = str(uuid.uuid4())
    payload = {**json.loads(GOLDEN.read_text()), "message_id": message_id}
    store = open_store(fresh_database)
    with store() as uow:
        outbox_id = uow.outbox.add_outbox(topic, "fr", payload)
        uow.commit()
    store.dispose()
    install_fault_point(engine, "outbox_mark", "outbox", "BEFORE UPDATE OF published_at")
    arm(engine, "outbox_mark")

    applier = Applier()
    stop = threading.Event()
    subscription = subscribe_adapter_updated(
        private_broker.bootstrap_servers, f"{prefix}-serving", topic=topic
    )
    subscriber = threading.Thread(
        target=lambda: subscription.run(applier, stop=stop), name="subscriber", daemon=True
    )
    subscriber.start()
    relays: list[ManagedProcess] = []
    try:
        relays.append(ManagedProcess([*COMPASS, "relay"], env, tmp_path / "relay-0.log").start())
        # published, then stuck marking it: the message is on the topic, the row still pending
        wait_until(lambda: applier.applied.get(message_id) == 1, 120, "the first publication")
        assert _published_at(engine, outbox_id) is None
        relays[0].kill()
        disarm(engine, "outbox_mark")
        restarted = time.monotonic()
        relays.append(ManagedProcess([*COMPASS, "relay"], env, tmp_path / "relay-1.log").start())
        wait_until(
            lambda: _published_at(engine, outbox_id) is not None, 120, "the row to be marked"
        )
        recovery = time.monotonic() - restarted
        wait_until(lambda: subscription.stats.duplicates >= 1, 60, "the second delivery")
        time.sleep(2.0)
    finally:
        stop.set()
        subscriber.join(timeout=30)
        subscription.close()
        for relay in relays:
            relay.stop()
    on_topic = _raw_message_ids(private_broker.bootstrap_servers, topic)
    assert on_topic == [message_id, message_id], on_topic  # the same message_id, sent twice
    assert applier.applied == {message_id: 1}  # applied once
    assert subscription.stats.duplicates == 1
    Ledger(
        fault="relay SIGKILL between publish and mark",
        sent=1, valid=1, malformed=0, counted=1, dead_lettered=0, duplicates=0, points=0,
        recovery_s=[round(recovery, 1)],
        notes="outbox row published twice with one message_id; the subscriber applied it once",
    ).record()  # fmt: skip


def _waiting_in(engine: Engine, statement: str) -> bool:
    """Is some backend asleep in the fault point while running ``statement``?"""
    with engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event = 'PgSleep' AND query ILIKE :q"
                ),
                {"q": f"%{statement}%"},
            ).scalar_one()
        )


def _versions(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [
            dict(r._mapping)
            for r in connection.execute(
                text("SELECT number, drift_id, status, artifact_uri FROM adapter_versions")
            )
        ]


def _job(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        return dict(
            connection.execute(text("SELECT status, attempts FROM training_jobs")).one()._mapping
        )


WORKER = [sys.executable, "-m", "tests.reliability.worker_process"]


def _worker_world(
    database_url: str, cache_dir: Path, tmp_path: Path
) -> tuple[DriftEvent, dict[str, str], Path]:
    """Seed :mod:`tests.reliability.worker_process`'s world in ``tmp_path/world``; return a drift
    event on it, the environment that runs a worker process on it, and the event's artifact
    folder."""
    from tests.reliability import worker_process as wp

    root = tmp_path / "world"
    map_version = wp.seed_world(database_url, root, cache_dir)
    drift = DriftEvent(
        drift_id=uuid.uuid4(), language=wp.LANGUAGE, window_start=wp.T0,
        window_end=wp.T0 + wp.WINDOW, statistic=0.2, threshold=0.05, n_events=60,
        n_sampled=60, semantic_map_version=map_version,
    )  # fmt: skip
    env = {
        "COMPASS_DATABASE_URL": database_url,
        "RELIABILITY_ROOT": str(root),
        "RELIABILITY_DRIFT": drift.model_dump_json(),
        "COMPASS_TEST_CACHE_DIR": str(cache_dir),
        "COMPASS_LOG_LEVEL": "INFO",
    }
    return drift, env, root / "adapters" / wp.LANGUAGE / str(drift.drift_id)


@pytest.mark.timeout(2400)
def test_worker_killed_mid_training_and_before_commit_leaves_one_version_and_no_orphan(
    fresh_database: str, engine: Engine, cache_dir: Path, tmp_path: Path
) -> None:
    import random

    from compass.serving.fetch import fetch_artifact
    from compass.serving.live import read_live_adapters
    from tests.reliability import worker_process as wp

    drift, env, artifact = _worker_world(fresh_database, cache_dir, tmp_path)
    install_fault_point(engine, "version_insert", "adapter_versions", "BEFORE INSERT")
    runs: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        runs.append(ManagedProcess(WORKER, env, tmp_path / f"worker-{len(runs)}.log").start())
        return runs[-1]

    try:
        # 1. killed mid-training
        first = start()
        wait_until(
            lambda: "training started" in first.log_tail() or not first.alive(), 600, "training"
        )
        assert first.alive(), first.log_tail()
        time.sleep(random.Random(14).uniform(0.5, 2.0))
        assert not (artifact / "adapter_model.safetensors").exists(), "training already ended"
        first.kill()
        assert _job(engine) == {"status": "running", "attempts": 1}
        # 2. killed between writing the artifact and committing the version
        arm(engine, "version_insert")
        time.sleep(wp.LEASE_S + 1.0)  # the first worker's lease expires
        second = start()
        wait_until(
            lambda: _waiting_in(engine, "INSERT INTO adapter_versions") or not second.alive(),
            600,
            "the second worker to write its version",
        )
        assert second.alive(), second.log_tail()
        assert (artifact / "adapter_model.safetensors").exists()  # the artifact is written
        second.kill()
        disarm(engine, "version_insert")
        # the orphan: a complete artifact folder that no committed row points at
        assert _versions(engine) == [] and read_live_adapters(fresh_database) == []
        # 3. the third worker takes the job over once the lease has expired and finishes it
        time.sleep(wp.LEASE_S + 1.0)
        restarted = time.monotonic()
        third = start()
        assert third.process is not None
        assert third.process.wait(timeout=900) == 0, third.log_tail()
        recovery = time.monotonic() - restarted
    finally:
        for run in runs:
            if run.alive():
                run.kill()
    assert "outcome promoted 1" in third.log_tail(), third.log_tail()
    versions = _versions(engine)
    assert len(versions) == 1 and versions[0]["drift_id"] == drift.drift_id  # one per drift
    assert _job(engine) == {"status": "succeeded", "attempts": 3}
    live = read_live_adapters(fresh_database)
    assert [(m.version, m.drift_id) for m in live] == [(1, drift.drift_id)]
    # what serving sees verifies against its manifest (the orphan's files were replaced)
    fetch_artifact(
        live[0].artifact_uri, live[0].manifest, tmp_path / "serving", live[0].adapter_name
    )
    with engine.connect() as connection:
        announced = connection.execute(text("SELECT count(*) FROM outbox")).scalar_one()
    assert announced == 1
    Ledger(
        fault="adapter worker SIGKILL mid-training, then between artifact and commit",
        sent=1, valid=1, malformed=0, counted=len(versions), dead_lettered=0, duplicates=0,
        points=0, recovery_s=[round(recovery, 1)],
        notes="3 claims of one job (lease 6 s); one version, one outbox row; no row for the "
        "orphan artifact, so serving never sees it",
    ).record()  # fmt: skip


@pytest.mark.timeout(1800)
def test_worker_stopped_by_sigterm_mid_training_gives_the_job_back_and_exits_at_once(
    fresh_database: str, engine: Engine, cache_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM during a long training: the worker stops after the step it is in, writes no
    artifact, version or outbox row, queues the job again (no lease to wait out) and exits 0
    within seconds; the next worker claims the job at once and promotes its version."""
    drift, env, artifact = _worker_world(fresh_database, cache_dir, tmp_path)
    # minutes of training on this machine: only a cooperative stop ends it within seconds
    first = ManagedProcess(
        WORKER, {**env, "RELIABILITY_TRAINING_STEPS": "2000"}, tmp_path / "worker-0.log"
    ).start()
    second = ManagedProcess(WORKER, env, tmp_path / "worker-1.log")
    try:
        wait_until(
            lambda: "training started" in first.log_tail() or not first.alive(), 600, "training"
        )
        assert first.alive(), first.log_tail()
        time.sleep(1.0)  # inside the step loop
        assert first.process is not None
        sent = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        code = first.process.wait(timeout=60)
        stop_s = time.monotonic() - sent
        assert code == 0, first.log_tail()
        assert "outcome stopped None worker stopping (after training step" in first.log_tail()
        assert stop_s < 15.0, f"the worker took {stop_s:.1f} s to stop"  # the demo's grace
        with engine.connect() as connection:
            job = connection.execute(
                text("SELECT status, attempts, lease_until, last_error FROM training_jobs")
            ).one()
            outbox = connection.execute(text("SELECT count(*) FROM outbox")).scalar_one()
        assert (job.status, job.attempts, job.lease_until) == ("queued", 0, None)  # not spent
        assert job.last_error.startswith("stopped: worker stopping (after training step")
        assert _versions(engine) == [] and outbox == 0
        assert not artifact.exists()
        # the next worker claims the given-back job at once (no lease to expire) and ends it
        restarted = time.monotonic()
        second.start()
        assert second.process is not None
        assert second.process.wait(timeout=900) == 0, second.log_tail()
        recovery = time.monotonic() - restarted
    finally:
        for run in (first, second):
            if run.alive():
                run.kill()
    assert "outcome promoted 1" in second.log_tail(), second.log_tail()
    assert _job(engine) == {"status": "succeeded", "attempts": 1}  # the stop spent none
    assert [v["drift_id"] for v in _versions(engine)] == [drift.drift_id]
    Ledger(
        fault="adapter worker SIGTERM mid-training (cooperative stop)",
        sent=1, valid=1, malformed=0, counted=1, dead_lettered=0, duplicates=0, points=0,
        recovery_s=[round(stop_s, 1), round(recovery, 1)],
        notes="stopped after the running step and exited 0 with nothing written; the job was "
        "queued again (its claim given back, no attempt spent) and the next worker promoted it",
    ).record()  # fmt: skip
