"""Issue 14: a re-used ``event_id`` with other content is dead-lettered ``duplicate_event_id``
with its own message's position, whether the two messages are in one consumed batch
(:func:`streams.stages.decode_messages`) or in two gathered into one flush
(:class:`streams.gather.Gatherer`); the same content is a redelivery and stays."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from compass.core.events import PromptEvent, canonical_content
from streams.gather import Gatherer
from streams.stages import Decoded, RawMessage, decode_messages

AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _raw(offset: int, event_id: str, text: str, **extra: object) -> RawMessage:
    body = {"schema_version": 1, "event_id": event_id, "occurred_at": AT.isoformat(),
            "language": "fr", "text": text} | extra  # fmt: skip
    return RawMessage("prompt-events", 0, offset, b"fr", json.dumps(body).encode())


def _decode(*messages: RawMessage) -> Decoded:
    return decode_messages(messages, max_text_chars=8000, max_event_bytes=64_000, now=AT)


def test_the_content_digest_ignores_form_and_sees_content() -> None:
    base = {"event_id": "e", "occurred_at": AT, "language": "fr", "text": "a"}
    digest = PromptEvent.model_validate(base).content_digest
    assert len(digest) == 32
    same = base | {"occurred_at": "2026-11-29T13:00:00+01:00", "language": "FR"}
    assert PromptEvent.model_validate(same).content_digest == digest
    assert PromptEvent.model_validate(base | {"event_id": "other"}).content_digest == digest
    for change in ({"text": "b"}, {"source": "web"}, {"metadata": {"k": 1}}):
        assert PromptEvent.model_validate(base | change).content_digest != digest


def test_the_digest_is_computed_once_and_a_changed_copy_gets_its_own() -> None:
    event = PromptEvent(event_id="e", occurred_at=AT, language="fr", text="a")
    digest = event.content_digest
    assert event.content_digest is digest  # cached on the instance
    changed = event.model_copy(update={"text": "b"})
    assert changed.text == "b"
    assert changed.content_digest == changed.model_copy().content_digest
    assert (
        changed.content_digest
        == PromptEvent(event_id="e", occurred_at=AT, language="fr", text="b").content_digest
        != digest
    )
    assert event.model_copy().content_digest == digest
    assert event == PromptEvent.model_validate(event.model_dump())  # the cache is not a field


_metadata = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)  # fmt: skip
_texts = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1).filter(
    lambda t: t.strip("\u200b ") != ""
)


@given(
    text=_texts,
    source=st.none() | st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=20),
    metadata=st.none() | st.dictionaries(st.text(max_size=6), _metadata, max_size=4),
    hour=st.integers(-12, 14),
)
def test_the_canonical_content_is_the_json_dumps_the_stored_digests_were_made_of(
    text: str, source: str | None, metadata: dict[str, object] | None, hour: int
) -> None:
    """Migration 0006 stored digests of ``json.dumps(sort_keys, ensure_ascii=False, compact)``;
    the hand-built form must give the same bytes, or a redelivery after an upgrade would be
    dead-lettered as a re-used id."""
    from datetime import timedelta, timezone

    try:
        event = PromptEvent(
            event_id="e", occurred_at=AT.astimezone(timezone(timedelta(hours=hour))),
            language="pt-br", text=text, source=source, metadata=metadata,
        )  # fmt: skip
    except ValueError:  # a visibly empty text or too deep metadata: not an event
        return
    reference = {
        "schema_version": event.schema_version, "occurred_at": event.occurred_at.isoformat(),
        "language": event.language, "text": event.text, "source": event.source,
        "metadata": event.metadata,
    }  # fmt: skip
    assert canonical_content(event) == json.dumps(
        reference, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )


def test_one_consumed_batch_dead_letters_the_later_reuse_with_its_position() -> None:
    decoded = _decode(_raw(0, "x", "un"), _raw(1, "x", "deux"), _raw(2, "x", "un", extra=1))
    assert [e.text for e in decoded.events] == ["un", "un"]  # the redelivery stays
    [letter] = decoded.dead_letters
    assert (letter.reason, letter.stage, letter.offset) == ("duplicate_event_id", "dedup", 1)


def test_two_consumed_batches_in_one_flush_dead_letter_the_later_reuse() -> None:
    gatherer = Gatherer(embed_batch=100, max_events=100, max_wait_s=60.0)
    one, two = (
        _decode(_raw(0, "x", "un"), _raw(1, "y", "y")),
        _decode(_raw(2, "z", "z"), _raw(3, "x", "deux"), _raw(4, "y", "y")),
    )
    gatherer.add(one, np.array([True, False]), None)
    gatherer.add(two, np.array([False, True, True]), None)
    flush = gatherer.take()
    assert flush is not None
    assert [e.event_id for e in flush.decoded.events] == ["x", "y", "z", "y"]
    [letter] = flush.decoded.dead_letters
    assert (letter.reason, letter.offset) == ("duplicate_event_id", 3)
    assert json.loads(letter.raw)["text"] == "deux"
    assert flush.decoded.sampled == frozenset({"x", "y"})  # the re-use's choice is dropped
    assert flush.n_messages == 5
    gatherer.add(_decode(_raw(5, "x", "trois")), np.array([True]), None)  # a new flush
    again = gatherer.take()
    assert again is not None and not again.decoded.dead_letters
