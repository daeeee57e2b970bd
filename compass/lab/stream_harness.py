"""Run a real ``compass streams`` worker against a prepared topic and account for every message:
produce with positions, run until a condition holds, read a topic back. Used by the reliability
suites (tests/reliability/) and benchmarks/bench_bad_input.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PRODUCER_MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""The harness's producer accepts values up to 16 MiB (the Kafka client's default is 1 MiB),
so a 10 MB malformed value reaches the broker and the stream, which must dead-letter it."""


def stream_env(bootstrap: str, prefix: str, database_url: str, **extra: str) -> dict[str, str]:
    """``COMPASS_*`` variables for a worker on topics ``<prefix>-prompt-events`` etc."""
    env = {
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": bootstrap,
        "COMPASS_DATABASE_URL": database_url,
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_STREAM_APP_ID": f"{prefix}-streams",
        "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
        "COMPASS_STREAM_SAMPLE_RATE": "1.0",
        "COMPASS_STREAM_WINDOW_SECONDS": "600",
        "COMPASS_STREAM_ALLOWED_LATENESS_S": "5",
        "COMPASS_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def settings_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The same variables as ``Settings`` keyword arguments."""
    return {k[len("COMPASS_") :].lower(): v for k, v in env.items() if k.startswith("COMPASS_")}


def produce(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """Send ``(key, value)`` pairs in order (acks=all); returns each one's (partition, offset)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        request_timeout_ms=120_000,
        delivery_timeout_ms=600_000,  # a 10 MB value takes the in-memory broker a while
    )
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in messages]
        producer.flush(600)
        records = [f.get(30) for f in futures]
        return [(r.partition, r.offset) for r in records]
    finally:
        producer.close()


def read_topic(bootstrap: str, topic: str, idle_ms: int = 5000) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of ``topic`` from the beginning (stops after ``idle_ms`` idle)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
        max_partition_fetch_bytes=PRODUCER_MAX_REQUEST_BYTES,
        fetch_max_bytes=4 * PRODUCER_MAX_REQUEST_BYTES,
    )
    try:
        return [(m.key, m.value) for m in consumer]
    finally:
        consumer.close()


@dataclass(frozen=True)
class WorkerRun:
    """A finished worker: whether ``done()`` held before the deadline, its exit code after
    SIGTERM (None: killed), the log, and the seconds from start until ``done()`` held."""

    completed: bool
    returncode: int | None
    log: str
    seconds: float


def run_worker(
    command: list[str],
    env: Mapping[str, str],
    data_dir: Path,
    done: Callable[[], bool],
    *,
    timeout_s: float,
    cwd: Path | None = None,
    unset: Iterable[str] = (),
) -> WorkerRun:
    """Start ``command`` with ``env`` (added to this process's, less ``unset``), poll
    ``done()`` every 0.5 s, then SIGTERM it (SIGKILL after 20 s) and return what happened."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "worker.log"
    started = time.monotonic()
    completed = False
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            ["timeout", "-k", "5", str(int(timeout_s) + 30), *command],
            cwd=cwd,
            env={
                **{k: v for k, v in os.environ.items() if k not in set(unset)},
                **env,
                "COMPASS_DATA_DIR": str(data_dir),
            },
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            while time.monotonic() - started < timeout_s and process.poll() is None:
                if done():
                    completed = True
                    break
                time.sleep(0.5)
            seconds = time.monotonic() - started
            time.sleep(2.0)  # the batch in hand finishes; offsets get committed
            process.send_signal(signal.SIGTERM)
            try:
                returncode: int | None = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                returncode = None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return WorkerRun(completed, returncode, log_path.read_text(errors="replace"), seconds)
