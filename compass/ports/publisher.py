"""The event-publisher port: what the outbox relay and the producers of the loop send through.

The implementation (:class:`compass.kafka.io.KafkaMessageProducer`) waits for acknowledgement
from all in-sync replicas in :meth:`MessageProducer.flush`; the relay marks outbox rows published
only after ``flush`` returned, so a message is delivered at least once.
"""

from __future__ import annotations

from typing import Protocol


class MessageProducer(Protocol):
    """Sends keyed byte messages to topics."""

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        """Queue one message (may return before the broker has it)."""
        ...

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every message sent since the last flush is acknowledged; raise if one
        was not within ``timeout_s`` seconds."""
        ...

    def close(self) -> None: ...
