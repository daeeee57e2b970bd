"""The thin Kafka edge of the workers: a producer protocol and its kafka-python form."""

from __future__ import annotations

from typing import Protocol


class MessageProducer(Protocol):
    def send(self, topic: str, key: bytes, value: bytes) -> None: ...

    def flush(self, timeout_s: float = 30.0) -> None: ...

    def close(self) -> None: ...


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
