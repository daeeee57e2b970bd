"""A corpus of malformed ``prompt-events`` messages, each with the dead-letter reason it must get
(issue 14, part 2; reasons in docs/streaming.md), for ``tests/reliability/test_bad_input.py``
and ``benchmarks/bench_bad_input.py``.

:data:`KINDS` names every kind with its expected reason; :func:`malformed_corpus` cycles through
them (the 10 MB kind only :data:`HUGE_EVERY`-th time round, so a 10,000-message corpus holds a
few dozen megabytes, not gigabytes). The corpus assumes the consumer runs with
``COMPASS_STREAM_MAX_EVENT_AGE_S`` set (:data:`MAX_EVENT_AGE_S`) — otherwise an event from 1975
is valid, merely old.

Not malformed, so not here: extra top-level fields (the v1 contract ignores unknown fields, see
docs/schemas/README.md) and a redelivered event with the same id *and* content (a duplicate,
counted once). A re-used id with *different* content is the kind ``duplicate_event_id``: it
re-uses the id of :func:`duplicate_original`, a valid event to send (and count) before the
corpus, on the same partition (key ``fr``) so that it is counted first; without it the first
such message stands in as the original and is counted instead.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

MAX_EVENT_AGE_S = 30 * 86_400
HUGE_BYTES = 10 * 1024 * 1024
HUGE_EVERY = 500
"""One 10 MB message per this many malformed ones."""
LANGUAGE_KEYS = (b"fr", b"de", b"es")
ORIGINAL_ID = "bad-original"
"""The event id the ``duplicate_event_id`` kind re-uses (:func:`duplicate_original`)."""
DUPLICATE_KIND = "duplicate_event_id"


@dataclass(frozen=True)
class BadMessage:
    """A message value the stream must dead-letter with ``reason``; ``kind`` says what is wrong."""

    key: bytes
    value: bytes
    kind: str
    reason: str


def _body(i: int, now: datetime) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": f"bad-{i:06d}",
        "occurred_at": (now - timedelta(minutes=30)).isoformat(),
        "language": "fr",
        "text": "Comment configurer le pare-feu ?",
    }


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def _with(**fields: Any) -> Callable[[dict[str, Any]], bytes]:
    return lambda body: _json(body | fields)


def _without(field: str) -> Callable[[dict[str, Any]], bytes]:
    return lambda body: _json({k: v for k, v in body.items() if k != field})


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        node = {"n": node}
    return node


def _metadata_literal(literal: bytes) -> Callable[[dict[str, Any]], bytes]:
    """A body whose ``metadata.x`` is ``literal``, written into the JSON text as it is."""
    return lambda body: _json(body | {"metadata": {"x": 0}}).replace(b'"x": 0', b'"x": ' + literal)


def _reused_id(body: dict[str, Any]) -> bytes:
    """The original's id with another text (its own number in it: every one differs)."""
    return _json(body | {"event_id": ORIGINAL_ID, "text": f"{body['text']} ({body['event_id']})"})


def duplicate_original(now: datetime) -> tuple[bytes, bytes]:
    """(key, value) of the valid event whose id the ``duplicate_event_id`` kind re-uses."""
    return b"fr", _json(_body(0, now) | {"event_id": ORIGINAL_ID})


def _raw(value: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda body: value.replace(b"ID", body["event_id"].encode())


# kind → (expected reason, how to spoil a valid body)
KINDS: dict[str, tuple[str, Callable[[dict[str, Any]], bytes]]] = {
    # bad JSON
    "truncated_json": ("invalid_json", lambda b: _json(b)[:-7]),
    "trailing_garbage": ("invalid_json", lambda b: _json(b) + b"}}"),
    "single_quotes": ("invalid_json", _raw(b"{'schema_version': 1, 'event_id': 'ID'}")),
    "nan_number": ("invalid_json", _metadata_literal(b"NaN")),
    "huge_number": ("invalid_json", _metadata_literal(b"9" * 400)),
    "nesting_20000": ("invalid_json", _metadata_literal(b"[" * 20_000 + b"]" * 20_000)),
    "not_an_object": ("not_an_object", _raw(b'["ID", 1, 2]')),
    "json_string": ("not_an_object", _raw(b'"ID"')),
    "empty_payload": ("empty_payload", lambda b: b""),
    # wrong types
    "text_number": ("invalid_text", _with(text=42)),
    "text_list": ("invalid_text", _with(text=["a", "b"])),
    "event_id_number": ("invalid_event_id", _with(event_id=12345)),
    "event_id_object": ("invalid_event_id", _with(event_id={"id": 1})),
    "language_number": ("unknown_language", _with(language=7)),
    "occurred_at_bool": ("invalid_timestamp", _with(occurred_at=True)),
    "occurred_at_word": ("invalid_timestamp", _with(occurred_at="yesterday")),
    "metadata_string": ("invalid_metadata", _with(metadata="not an object")),
    "source_number": ("invalid_field", _with(source=5)),
    "schema_version_string": ("unsupported_schema_version", _with(schema_version="1")),
    # missing fields
    "no_event_id": ("missing_field", _without("event_id")),
    "no_text": ("missing_field", _without("text")),
    "no_language": ("missing_field", _without("language")),
    "no_occurred_at": ("missing_field", _without("occurred_at")),
    "no_schema_version": ("missing_field", _without("schema_version")),
    # empty, blank, invisible
    "empty_text": ("empty_text", _with(text="")),
    "whitespace_text": ("empty_text", _with(text=" \t\n\u00a0\u3000 ")),
    "zero_width_text": ("empty_text", _with(text="\u200b\u200c\u200d\u2060\ufeff")),
    "hangul_filler_text": ("empty_text", _with(text="\u3164\u3164")),
    "empty_event_id": ("invalid_event_id", _with(event_id="")),
    # sizes
    "text_over_limit": ("text_too_long", _with(text="é" * 8001)),
    "event_id_over_limit": ("invalid_event_id", _with(event_id="x" * 201)),
    "source_over_limit": ("invalid_field", _with(source="s" * 201)),
    "value_100kb": ("oversized_payload", _with(text="a" * 100_000)),
    # encoding and control characters
    "invalid_utf8": ("invalid_utf8", lambda b: _json(b).replace(b"pare-feu", b"pare-f\xe9u\xff")),
    "lone_surrogate_bytes": ("invalid_utf8", lambda b: _json(b).replace(b"pare", b"\xed\xa0\x80")),
    "lone_surrogate_escape": ("invalid_text", lambda b: _json(b).replace(b"pare", b"\\ud800")),
    "nul_in_text": ("invalid_text", _with(text="avant\u0000apr\u00e8s")),
    "escape_in_text": ("invalid_text", _with(text="rouge \u001b[31m texte")),
    "bell_in_text": ("invalid_text", _with(text="ding\u0007")),
    "c1_control_in_text": ("invalid_text", _with(text="x\u0085y\u009b")),
    "control_in_event_id": ("invalid_event_id", lambda b: _json(b | {"event_id": "id\u0008"})),
    "nul_in_metadata": ("invalid_metadata", _with(metadata={"k": "v\u0000"})),
    # language tags
    "unknown_language": ("unknown_language", _with(language="xx")),
    "undetermined_language": ("unknown_language", _with(language="und")),
    "private_use_language": ("unknown_language", _with(language="qaa")),
    "private_use_subtag": ("unknown_language", _with(language="en-x-foo")),
    "malformed_tag": ("unknown_language", _with(language="en--US")),
    "sentence_as_tag": ("unknown_language", _with(language="not a language")),
    "empty_language": ("unknown_language", _with(language="")),
    # time
    "year_one": ("invalid_timestamp", _with(occurred_at="0001-01-01T00:00:00Z")),
    "year_9999": ("invalid_timestamp", _with(occurred_at="9999-12-31T23:59:59-01:00")),
    "naive_timestamp": ("naive_timestamp", _with(occurred_at="2026-11-28T06:00:00")),
    "far_future": ("timestamp_in_future", _with(occurred_at="2999-01-01T00:00:00Z")),
    "far_past": ("timestamp_too_old", _with(occurred_at="1975-06-01T00:00:00Z")),
    # schema versions from the future
    # the id of an event counted before, with other content (send duplicate_original first)
    DUPLICATE_KIND: ("duplicate_event_id", _reused_id),
    "schema_version_2": ("unsupported_schema_version", _with(schema_version=2)),
    "schema_version_999": ("unsupported_schema_version", _with(schema_version=999)),
    # metadata
    "metadata_depth_9": ("invalid_metadata", _with(metadata=_nested(9))),
    "metadata_depth_30": ("invalid_metadata", _with(metadata=_nested(30))),
    "metadata_300_keys": ("invalid_metadata", _with(metadata={f"k{j}": j for j in range(300)})),
    "metadata_infinite_float": ("invalid_json", _metadata_literal(b"1e999")),
}  # fmt: skip
HUGE_KIND = "value_10mb"


def malformed_corpus(
    n: int, *, now: datetime, seed: int = 14, huge_every: int | None = HUGE_EVERY
) -> list[BadMessage]:
    """``n`` malformed messages cycling through :data:`KINDS` (shuffled per cycle), with a
    10 MB one (``oversized_payload``) every ``huge_every`` (None: none); event ids
    ``bad-NNNNNN``."""
    rng = random.Random(seed)
    kinds = sorted(KINDS)
    order: list[str] = []
    out = []
    for i in range(n):
        if huge_every is not None and i % huge_every == huge_every - 1:
            kind, reason = HUGE_KIND, "oversized_payload"
            body = _body(i, now)
            value = _json(body | {"text": "z" * HUGE_BYTES})
        else:
            if not order:
                order = list(kinds)
                rng.shuffle(order)
            kind = order.pop()
            reason, spoil = KINDS[kind]
            value = spoil(_body(i, now))
        key = b"fr" if kind == DUPLICATE_KIND else LANGUAGE_KEYS[i % len(LANGUAGE_KEYS)]
        out.append(BadMessage(key, value, kind, reason))
    return out


def mix(valid: list[Any], bad: list[Any], seed: int = 14) -> list[Any]:
    """``valid`` and ``bad`` interleaved 1:1 in random order (each list's own order kept)."""
    rng = random.Random(seed)
    out: list[Any] = []
    i = j = 0
    while i < len(valid) or j < len(bad):
        take_valid = j >= len(bad) or (i < len(valid) and rng.random() < 0.5)
        if take_valid:
            out.append(valid[i])
            i += 1
        else:
            out.append(bad[j])
            j += 1
    return out
