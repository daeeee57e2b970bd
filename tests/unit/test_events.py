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


# ------------------------------------------------------------------ issue 10: the edge policy
EDGE: list[tuple[str, bytes]] = [
    ("invalid_event_id", _raw(event_id="evt-\u0000-42")),  # case 1
    ("invalid_text", _raw(text="avant\u0000après")),  # case 2
    ("invalid_text", _raw(text="a").replace(b'"a"', b'"\\ud800"')),  # a lone surrogate
    ("invalid_field", _raw(source="web\u0000")),
    ("invalid_metadata", _raw(metadata={"k\u0000": 1})),
    ("invalid_metadata", _raw(metadata={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}})),
    ("invalid_metadata", _raw(metadata={f"k{i}": i for i in range(300)})),
    ("invalid_timestamp", _raw(occurred_at="0001-01-01T00:00:00+01:00")),  # case 3
    ("invalid_timestamp", _raw(occurred_at="9999-12-31T23:59:59-01:00")),
    ("invalid_timestamp", _raw(occurred_at="0001-01-01T00:00:00Z")),
    ("invalid_timestamp", _raw(occurred_at=10**30)),
    ("timestamp_in_future", _raw(occurred_at="2036-11-28T06:00:00Z")),  # case 4
    ("invalid_json", _raw(metadata={"n": 1}).replace(b'"n": 1', b'"n": ' + b"9" * 5000)),  # case 6
    ("invalid_json", _raw(event_id="x").replace(b'"x"', b"1" * 5000)),
    ("invalid_json", _raw(metadata={"n": 1}).replace(b'"n": 1', b'"n": NaN')),
    ("invalid_json", _raw(metadata={"n": 1}).replace(b'"n": 1', b'"n": 1e999')),
    ("invalid_json", _raw(metadata={"n": 1}).replace(b'"n": 1', b'"n": ' + b"[" * 20_000)),
    ("unsupported_schema_version", _raw(schema_version=True)),
]  # fmt: skip


@pytest.mark.parametrize(("reason", "raw"), EDGE)
def test_the_edge_refuses_what_the_sinks_cannot_hold(reason: str, raw: bytes) -> None:
    result = decode_prompt_event(raw, partition=0, offset=3)
    assert isinstance(result, DeadLetter), result
    assert result.reason == reason, result.detail
    assert result.raw == raw
    assert "\x00" not in result.detail  # the dead letter itself is storable


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [("iw-IL", "he-IL"), ("in-ID", "id-ID"), ("ji", "yi"), ("fil-PH", "fil-PH"),
     ("yue-Hant-HK", "yue-Hant-HK"), ("ca-ES-valencia", "ca-ES-valencia")],
)  # fmt: skip
def test_language_tags_real_clients_send_are_accepted(sent: str, canonical: str) -> None:
    event = decode_prompt_event(_raw(language=sent))  # case 5
    assert isinstance(event, PromptEvent) and event.language == canonical


def test_clock_skew_and_age_limits_are_relative_to_now() -> None:
    now = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    ahead = _raw(occurred_at="2026-11-28T06:04:59Z")
    assert isinstance(decode_prompt_event(ahead, now=now), PromptEvent)  # within 300 s
    late = decode_prompt_event(ahead, now=now, max_clock_skew_s=60)
    assert isinstance(late, DeadLetter) and late.reason == "timestamp_in_future"
    old = _raw(occurred_at="2026-10-01T00:00:00Z")
    assert isinstance(decode_prompt_event(old, now=now), PromptEvent)  # no horizon by default
    too_old = decode_prompt_event(old, now=now, max_event_age_s=30 * 86_400)
    assert isinstance(too_old, DeadLetter) and too_old.reason == "timestamp_too_old"
    unchecked = decode_prompt_event(_raw(occurred_at="2036-01-01T00:00:00Z"), max_clock_skew_s=None)
    assert isinstance(unchecked, PromptEvent)


def test_the_workers_decoder_never_raises_anything_but_invalid_event() -> None:
    """Case 6 in the adapter worker: a 5,000-digit number was a ValueError that killed it."""
    from compass.core.errors import InvalidEventError
    from workers.runner import decode_drift_event

    body = {"schema_version": 1, "drift_id": str(uuid.uuid4()), "language": "fr", "statistic": 0.1}
    poisons = [
        json.dumps(body).replace("0.1", "1" * 5000).encode(),
        json.dumps(body).replace("0.1", "NaN").encode(),
        json.dumps(body | {"language": "fr\u0000"}).encode(),
        b"[" * 100_000,
        b"",
        None,
    ]
    reasons = []
    for raw in poisons:
        with pytest.raises(InvalidEventError) as info:
            decode_drift_event(raw)
        reasons.append(info.value.reason)
    assert reasons == ["invalid_json", "invalid_json", "unknown_language", "invalid_json",
                       "empty_payload", "empty_payload"]  # fmt: skip


def test_events_refuse_non_finite_numbers_and_unstorable_strings_when_built() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        PeftInfo(type="LORA", r=8, alpha=float("nan"), target_modules=["q_proj"])
    with pytest.raises(ValidationError):
        PeftInfo(type="LORA", r=8, alpha=16, target_modules=["q\x00proj"])


def test_a_dead_letter_is_bounded_whatever_the_input() -> None:
    import hashlib

    from compass.core.errors import InvalidEventError
    from compass.core.events import DEAD_LETTER_MAX_RAW_BYTES, dead_letter_for

    raw = b"\x00" * (8 * 1024 * 1024)
    letter = dead_letter_for(
        raw, InvalidEventError("x" * 500, "d\x00" * 10_000, "s\ud800"), source_topic="t\x00"
    )
    assert len(letter.raw) == DEAD_LETTER_MAX_RAW_BYTES
    assert hashlib.sha256(raw).hexdigest() in letter.detail and str(len(raw)) in letter.detail
    assert len(letter.detail) <= 2000 and len(encode(letter)) < 400_000
    assert all("\x00" not in v for v in (letter.detail, letter.stage, letter.source_topic))
    small = dead_letter_for(b"abc", InvalidEventError("r", "d"), source_topic="t")
    assert small.raw == b"abc" and "truncated" not in small.detail


def test_transient_failures_are_told_apart_from_poison() -> None:
    import kafka.errors
    from sqlalchemy.exc import DataError, OperationalError

    from compass.core.errors import TransientError, is_transient

    class Sqlstate(Exception):
        def __init__(self, state: str) -> None:
            self.sqlstate = state

    assert is_transient(OperationalError("SELECT 1", {}, ConnectionRefusedError()))
    assert is_transient(OperationalError("SELECT 1", {}, Sqlstate("57P01")))  # admin shutdown
    assert not is_transient(OperationalError("SELECT 1", {}, Sqlstate("54000")))  # too large
    assert not is_transient(DataError("INSERT", {}, Sqlstate("22P05")))  # NUL in jsonb
    assert is_transient(kafka.errors.KafkaTimeoutError())
    assert not is_transient(kafka.errors.MessageSizeTooLargeError())
    assert is_transient(TransientError("down")) and is_transient(TimeoutError())
    wrapped = RuntimeError("batch")
    wrapped.__cause__ = ConnectionResetError()
    assert is_transient(wrapped) and not is_transient(ValueError("NUL"))


def test_the_watermark_never_passes_the_limit() -> None:
    from compass.core.windows import WindowPolicy, advance_watermarks

    policy = WindowPolicy(base_seconds=60, allowed_lateness_seconds=5)
    now = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    on_time = PromptEvent(event_id="a", occurred_at=now, language="fr", text="x")
    ahead = PromptEvent(event_id="b", occurred_at=now.replace(year=2036), language="fr", text="y")
    watermarks: dict[str, datetime] = {"fr": now}
    closed = advance_watermarks(watermarks, [ahead], policy, limit=now)
    assert watermarks["fr"] == now and not closed
    assert not policy.is_late(on_time.occurred_at, watermarks["fr"])
