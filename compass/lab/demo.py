"""The main job: the whole COMPASS-ECDA loop once, on the embedded services.

1. Start (or reuse) the broker, PostgreSQL and Qdrant Edge; migrate the schema.
2. Build a multilingual auxiliary pool from real text (gettext catalogs on this machine: one
   catalog stands in for one topic), embed it with the multilingual embedder, fit the semantic
   map and make it the active one.
3. Start the stream app (``compass streams``, a Faust worker) as its own process.
4. Produce prompt events: French, German and Spanish usage over twenty minutes of event time,
   French switching topics halfway, plus malformed messages.
5. The stream app embeds, counts, dead-letters the bad messages and detects the French drift.
6. An adapter worker consumes the drift event, COMPASS-samples auxiliary data for the clusters
   French usage moved to, trains the French LoRA adapter, evaluates it against the live one,
   records the version and its outbox row in one transaction and publishes ``adapter-updated``.
7. Print what happened, from the database and the topics.

Every run uses fresh event ids and event-time windows (and its own consumer groups), so a second
run against the same services shows the loop again instead of de-duplicating everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from compass.config import Settings
from compass.core.errors import CompassError

log = structlog.get_logger(__name__)

AUX_LANGUAGES = ("de", "es", "it", "pt", "nl", "pl", "sv")
STREAM_LANGUAGES = {"fr": 600, "de": 300, "es": 300}


@dataclass
class DemoReport:
    run_id: str
    events_sent: int
    malformed_sent: int
    counted: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    drift_events: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    adapter_updated: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def demo_settings(base: Settings, run_id: str) -> Settings:
    """Short event-time windows so twenty minutes of synthetic usage make several windows.

    The demo replays twenty minutes of usage in a few seconds, far above what the CPU embedder
    takes; adaptive load shedding would (correctly) embed only a sample and leave the drift
    test with little power, so every event is embedded here unless the caller forces a rate.
    """
    return base.model_copy(
        update={
            "stream_app_id": f"compass-demo-{run_id}",
            "stream_window_seconds": 60,
            "stream_allowed_lateness_s": 5,
            "stream_session_timeout_s": 6.0,
            "drift_min_events": 20,
            "drift_reference_min_events": 60,
            "drift_false_alarm_rate": 0.001,
            "stream_embedding_cache": Path(base.data_dir) / "cache" / "embeddings.sqlite",
            "stream_sample_rate": base.stream_sample_rate or 1.0,
        }
    )


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPASS_")}
    env.update(settings.as_environment())
    return env


def build_demo_pool(settings: Settings) -> int:
    """Embed the auxiliary pool (cached after the first run) and activate its semantic map."""
    from compass.bootstrap import (
        embedding_cache_path,
        open_embedder,
        open_unit_of_work,
        open_vector_store,
    )
    from compass.corpora import load_gettext
    from compass.corpora.pool import build_pool, pools_dir
    from compass.lab.scenario import SHIFTED_TOPICS, STABLE_TOPICS

    records = load_gettext(
        list(AUX_LANGUAGES), domains=[*STABLE_TOPICS, *SHIFTED_TOPICS], min_chars=12
    )
    by_key: dict[tuple[str, str | None], int] = {}
    kept = []
    for record in records:  # at most 30 texts per (language, topic): a small, balanced pool
        key = (record.language, record.topic)
        if by_key.get(key, 0) < 30 and len(record.text) <= 200:
            by_key[key] = by_key.get(key, 0) + 1
            kept.append(record)
    embedder = open_embedder(settings, cache=embedding_cache_path(settings))
    store = open_vector_store(settings, embedder, collection="pool_demo")
    try:
        result = build_pool(
            kept, embedder, pools_dir(settings.data_dir) / "demo", store=store, k=12, seed=0
        )
    finally:
        store.close()
    from compass.corpora.pool import load_snapshot

    snapshot = load_snapshot(pools_dir(settings.data_dir) / "demo")
    assert settings.database_url is not None
    with open_unit_of_work(settings, pool_size=1) as db, db() as uow:
        stored = uow.semantic_maps.save_semantic_map(snapshot.semantic_map, activate=True)
        uow.commit()
    log.info("demo.pool_ready", items=len(kept), k=result.k, map_version=stored.version)
    return stored.version


def _fresh_event_time(settings: Settings) -> datetime:
    """Where this run's event time starts: an hour ago, or after every window counted so far
    (earlier demo runs), so that each run's windows and counts are its own."""
    from sqlalchemy import text

    from compass.sql.server import make_db_engine

    assert settings.database_url is not None
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    engine = make_db_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            last = conn.execute(text("SELECT max(window_start) FROM usage_counts")).scalar()
    finally:
        engine.dispose()
    if last is not None and last + timedelta(hours=1) > start:
        start = (last + timedelta(hours=1)).replace(second=0, microsecond=0)
    return start


def _start_streams(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "compass.cli", "streams"],
        env=_env(settings),
        stdout=handle,
        stderr=handle,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _produce(settings: Settings, run_start: datetime, seed: int) -> tuple[int, int, datetime]:
    from compass.bootstrap import open_publisher
    from compass.kafka.broker import ensure_topics, topic_specs
    from compass.lab.scenario import Scenario, build_stream, interleave, malformed_messages

    assert settings.broker_bootstrap_servers is not None
    ensure_topics(settings.broker_bootstrap_servers, topic_specs(settings))
    scenario = Scenario(
        events=dict(STREAM_LANGUAGES), start=run_start, shift={"fr": 0.5}, per_topic=30, seed=seed
    )
    valid = build_stream(scenario)
    bad = malformed_messages(14, at=run_start, max_text_chars=settings.max_text_chars)
    producer = open_publisher(settings)
    try:
        for message in interleave(valid, bad, seed=seed):
            producer.send(settings.topic_prompt_events, message.key, message.value)
        producer.flush()
    finally:
        producer.close()
    return len(valid), len(bad), run_start + scenario.duration * 0.5


def _wait_for_stream(
    settings: Settings,
    since: datetime,
    expected: int,
    timeout_s: float,
    streams: subprocess.Popen[bytes],
) -> uuid.UUID:
    """Wait until the French drift is recorded and every valid event is counted (or counting
    has stalled for a minute after the drift); return the drift id."""
    from sqlalchemy import text

    from compass.sql.server import make_db_engine

    assert settings.database_url is not None
    engine = make_db_engine(settings.database_url)
    deadline = time.monotonic() + timeout_s
    drift_id: uuid.UUID | None = None
    counted, last_progress = -1, time.monotonic()
    params = {"since": since, "until": since + timedelta(hours=1)}
    try:
        while time.monotonic() < deadline:
            if streams.poll() is not None:
                raise CompassError(
                    f"the stream app exited with code {streams.returncode}; see its log"
                )
            with engine.connect() as conn:
                found = conn.execute(
                    text(
                        "SELECT drift_id FROM drift_events WHERE language = 'fr' "
                        "AND window_start >= :since AND window_start < :until "
                        "ORDER BY detected_at LIMIT 1"
                    ),
                    params,
                ).scalar_one_or_none()
                total = conn.execute(
                    text(
                        "SELECT COALESCE(SUM(total_count), 0) FROM usage_counts "
                        "WHERE window_start >= :since AND window_start < :until"
                    ),
                    params,
                ).scalar_one()
            if found is not None:
                drift_id = uuid.UUID(str(found))
            if int(total) != counted:
                counted, last_progress = int(total), time.monotonic()
            stalled = time.monotonic() - last_progress > 60
            if drift_id is not None and (counted >= expected or stalled):
                return drift_id
            time.sleep(2.0)
    finally:
        engine.dispose()
    raise CompassError(f"no French drift detected within {timeout_s:.0f}s; see the stream log")


def _run_worker(settings: Settings, drift_id: uuid.UUID, steps: int, budget: int) -> Any:
    from compass.lm.training.config import AdapterTrainingConfig
    from workers.runner import run_worker

    outcomes = run_worker(
        settings,
        pool_name="demo",
        stop=threading.Event(),
        until=lambda o: o.drift_id == drift_id,
        group_id=f"{settings.stream_app_id}-worker",
        budget=budget,
        training=AdapterTrainingConfig(steps=steps, batch_size=8, max_length=48),
        eval_texts=48,
    )
    return next(o for o in outcomes if o.drift_id == drift_id)


def _collect(report: DemoReport, settings: Settings, since: datetime, started: datetime) -> None:
    from kafka import KafkaConsumer
    from sqlalchemy import text

    from compass.sql.server import make_db_engine

    assert settings.database_url is not None
    engine = make_db_engine(settings.database_url)
    window = {"since": since, "until": since + timedelta(hours=1)}
    with engine.connect() as conn:
        for language, total in conn.execute(
            text(
                "SELECT language, SUM(total_count)::bigint FROM usage_counts "
                "WHERE window_start >= :since AND window_start < :until GROUP BY language "
                "ORDER BY language"
            ),
            window,
        ):
            report.counted[language] = int(total)
        for reason, count in conn.execute(
            text(
                "SELECT reason, COUNT(*) FROM dead_letters WHERE received_at >= :started "
                "AND source = :topic GROUP BY reason ORDER BY reason"
            ),
            {"topic": settings.topic_prompt_events, "started": started},
        ):
            report.dead_letters[reason] = int(count)
        report.drift_events = [
            dict(row._mapping)
            for row in conn.execute(
                text(
                    "SELECT language, window_start, window_end, round(statistic::numeric, 4) AS "
                    "statistic, round(threshold::numeric, 4) AS threshold, n_events "
                    "FROM drift_events WHERE window_start >= :since AND window_start < :until "
                    "ORDER BY detected_at"
                ),
                window,
            )
        ]
        report.versions = [
            dict(row._mapping)
            for row in conn.execute(
                text(
                    "SELECT language, number, status, sampler, metrics->>'live_new_loss' AS "
                    "live_new_loss, metrics->>'candidate_new_loss' AS candidate_new_loss, "
                    "metrics->>'live_old_loss' AS live_old_loss, metrics->>'candidate_old_loss' "
                    "AS candidate_old_loss, notes FROM adapter_versions v JOIN drift_events d "
                    "USING (drift_id) WHERE d.window_start >= :since AND d.window_start < :until "
                    "ORDER BY number"
                ),
                window,
            )
        ]
    engine.dispose()
    reader = KafkaConsumer(
        settings.topic_adapter_updated,
        bootstrap_servers=settings.broker_bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    report.adapter_updated = [json.loads(message.value) for message in reader]
    reader.close()


def run_demo(base: Settings, *, steps: int = 16, budget: int = 64, timeout_s: float = 900) -> Any:
    """Run the loop once; return a :class:`DemoReport` (and the worker outcome in it)."""
    from compass.bootstrap import prepare_services

    run_id = uuid.uuid4().hex[:8]
    started = datetime.now(UTC)
    clock = time.perf_counter()
    settings = prepare_services(demo_settings(base, run_id))
    timings = {"services_s": time.perf_counter() - clock}

    clock = time.perf_counter()
    build_demo_pool(settings)
    timings["pool_s"] = time.perf_counter() - clock

    run_start = _fresh_event_time(settings)
    streams_log = Path(settings.data_dir) / "logs" / f"streams-{run_id}.log"
    streams = _start_streams(settings, streams_log)
    try:
        clock = time.perf_counter()
        sent, bad, shift_at = _produce(settings, run_start, seed=int(run_id, 16) % 10_000)
        drift_id = _wait_for_stream(settings, run_start, sent, timeout_s, streams)
        timings["stream_to_drift_s"] = time.perf_counter() - clock
    finally:
        _stop(streams)
    clock = time.perf_counter()
    outcome = _run_worker(settings, drift_id, steps, budget)
    timings["worker_s"] = time.perf_counter() - clock

    report = DemoReport(run_id=run_id, events_sent=sent, malformed_sent=bad, timings=timings)
    _collect(report, settings, run_start, started)
    report.adapter_updated = [
        p for p in report.adapter_updated if p.get("drift_id") == str(drift_id)
    ]
    log.info("demo.done", run_id=run_id, shift_at=shift_at.isoformat(), outcome=outcome.status)
    return report, outcome, streams_log
