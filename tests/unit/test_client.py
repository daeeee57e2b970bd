"""The producer client, ``compass produce``'s line loop and the subscriber helper, on fakes of
kafka-python's producer and consumer (the real broker: tests/integration/test_produce.py)."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from compass.cli.produce import RateLimiter, produce_lines
from compass.client import DeliveryFailure, UsageEventProducer, prepare_event
from compass.core.errors import InvalidEventError
from compass.core.events import DeadLetter, DriftEvent, decode_prompt_event
from compass.kafka.subscribe import Received, Subscription, subscribe_drift_events

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


# ------------------------------------------------------------------ fakes
class FakeFuture:
    """kafka-python's FutureRecordMetadata, as far as the client reads it."""

    def __init__(self) -> None:
        self.is_done = False
        self.exception: Exception | None = None

    def succeed(self) -> None:
        self.is_done = True

    def fail(self, exc: Exception) -> None:
        self.is_done, self.exception = True, exc


@dataclass
class FakeProducer:
    """Records sends; futures complete only when the test says so."""

    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    futures: list[FakeFuture] = field(default_factory=list)
    raise_on_send: Exception | None = None
    closed: bool = False

    def send(self, topic: str, key: bytes, value: bytes) -> FakeFuture:
        if self.raise_on_send is not None:
            raise self.raise_on_send
        self.sent.append((topic, key, value))
        self.futures.append(FakeFuture())
        return self.futures[-1]

    def flush(self, timeout: float | None = None) -> None:
        for future in self.futures:
            if not future.is_done:
                future.succeed()

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


# ------------------------------------------------------------------ building events
def test_prepare_event_fills_ids_and_time_and_canonicalises_the_language() -> None:
    event, value = prepare_event({"text": "Qual é a moeda?", "language": "pt_br"})
    assert event.language == "pt-BR" and event.event_id and event.occurred_at.tzinfo
    decoded = decode_prompt_event(value)  # what the stream will do with it
    assert not isinstance(decoded, DeadLetter) and decoded == event
    again, _ = prepare_event({"text": "Qual é a moeda?", "language": "pt_br"})
    assert again.event_id != event.event_id


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"text": "   ", "language": "fr"}, "empty_text"),
        ({"text": "bonjour", "language": "xx-nope"}, "unknown_language"),
        ({"language": "fr"}, "missing_field"),
        ({"text": "x" * 9000, "language": "fr"}, "text_too_long"),
        ({"text": "bonjour", "language": "fr", "occurred_at": "2026-01-01T00:00:00"},
         "naive_timestamp"),
        ({"text": "bonjour", "language": "fr", "schema_version": 2},
         "unsupported_schema_version"),
    ],
)  # fmt: skip
def test_prepare_event_rejects_what_the_stream_would_dead_letter(
    fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        prepare_event(fields)
    assert caught.value.reason == reason


# ------------------------------------------------------------------ the client
def test_client_keys_by_canonical_language_and_reports_delivery() -> None:
    fake = FakeProducer()
    producer = UsageEventProducer(topic="t", producer=fake)
    result = producer.send("Wie spät ist es?", "DE_at", event_id="e-1", source="svc")
    assert result.accepted and result.event_id == "e-1"
    topic, key, value = fake.sent[0]
    assert (topic, key) == ("t", b"de-AT")
    assert json.loads(value)["language"] == "de-AT"
    assert producer.stats().in_flight == 1
    stats = producer.close()
    assert (stats.delivered, stats.in_flight, stats.failed) == (1, 0, 0) and fake.closed
    assert producer.send("encore", "de").reason == "closed"


def test_invalid_event_is_rejected_with_its_reason_and_never_sent() -> None:
    fake = FakeProducer()
    producer = UsageEventProducer(producer=fake)
    result = producer.send("", "fr", event_id="bad-1")
    assert not result.accepted and result.reason == "empty_text" and result.event_id == "bad-1"
    assert fake.sent == [] and producer.stats().rejected == 1


def test_buffer_is_bounded_and_drops_are_counted_without_blocking() -> None:
    fake = FakeProducer()
    producer = UsageEventProducer(producer=fake, max_in_flight=3)
    start = time.perf_counter()
    results = [producer.send(f"texte {i}", "fr") for i in range(5)]
    assert time.perf_counter() - start < 0.5
    assert [r.accepted for r in results] == [True, True, True, False, False]
    assert {r.reason for r in results[3:]} == {"buffer_full"}
    stats = producer.stats()
    assert (stats.accepted, stats.dropped, stats.in_flight) == (3, 2, 3)
    fake.futures[0].succeed()  # one acknowledged: room for one more
    assert producer.send("texte 5", "fr").accepted


def test_delivery_failures_are_reported_per_event() -> None:
    fake = FakeProducer()
    seen: list[DeliveryFailure] = []
    producer = UsageEventProducer(producer=fake, on_failure=seen.append)
    producer.send("un", "fr", event_id="a")
    producer.send("deux", "fr", event_id="b")
    fake.futures[1].fail(TimeoutError("no ack"))
    fake.futures[0].succeed()
    assert [f.event_id for f in producer.failures()] == ["b"] and seen == producer.failures()
    assert "no ack" in seen[0].error and seen[0].language == "fr"
    stats = producer.stats()
    assert (stats.delivered, stats.failed, stats.in_flight) == (1, 1, 0)


def test_a_producer_that_cannot_take_the_event_drops_it_with_a_reason() -> None:
    producer = UsageEventProducer(producer=FakeProducer(raise_on_send=TimeoutError("metadata")))
    result = producer.send("bonjour", "fr")
    assert not result.accepted and result.reason == "broker_unavailable"
    assert producer.stats().dropped == 1 and producer.stats().accepted == 0


# ------------------------------------------------------------------ compass produce
def test_produce_lines_reports_invalid_lines_and_sends_every_valid_one() -> None:
    lines = [
        json.dumps({"text": "Bonjour", "language": "fr"}),
        "{not json",
        "",
        json.dumps({"text": "Hallo", "language": "de", "event_id": "keep-me"}),
        json.dumps(["a", "list"]),
        json.dumps({"text": "", "language": "es"}),
        json.dumps({"text": "Olá", "language": "klingon"}),
        json.dumps({"text": "Hola", "language": "es"}),
    ]
    fake = FakeProducer()
    summary = produce_lines(io.StringIO("\n".join(lines) + "\n"), UsageEventProducer(producer=fake))
    assert summary.lines == 7 and summary.accepted == 3 and summary.delivered == 3
    assert [(n, reason) for n, reason, _ in summary.rejected] == [
        (2, "invalid_json"),
        (5, "not_an_object"),
        (6, "empty_text"),
        (7, "unknown_language"),
    ]
    assert [json.loads(v)["text"] for _, _, v in fake.sent] == ["Bonjour", "Hallo", "Hola"]


def test_rate_limiter_spaces_calls() -> None:
    limiter = RateLimiter(50.0)
    start = time.perf_counter()
    for _ in range(11):
        limiter.wait()
    assert time.perf_counter() - start >= 0.19


# ------------------------------------------------------------------ subscriber
@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class FakeConsumer:
    batches: list[list[Record]]
    commits: list[int] = field(default_factory=list)

    def poll(self, timeout_ms: int = 0) -> dict[str, list[Record]]:
        return {"tp": self.batches.pop(0)} if self.batches else {}

    def assignment(self) -> set[str]:
        return {"tp"}

    def commit(self, offsets: dict[Any, Any]) -> None:
        self.commits.extend(meta.offset for meta in offsets.values())

    def close(self) -> None:
        pass


def _drift_records() -> list[Record]:
    values = [
        (GOLDEN / "drift-events/v1/drift.json").read_bytes(),
        (GOLDEN / "drift-events/v1/drift.json").read_bytes(),  # a redelivered duplicate
        (GOLDEN / "drift-events/future/v2.json").read_bytes(),
        b"\xff not utf-8",
        (GOLDEN / "drift-events/v1/additive-field.json").read_bytes(),
    ]
    return [Record("drift-events", 0, i, b"fr", v) for i, v in enumerate(values)]


def test_subscription_decodes_dedupes_dead_letters_and_commits_after_the_handler() -> None:
    consumer = FakeConsumer([_drift_records()])
    letters: list[DeadLetter] = []
    handled: list[tuple[int, list[int]]] = []
    subscription = subscribe_drift_events(
        "unused:9092", "alerts", consumer=consumer, on_dead_letter=letters.append
    )

    def handler(received: Received[DriftEvent]) -> None:
        handled.append((received.offset, list(consumer.commits)))  # not yet committed

    stats = subscription.run(handler, idle_timeout_s=0.0)
    assert [offset for offset, _ in handled] == [0, 4]
    assert handled[0][1] == [] and handled[1][1] == [1, 2, 3, 4]
    assert consumer.commits == [1, 2, 3, 4, 5]
    assert [letter.reason for letter in letters] == ["unsupported_schema_version", "invalid_utf8"]
    assert [letter.offset for letter in letters] == [2, 3]
    assert (stats.handled, stats.duplicates, stats.dead_lettered) == (2, 1, 2)


def test_subscription_leaves_the_offset_uncommitted_when_the_handler_fails() -> None:
    consumer = FakeConsumer([_drift_records()[:1]])
    subscription = Subscription(None, "drift-events", DriftEvent, "g", consumer=consumer)

    def boom(_: Received[DriftEvent]) -> None:
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        subscription.run(boom, idle_timeout_s=0.0)
    assert consumer.commits == []


def test_subscription_stops_when_told() -> None:
    stop = threading.Event()
    stop.set()
    subscription = Subscription(None, "drift-events", DriftEvent, "g", consumer=FakeConsumer([]))
    assert subscription.run(lambda _: None, stop=stop).handled == 0


EQUIVALENCE_CASES: list[dict[str, Any]] = [
    {"text": "Bonjour", "language": "fr"},
    {"text": "Bonjour", "language": "FR_ca", "source": "s"},
    {"text": "Bonjour", "language": "fr", "metadata": {"n": 10**70}},
    {"text": "Bonjour", "language": "fr", "metadata": {"a": [1, {"b": None}]}},
    {"text": "Bonjour", "language": "fr", "unknown": 1},
    {"text": "Bonjour", "language": "fr", "schema_version": True},
    {"text": "Bonjour", "language": "fr", "occurred_at": "2999-01-01T00:00:00Z"},
    {"text": "Bonjour", "language": "fr", "occurred_at": "0001-01-01T00:00:00Z"},
    {"text": "Bon\x00jour", "language": "fr"},
    {"text": "x" * 8001, "language": "fr"},
    {"text": "Bonjour", "language": "fr", "event_id": "x" * 201},
    {"text": 42, "language": "fr"},
    {"text": "Bonjour", "language": None},
    *[
        {k: v for k, v in json.loads(p.read_bytes()).items() if k != "schema_version"}
        for p in sorted((GOLDEN / "prompt-events").glob("*/*.json"))
    ],
]


@pytest.mark.parametrize("fields", EQUIVALENCE_CASES, ids=range(len(EQUIVALENCE_CASES)))
def test_client_accepts_exactly_what_the_stream_decoder_accepts(fields: dict[str, Any]) -> None:
    filled = {"event_id": "fixed", "occurred_at": "2026-11-28T06:00:00Z", **fields}
    filled.setdefault("schema_version", 1)
    try:
        expected: Any = decode_prompt_event(json.dumps(filled).encode())
    except Exception as exc:  # pragma: no cover - the decoder never raises
        pytest.fail(f"decoder raised {exc!r}")
    try:
        event, value = prepare_event(filled)
    except InvalidEventError as exc:
        assert isinstance(expected, DeadLetter) and exc.reason == expected.reason
    else:
        assert not isinstance(expected, DeadLetter), expected.reason
        assert event == expected and decode_prompt_event(value) == event
