"""Outbox relay: publish rows of the ``outbox`` table to Kafka, at least once.

The state change and its announcement were committed together (one transaction); this relay
reads unpublished rows (locked with ``SKIP LOCKED`` so two relays never send the same batch at
once), sends them, waits for the broker's acknowledgement, and only then marks them published.
A crash between send and mark re-sends the batch: consumers drop duplicates by ``message_id``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import structlog

from compass import metrics
from compass.ports.publisher import MessageProducer
from compass.ports.storage import UnitOfWork

log = structlog.get_logger(__name__)


class OutboxRelay:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        producer: MessageProducer,
        batch_size: int = 100,
    ) -> None:
        self._uow_factory = uow_factory
        self._producer = producer
        self._batch_size = batch_size

    def publish_pending(self) -> int:
        """Publish one batch; return how many messages went out."""
        with self._uow_factory() as uow:
            messages = uow.outbox.unpublished_outbox(self._batch_size)
            if not messages:
                return 0
            for message in messages:
                value = json.dumps(message.payload, sort_keys=True, default=str).encode("utf-8")
                self._producer.send(message.topic, message.key.encode("utf-8"), value)
            self._producer.flush()
            uow.outbox.mark_published([m.message_id for m in messages])
            uow.commit()
        metrics.OUTBOX_PUBLISHED.inc(len(messages))
        log.info("outbox.published", count=len(messages))
        return len(messages)

    def drain(self) -> int:
        """Publish until nothing is pending."""
        total = 0
        while (sent := self.publish_pending()) > 0:
            total += sent
        return total

    def run(
        self,
        stop: threading.Event,
        idle_seconds: float = 1.0,
        on_round: Callable[[], None] | None = None,
    ) -> None:
        """Publish until ``stop`` is set; ``on_round`` is called before each round (a
        liveness heartbeat)."""
        while not stop.is_set():
            if on_round is not None:
                on_round()
            try:
                if self.publish_pending() == 0:
                    stop.wait(idle_seconds)
            except Exception:  # keep relaying after a broker or database hiccup
                metrics.OUTBOX_FAILURES.inc()
                log.exception("outbox.publish_failed")
                stop.wait(idle_seconds)
