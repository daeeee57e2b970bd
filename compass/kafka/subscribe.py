"""Read ``drift-events`` and ``adapter-updated`` from your own service: decoded, de-duplicated
messages, each offset committed only after your handler returned.

::

    from compass.kafka.subscribe import subscribe_drift_events

    with subscribe_drift_events("broker:9092", group_id="drift-alerts") as drifts:
        drifts.run(lambda m: page_oncall(m.event.language, m.event.statistic), stop=stop)

Delivery is at least once (a crash between your handler and the commit re-delivers the message);
duplicates with the same id (``drift_id``, ``message_id``) are dropped within the last
``dedupe_window`` ids this process saw — make your handler idempotent for the rest. A message
that cannot be decoded, or carries a ``schema_version`` this code does not read, never reaches
your handler and never stops the loop: it becomes a
:class:`~compass.core.events.DeadLetter` (reason ``unsupported_schema_version``,
``invalid_json`` …) passed to ``on_dead_letter`` (default: a warning in the log), and its offset
is committed. Decoding follows the published contract (:func:`compass.contracts.read_event`):
unknown fields are ignored, accepted earlier versions are upgraded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
from pydantic import BaseModel

from compass.contracts import CONTRACTS, read_event
from compass.core.errors import InvalidEventError
from compass.core.events import AdapterUpdated, DeadLetter, DriftEvent, dead_letter_for

__all__ = [
    "Received",
    "Subscription",
    "SubscriptionStats",
    "subscribe_adapter_updated",
    "subscribe_drift_events",
]

log = structlog.get_logger(__name__)
MAX_MESSAGE_BYTES = 1_000_000
"""Largest value a subscription decodes (larger: dead-lettered ``oversized_payload``); COMPASS
messages are a few KB, the broker's default limit is 1 MiB."""

EventT = TypeVar("EventT", bound=BaseModel)


@dataclass(frozen=True)
class Received(Generic[EventT]):
    """One decoded message and where it was read from."""

    event: EventT
    key: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class SubscriptionStats:
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


def _log_dead_letter(letter: DeadLetter) -> None:
    log.warning(
        "subscribe.dead_lettered",
        topic=letter.source_topic,
        partition=letter.partition,
        offset=letter.offset,
        reason=letter.reason,
        detail=letter.detail[:300],
    )


class Subscription(Generic[EventT]):
    """A consumer of one COMPASS topic in consumer group ``group_id`` (see the module doc).

    ``consumer`` replaces the kafka-python consumer (tests); otherwise one is opened with
    auto-commit off, starting from the earliest offset for a new group."""

    def __init__(
        self,
        bootstrap_servers: str | None,
        topic: str,
        model: type[EventT],
        group_id: str,
        *,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
        dedupe_window: int = 100_000,
        poll_timeout_s: float = 0.5,
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
        consumer: Any = None,
    ) -> None:
        contract = next((c for c in CONTRACTS if c.model is model), None)
        if contract is None or not contract.id_field:
            raise ValueError(f"{model.__name__} is not a topic with message ids")
        self.topic = topic
        self.model = model
        self.stats = SubscriptionStats()
        self._id_field = contract.id_field
        self._on_dead_letter = on_dead_letter or _log_dead_letter
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._window = dedupe_window
        self._poll_ms = int(poll_timeout_s * 1000)
        if consumer is None:
            from compass.kafka.io import open_consumer

            if not bootstrap_servers:
                raise ValueError("bootstrap_servers is required")
            consumer = open_consumer(
                bootstrap_servers,
                topic,
                group_id,
                session_timeout_ms=session_timeout_ms,
                max_poll_records=500,  # kafka-python's default: handlers here are short
                max_poll_interval_ms=max_poll_interval_ms,
            )
        self._consumer = consumer

    # ---------------------------------------------------------------- the loop
    def messages(
        self,
        *,
        stop: threading.Event | None = None,
        max_messages: int | None = None,
        idle_timeout_s: float | None = None,
    ) -> Iterator[Received[EventT]]:
        """Yield decoded, new messages. A message's offset is committed when the next one is
        asked for (your loop body returned); breaking out of the loop leaves the last one
        uncommitted, so it is delivered again. Ends when ``stop`` is set, after
        ``max_messages`` handled, or after ``idle_timeout_s`` without any message once the
        consumer has partitions assigned."""
        last_seen: float | None = None  # the idle clock starts once partitions are assigned
        while not (stop is not None and stop.is_set()):
            if max_messages is not None and self.stats.handled >= max_messages:
                return
            batch = self._consumer.poll(timeout_ms=self._poll_ms)
            if not batch:
                if last_seen is None and self._consumer.assignment():
                    last_seen = time.monotonic()
                if (
                    idle_timeout_s is not None
                    and last_seen is not None
                    and time.monotonic() - last_seen > idle_timeout_s
                ):
                    return
                continue
            last_seen = time.monotonic()
            for records in batch.values():
                for record in records:
                    received = self._decode(record)
                    if received is not None:
                        yield received  # the caller's handler runs here
                        self._remember(received)
                        self.stats.handled += 1
                    self._commit(record)
                    if max_messages is not None and self.stats.handled >= max_messages:
                        return

    def run(
        self,
        handler: Callable[[Received[EventT]], None],
        *,
        stop: threading.Event | None = None,
        max_messages: int | None = None,
        idle_timeout_s: float | None = None,
    ) -> SubscriptionStats:
        """Call ``handler`` for each new message, committing its offset after it returns. An
        exception from ``handler`` propagates, its message uncommitted (delivered again)."""
        for received in self.messages(
            stop=stop, max_messages=max_messages, idle_timeout_s=idle_timeout_s
        ):
            handler(received)
        return self.stats

    # ---------------------------------------------------------------- steps
    def _decode(self, record: Any) -> Received[EventT] | None:
        try:
            event = read_event(record.value, self.model, self.topic, max_bytes=MAX_MESSAGE_BYTES)
        except InvalidEventError as exc:
            self._dead_letter(record, exc)
            return None
        except Exception as exc:  # a bug must not stop the subscriber either
            self._dead_letter(record, InvalidEventError("internal_error", repr(exc)[:500]))
            return None
        if str(getattr(event, self._id_field)) in self._seen:
            self.stats.duplicates += 1
            return None
        return Received(event, record.key, record.topic, record.partition, record.offset)

    def _dead_letter(self, record: Any, error: InvalidEventError) -> None:
        letter = dead_letter_for(
            record.value,
            error,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        self.stats.dead_lettered += 1
        reasons = self.stats.dead_letter_reasons
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
        self._on_dead_letter(letter)

    def _remember(self, received: Received[EventT]) -> None:
        self._seen[str(getattr(received.event, self._id_field))] = None
        while len(self._seen) > self._window:
            self._seen.popitem(last=False)

    def _commit(self, record: Any) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        position = TopicPartition(record.topic, record.partition)
        self._consumer.commit({position: OffsetAndMetadata(record.offset + 1, "", -1)})

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Subscription[EventT]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe_drift_events(
    bootstrap_servers: str, group_id: str, *, topic: str = "drift-events", **options: Any
) -> Subscription[DriftEvent]:
    """A :class:`Subscription` to drift events (duplicates dropped by ``drift_id``); ``options``
    are :class:`Subscription`'s keyword arguments."""
    return Subscription(bootstrap_servers, topic, DriftEvent, group_id, **options)


def subscribe_adapter_updated(
    bootstrap_servers: str, group_id: str, *, topic: str = "adapter-updated", **options: Any
) -> Subscription[AdapterUpdated]:
    """A :class:`Subscription` to adapter announcements (duplicates dropped by
    ``message_id``); ``options`` are :class:`Subscription`'s keyword arguments."""
    return Subscription(bootstrap_servers, topic, AdapterUpdated, group_id, **options)
