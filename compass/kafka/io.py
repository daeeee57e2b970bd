"""The event-publisher port (:class:`compass.ports.publisher.MessageProducer`) on Kafka,
through kafka-python, and the consumer the adapter worker reads drift events with; shared by the
stream's outbox relay, the worker and the demo."""

from __future__ import annotations

from typing import Any

from compass.ports.publisher import MessageProducer

__all__ = ["KafkaMessageProducer", "MessageProducer", "open_consumer"]


class KafkaMessageProducer:
    """kafka-python producer with acks from all in-sync replicas and bounded retries."""

    def __init__(self, bootstrap_servers: str) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers, acks="all", retries=5, linger_ms=5
        )
        self._pending: list[object] = []

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self._pending.append(self._producer.send(topic, key=key, value=value))

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every message sent since the last flush is acknowledged (raises if not)."""
        self._producer.flush(timeout=timeout_s)
        pending, self._pending = self._pending, []
        for future in pending:
            future.get(timeout=timeout_s)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._producer.close(timeout=5)


def open_consumer(
    bootstrap_servers: str,
    topic: str,
    group_id: str,
    *,
    session_timeout_ms: int = 10_000,
    max_poll_records: int = 1,
    max_poll_interval_ms: int = 3_600_000,
) -> Any:
    """A kafka-python consumer of ``topic`` in ``group_id`` that commits offsets only when told
    (``consumer.commit()``) and starts from the earliest offset for a new group. The poll
    interval defaults to an hour: training an adapter version can take many minutes."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(1000, session_timeout_ms // 3),
        max_poll_records=max_poll_records,
        max_poll_interval_ms=max_poll_interval_ms,
    )
