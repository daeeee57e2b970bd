"""The producer client for usage events (``compass.client``): hard to misuse, bounded, observable.

::

    from compass.client import UsageEventProducer

    with UsageEventProducer("broker:9092") as producer:
        result = producer.send("Comment changer la disposition du clavier ?", "fr")
        if not result.accepted:
            log.warning("usage event not sent", reason=result.reason)
    # leaving the block flushes (bounded by flush_timeout_s) and closes

What it does for each event: fills ``event_id`` (a random UUID) and ``occurred_at`` (now, UTC)
when missing, validates with the very decoder the stream runs
(:func:`compass.core.events.parse_prompt_event`: canonical language tag, non-blank text, size and
clock limits), keys the message by the canonical language (one language stays on one partition)
and hands it to kafka-python, which batches (``linger_ms``, ``batch_size``) and retries.

Bounds on the caller's path: :meth:`UsageEventProducer.send` never waits longer than
``max_block_s`` (only a missing topic metadata can make kafka-python wait at all) and never holds
more than ``max_in_flight`` unacknowledged events: past that, the event is dropped, counted and
reported (``reason="buffer_full"``) instead of blocking or growing memory. Acknowledgements are
collected in send order as the caller sends, and by :meth:`UsageEventProducer.stats`,
:meth:`~UsageEventProducer.flush` and :meth:`~UsageEventProducer.close`: each failed delivery
(after kafka-python's retries, within ``delivery_timeout_s``) is kept (the most recent
``keep_failures``) with its event id and error, counted, and passed to ``on_failure`` on the
caller's thread.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from compass.core.errors import InvalidEventError
from compass.core.events import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_TEXT_CHARS,
    PromptEvent,
    encode,
    parse_prompt_event,
    utc_now,
)

__all__ = [
    "DeliveryFailure",
    "ProducerStats",
    "SendResult",
    "UsageEventProducer",
    "prepare_event",
]


class SendResult(NamedTuple):
    """What :meth:`UsageEventProducer.send` did with one event, at once (delivery comes later).

    ``accepted``: handed to the producer for delivery. Otherwise ``reason`` is a dead-letter
    reason code of the stream (``invalid_text``, ``unknown_language``, ``missing_field`` …: the
    event is invalid and was never sent), ``buffer_full`` (``max_in_flight`` events await
    acknowledgement), ``broker_unavailable`` (the producer could not take it within
    ``max_block_s``) or ``closed``."""

    accepted: bool
    event_id: str | None
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class DeliveryFailure:
    """An accepted event the broker did not acknowledge (after kafka-python's retries)."""

    event_id: str
    language: str
    error: str


@dataclass(frozen=True)
class ProducerStats:
    """Counts since the producer was opened. ``accepted = delivered + failed + in_flight``;
    ``rejected`` events were invalid, ``dropped`` ones valid but refused to stay within bounds."""

    accepted: int
    delivered: int
    failed: int
    in_flight: int
    rejected: int
    dropped: int


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_FIELDS = frozenset(PromptEvent.model_fields)


def prepare_event(
    event: PromptEvent | Mapping[str, Any],
    *,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> tuple[PromptEvent, bytes]:
    """A complete, validated event and its message value, from an event or a mapping of its
    fields (``text`` and ``language`` required; ``event_id``, ``occurred_at`` and
    ``schema_version`` filled when missing; ``occurred_at`` a ``datetime`` or RFC 3339 string).

    Raises :class:`InvalidEventError` with the stream's reason code when the stream would
    dead-letter it. The common shape (known fields, no ``metadata``) is checked by the event
    model and the stream's limits directly; anything else, and anything that fails, goes through
    the stream's decoder (:func:`compass.core.events.parse_prompt_event`) itself, which has the
    last word and names the reason."""
    if isinstance(event, PromptEvent):
        fields: dict[str, Any] = event.model_dump()
    elif isinstance(event, Mapping):
        fields = dict(event)
    else:
        raise InvalidEventError("not_an_object", f"expected a mapping, got {type(event).__name__}")
    if fields.get("event_id") is None:
        fields["event_id"] = str(uuid.uuid4())
    if fields.get("occurred_at") is None:
        fields["occurred_at"] = utc_now()
    fields.setdefault("schema_version", 1)
    parsed = _fast_path(fields, max_text_chars)
    if parsed is None:
        try:
            raw = json.dumps(fields, default=_json_default, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidEventError("invalid_field", str(exc)[:200], stage="encode") from None
        parsed = parse_prompt_event(
            raw, max_text_chars=max_text_chars, max_event_bytes=max_event_bytes
        )
    value = encode(parsed)
    if len(value) > max_event_bytes:
        raise InvalidEventError(
            "oversized_payload", f"{len(value)} bytes > limit {max_event_bytes}", "decode"
        )
    return parsed, value


def _fast_path(fields: dict[str, Any], max_text_chars: int) -> PromptEvent | None:
    """The event, if it is plainly valid; ``None`` sends it to the stream's decoder."""
    if fields.get("metadata") is not None or not _FIELDS.issuperset(fields):
        return None
    if type(fields["schema_version"]) is not int:
        return None
    try:
        event = PromptEvent.model_validate(fields)
    except ValidationError:
        return None
    if len(event.text) > max_text_chars:
        return None
    if event.occurred_at.timestamp() > time.time() + DEFAULT_MAX_CLOCK_SKEW_S:
        return None
    return event


class UsageEventProducer:
    """Sends usage events to ``prompt-events``; thread-safe; see the module docstring.

    ``producer`` replaces the kafka-python producer (tests); otherwise one is opened on
    ``bootstrap_servers`` and the topic's metadata fetched within ``connect_timeout_s``
    (:class:`kafka.errors.KafkaError` if the broker cannot be reached)."""

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        topic: str = "prompt-events",
        max_in_flight: int = 10_000,
        max_block_s: float = 0.1,
        delivery_timeout_s: float = 30.0,
        linger_ms: int = 10,
        batch_size: int = 256 * 1024,
        acks: int | str = "all",
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        connect_timeout_s: float = 15.0,
        on_failure: Callable[[DeliveryFailure], None] | None = None,
        keep_failures: int = 1000,
        producer: Any = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.topic = topic
        self.max_in_flight = max_in_flight
        self._limits = {"max_text_chars": max_text_chars, "max_event_bytes": max_event_bytes}
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._accepted = self._delivered = self._failed = 0
        self._pending: deque[tuple[Any, str, str]] = deque()  # (future, event id, language)
        self._unreported: deque[DeliveryFailure] = deque()
        self._reserved = 0  # sends under way outside the lock
        self._rejected = self._dropped = 0
        self._failures: deque[DeliveryFailure] = deque(maxlen=keep_failures)
        self._closed = False
        if producer is None:
            if not bootstrap_servers:
                raise ValueError("bootstrap_servers is required")
            producer = self._open(
                bootstrap_servers,
                max_block_s=max_block_s,
                delivery_timeout_s=delivery_timeout_s,
                linger_ms=linger_ms,
                batch_size=batch_size,
                acks=acks,
                connect_timeout_s=connect_timeout_s,
            )
        self._producer = producer

    def _open(
        self,
        bootstrap_servers: str,
        *,
        max_block_s: float,
        delivery_timeout_s: float,
        linger_ms: int,
        batch_size: int,
        acks: int | str,
        connect_timeout_s: float,
    ) -> Any:
        from kafka import KafkaProducer
        from kafka.errors import KafkaTimeoutError

        request_timeout_ms = max(1000, int(delivery_timeout_s * 1000) - linger_ms - 100)
        producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks=acks,
            linger_ms=linger_ms,
            batch_size=batch_size,
            max_block_ms=max(1, int(max_block_s * 1000)),
            delivery_timeout_ms=int(delivery_timeout_s * 1000),
            request_timeout_ms=min(30_000, request_timeout_ms),
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
        )
        deadline = time.monotonic() + connect_timeout_s
        while True:  # fetch the topic's metadata now, so send() has nothing to wait for
            try:
                producer.partitions_for(self.topic)
                return producer
            except KafkaTimeoutError:
                if time.monotonic() > deadline:
                    producer.close(timeout=1)
                    raise

    # ---------------------------------------------------------------- sending
    def send(
        self,
        text: str,
        language: str,
        *,
        event_id: str | None = None,
        occurred_at: datetime | str | None = None,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SendResult:
        """Validate and send one usage event; returns at once (see :class:`SendResult`)."""
        fields: dict[str, Any] = {"text": text, "language": language, "event_id": event_id}
        fields["occurred_at"] = occurred_at
        if source is not None:
            fields["source"] = source
        if metadata is not None:
            fields["metadata"] = dict(metadata)
        return self.send_event(fields)

    def send_event(self, event: PromptEvent | Mapping[str, Any]) -> SendResult:
        """Like :meth:`send`, for a :class:`PromptEvent` or a mapping of its JSON fields."""
        event_id = _event_id_of(event)
        try:
            parsed, value = prepare_event(event, **self._limits)
        except InvalidEventError as exc:
            with self._lock:
                self._rejected += 1
            return SendResult(False, event_id, exc.reason, exc.detail)
        return self._send(parsed, value)

    def send_many(self, events: Iterable[PromptEvent | Mapping[str, Any]]) -> list[SendResult]:
        """:meth:`send_event` for each event, in order."""
        return [self.send_event(event) for event in events]

    def _send(self, event: PromptEvent, value: bytes) -> SendResult:
        with self._lock:
            if self._closed:
                return SendResult(False, event.event_id, "closed", "the producer is closed")
            if len(self._pending) + self._reserved >= self.max_in_flight:
                self._reap()
                if len(self._pending) + self._reserved >= self.max_in_flight:
                    self._dropped += 1
                    return SendResult(
                        False,
                        event.event_id,
                        "buffer_full",
                        f"{self.max_in_flight} events await acknowledgement",
                    )
            self._reserved += 1
        try:  # outside the lock: other threads never wait for this send's max_block_s
            future = self._producer.send(self.topic, key=event.language.encode(), value=value)
        except Exception as exc:  # metadata timeout, closed producer, oversized request …
            with self._lock:
                self._reserved -= 1
                self._dropped += 1
            return SendResult(False, event.event_id, "broker_unavailable", repr(exc)[:300])
        with self._lock:
            self._reserved -= 1
            self._accepted += 1
            self._pending.append((future, event.event_id, event.language))
            if self._pending[0][0].is_done:
                self._reap()
        if self._unreported:
            self._report()
        return SendResult(True, event.event_id)

    def _reap(self) -> None:
        """Count the acknowledged head of the queue of sent events, and report each failure
        (holding the lock; ``on_failure`` is called after it is released)."""
        pending = self._pending
        while pending and pending[0][0].is_done:
            future, event_id, language = pending.popleft()
            if future.exception is None:
                self._delivered += 1
            else:
                failure = DeliveryFailure(event_id, language, repr(future.exception)[:300])
                self._failed += 1
                self._failures.append(failure)
                self._unreported.append(failure)

    def _report(self) -> None:
        if self._on_failure is None:
            self._unreported.clear()
            return
        while self._unreported:
            self._on_failure(self._unreported.popleft())

    # ---------------------------------------------------------------- outcomes
    def stats(self) -> ProducerStats:
        """Counts so far (acknowledgements are collected as the caller sends and here)."""
        with self._lock:
            self._reap()
            stats = self._stats_unlocked()
        self._report()
        return stats

    def failures(self) -> list[DeliveryFailure]:
        """The most recent delivery failures (event id, language, error), oldest first."""
        self.stats()
        with self._lock:
            return list(self._failures)

    def flush(self, timeout_s: float = 30.0) -> ProducerStats:
        """Send what is batched and wait (at most ``timeout_s``) for the acknowledgements; the
        stats say what is still ``in_flight`` if the time ran out."""
        from kafka.errors import KafkaTimeoutError

        with contextlib.suppress(KafkaTimeoutError):  # what is left shows up as in_flight
            self._producer.flush(timeout=timeout_s)
        return self.stats()

    def close(self, timeout_s: float = 30.0) -> ProducerStats:
        """Flush (bounded by ``timeout_s``), close the producer, return the final stats."""
        with self._lock:
            if self._closed:
                return self._stats_unlocked()
            self._closed = True
        stats = self.flush(timeout_s)
        self._producer.close(timeout=max(1.0, min(timeout_s, 5.0)))
        return stats

    def _stats_unlocked(self) -> ProducerStats:
        return ProducerStats(
            accepted=self._accepted,
            delivered=self._delivered,
            failed=self._failed,
            in_flight=len(self._pending) + self._reserved,
            rejected=self._rejected,
            dropped=self._dropped,
        )

    def __enter__(self) -> UsageEventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event_id_of(event: object) -> str | None:
    if isinstance(event, PromptEvent):
        return event.event_id
    if isinstance(event, Mapping):
        value = event.get("event_id")
        return value if isinstance(value, str) else None
    return None
