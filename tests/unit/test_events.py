"""Event contracts: valid events round-trip; every malformed input becomes a dead letter."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest

from compass.core.events import (
    AdapterUpdated,
    DeadLetter,
    DriftEvent,
    PeftInfo,
    PromptEvent,
    decode,
    decode_prompt_event,
    encode,
    event_point_id,
)


def _event(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "schema_version": 1,
        "event_id": "evt-1",
        "occurred_at": "2026-11-28T06:00:00Z",
        "language": "fr",
        "text": "Comment insérer un tableau ?",
    }
    body.update(overrides)
    return body


def _raw(**overrides: object) -> bytes:
    return json.dumps(_event(**overrides)).encode()


def test_valid_event_is_normalised() -> None:
    event = decode_prompt_event(_raw(language="pt_br", occurred_at="2026-11-28T08:00:00+02:00"))
    assert isinstance(event, PromptEvent)
    assert event.language == "pt-BR"
    assert event.occurred_at == datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


def test_encode_decode_round_trip() -> None:
    event = decode_prompt_event(_raw(metadata={"session": "s1"}, source="web"))
    assert isinstance(event, PromptEvent)
    assert decode(encode(event), PromptEvent) == event


def test_point_id_is_stable_uuid5() -> None:
    assert event_point_id("evt-1") == event_point_id("evt-1")
    assert event_point_id("evt-1") != event_point_id("evt-2")
    assert event_point_id("evt-1").version == 5


MALFORMED: list[tuple[str, bytes]] = [
    ("empty_payload", b""),
    ("invalid_json", b'{"schema_version": 1,'),
    ("invalid_utf8", b'{"text": "\xff\xfe"}'),
    ("not_an_object", b"[1, 2, 3]"),
    ("missing_field", json.dumps({"schema_version": 1, "language": "fr"}).encode()),
    ("missing_field", json.dumps({k: v for k, v in _event().items() if k != "text"}).encode()),
    ("unsupported_schema_version", _raw(schema_version=2)),
    ("missing_field", json.dumps({k: v for k, v in _event().items() if k != "schema_version"})
     .encode()),
    ("empty_text", _raw(text="   \n\t ")),
    ("unknown_language", _raw(language="xx")),
    ("unknown_language", _raw(language="not a language")),
    ("text_too_long", _raw(text="a" * 8001)),
    ("oversized_payload", _raw(text="a" * 70_000)),
    ("naive_timestamp", _raw(occurred_at="2026-11-28T06:00:00")),
    ("invalid_timestamp", _raw(occurred_at="yesterday")),
    ("invalid_event_id", _raw(event_id="")),
    ("invalid_text", _raw(text=42)),
]  # fmt: skip


@pytest.mark.parametrize(("reason", "raw"), MALFORMED)
def test_malformed_input_becomes_dead_letter(reason: str, raw: bytes) -> None:
    result = decode_prompt_event(raw, source_topic="prompt-events", partition=2, offset=17)
    assert isinstance(result, DeadLetter), result
    assert result.reason == reason, result.detail
    assert result.raw == raw  # the original bytes are kept, byte for byte
    assert result.partition == 2 and result.offset == 17
    assert result.detail


def test_dead_letter_carries_stage() -> None:
    bad_json = decode_prompt_event(b"{")
    bad_lang = decode_prompt_event(_raw(language="zz"))
    assert isinstance(bad_json, DeadLetter) and bad_json.stage == "decode"
    assert isinstance(bad_lang, DeadLetter) and bad_lang.stage == "validate"


def test_size_limits_are_configurable() -> None:
    assert isinstance(decode_prompt_event(_raw(text="abc"), max_text_chars=2), DeadLetter)
    assert isinstance(decode_prompt_event(_raw(text="a" * 9000), max_text_chars=10_000),
                      PromptEvent)  # fmt: skip


def test_drift_and_adapter_events_round_trip() -> None:
    drift = DriftEvent(
        drift_id=uuid.uuid4(),
        language="fr",
        window_start=datetime(2026, 11, 28, tzinfo=UTC),
        window_end=datetime(2026, 11, 28, 1, tzinfo=UTC),
        statistic=0.12,
        threshold=0.05,
        n_events=900,
        n_sampled=900,
    )
    assert decode(encode(drift), DriftEvent) == drift
    updated = AdapterUpdated(
        message_id=uuid.uuid4(),
        language="sw",
        base_model="smollm2-135m",
        base_model_revision="abc",
        adapter_id="sw-smollm2-135m",
        version=7,
        adapter_name="sw-v7",
        artifact_uri="file:///adapters/sw/v7",
        manifest={"adapter_model.safetensors": "0" * 64},
        peft=PeftInfo(type="LORA", r=8, alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    assert decode(encode(updated), AdapterUpdated) == updated


def test_drift_event_rejects_naive_window() -> None:
    from compass.core.errors import InvalidEventError

    body = {
        "drift_id": str(uuid.uuid4()),
        "language": "fr",
        "window_start": "2026-11-28T00:00:00",
        "window_end": "2026-11-28T01:00:00Z",
        "statistic": 0.1,
        "threshold": 0.05,
        "n_events": 1,
        "n_sampled": 1,
    }
    with pytest.raises(InvalidEventError):
        decode(json.dumps(body).encode(), DriftEvent)


def test_raw_b64_is_valid_base64() -> None:
    letter = decode_prompt_event(b"\x00\x01garbage")
    assert isinstance(letter, DeadLetter)
    assert base64.b64decode(letter.raw_b64) == b"\x00\x01garbage"


@pytest.mark.parametrize(
    ("raw", "reason", "stage"),
    [
        (b"{not json", "invalid_json", "decode"),
        (b"\xff\xfe", "invalid_utf8", "decode"),
        (b"{}", "missing_field", "schema"),
        (b'{"drift_id": "not-a-uuid"}', "invalid_field", "schema"),
    ],
)
def test_decode_of_known_types_gives_reason_codes(raw: bytes, reason: str, stage: str) -> None:
    from compass.core.errors import InvalidEventError

    with pytest.raises(InvalidEventError) as info:
        decode(raw, DriftEvent)
    assert (info.value.reason, info.value.stage) == (reason, stage)
