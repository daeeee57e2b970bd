"""The embedded infrastructure on real components: broker, PostgreSQL, Qdrant Edge."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from sqlalchemy import text

from compass.config import Settings
from compass.core.events import DeadLetter, decode, decode_prompt_event, encode, event_point_id
from compass.kafka.broker import TopicSpec, ensure_topics, topic_specs
from compass.qdrant.store import QdrantEdgeStore, VectorPoint
from compass.sql.server import check_connection, make_db_engine

pytestmark = pytest.mark.integration


def _consumer(bootstrap: str, group: str, topic: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        consumer_timeout_ms=8000,
    )


def test_topics_are_created_with_configured_partitions(broker_bootstrap: str) -> None:
    settings = Settings(prompt_events_partitions=5, topic_prompt_events=f"pe-{uuid.uuid4().hex}",
                        topic_prompt_events_dlq=f"dlq-{uuid.uuid4().hex}")  # fmt: skip
    created = ensure_topics(broker_bootstrap, topic_specs(settings))
    assert settings.topic_prompt_events in created
    admin = KafkaAdminClient(bootstrap_servers=broker_bootstrap)
    described = admin.describe_topics([settings.topic_prompt_events])
    admin.close()
    assert len(described[0]["partitions"]) == 5
    # a second call is a no-op
    assert settings.topic_prompt_events not in ensure_topics(
        broker_bootstrap, topic_specs(settings)
    )


def test_produce_consume_commit_resume(broker_bootstrap: str) -> None:
    topic = f"resume-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker_bootstrap, [TopicSpec(topic, 1)])
    producer = KafkaProducer(bootstrap_servers=broker_bootstrap)
    for i in range(10):
        producer.send(topic, key=b"fr", value=f"m{i}".encode())
    producer.flush()

    first = _consumer(broker_bootstrap, "g-resume", topic)
    seen: list[bytes] = []
    for message in first:
        seen.append(message.value)
        if len(seen) == 4:
            break
    first.commit()
    first.close()
    assert seen == [f"m{i}".encode() for i in range(4)]

    resumed = _consumer(broker_bootstrap, "g-resume", topic)
    rest = [message.value for message in resumed]
    resumed.close()
    assert rest == [f"m{i}".encode() for i in range(4, 10)]
    producer.close()


def test_keyed_messages_stay_on_one_partition(broker_bootstrap: str) -> None:
    topic = f"keyed-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker_bootstrap, [TopicSpec(topic, 3)])
    producer = KafkaProducer(bootstrap_servers=broker_bootstrap)
    partitions = {producer.send(topic, key=b"sw", value=b"x").get(10).partition for _ in range(20)}
    producer.close()
    assert len(partitions) == 1


def test_malformed_message_becomes_dead_letter_record(broker_bootstrap: str) -> None:
    source, dlq = f"src-{uuid.uuid4().hex[:8]}", f"dlq-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker_bootstrap, [TopicSpec(source, 1), TopicSpec(dlq, 1)])
    good = json.dumps(
        {"schema_version": 1, "event_id": "e1", "occurred_at": "2026-11-28T06:00:00Z",
         "language": "de", "text": "Hallo"}
    ).encode()  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=broker_bootstrap)
    for value in (b"{not json", good, b"\xff\xfe\xfd"):
        producer.send(source, value=value)
    producer.flush()

    consumer = _consumer(broker_bootstrap, "g-dlq", source)
    valid = 0
    for message in consumer:
        result = decode_prompt_event(
            message.value, source_topic=source, partition=message.partition, offset=message.offset
        )
        if isinstance(result, DeadLetter):
            producer.send(dlq, key=message.key, value=encode(result))
        else:
            valid += 1
        if message.offset == 2:
            break
    producer.flush()
    consumer.close()

    letters = [decode(m.value, DeadLetter) for m in _consumer(broker_bootstrap, "g-dlq-r", dlq)]
    producer.close()
    assert valid == 1
    assert [(d.reason, d.offset) for d in letters] == [("invalid_json", 0), ("invalid_utf8", 2)]
    assert letters[1].raw == b"\xff\xfe\xfd"


def test_postgres_trivial_transaction(database_url: str) -> None:
    assert check_connection(database_url)
    engine = make_db_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id int primary key, note text)"))
        conn.execute(text("INSERT INTO t VALUES (1, 'kept')"))
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (2, 'rolled back')"))
        raise RuntimeError("boom")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, note FROM t ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "kept")]


def test_vector_upsert_is_idempotent_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "qdrant"
    rng = np.random.default_rng(0)
    store = QdrantEdgeStore(path, dim=384)
    vector = rng.normal(size=384).astype(np.float32)
    point = VectorPoint(event_point_id("evt-42"), vector, {"language": "ja", "cluster": 3})
    store.upsert([point])
    store.upsert([point])
    assert store.count() == 1
    hit = store.search(vector, limit=1)[0]
    assert hit.id == event_point_id("evt-42") and hit.payload["cluster"] == 3
    store.close()

    reopened = QdrantEdgeStore(path, dim=384)
    assert reopened.count() == 1
    assert reopened.count({"language": "ja"}) == 1
    assert reopened.count({"language": "fr"}) == 0
    [stored] = reopened.retrieve([event_point_id("evt-42")], with_vectors=True)
    assert stored.vector is not None
    cosine = float(stored.vector @ vector / np.linalg.norm(vector) / np.linalg.norm(stored.vector))
    assert cosine == pytest.approx(1.0, abs=1e-5)
    reopened.close()


def test_wrong_dimension_is_rejected(vector_store: QdrantEdgeStore) -> None:
    from compass.core.errors import InfraError

    with pytest.raises(InfraError):
        vector_store.upsert([VectorPoint(uuid.uuid4(), np.zeros(3, dtype=np.float32))])
