"""Public event contracts (Kafka topic values) and their one JSON codec.

Every value carries ``schema_version``. Consumers call :func:`decode_prompt_event`, which never
raises: a bad message becomes a :class:`DeadLetter` with a stable ``reason`` code, the stage that
rejected it and the original bytes, so nothing is lost and processing goes on.

Language codes are canonicalised here, once (``pt_br`` → ``pt-BR``, unknown codes rejected as
``unknown_language``): everything downstream, storage included, takes them as they are.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from compass.core.errors import InvalidEventError, UnknownLanguageError
from compass.core.languages import normalize_language

PROMPT_EVENT_SCHEMA_VERSION: Literal[1] = 1
DRIFT_EVENT_SCHEMA_VERSION: Literal[1] = 1
ADAPTER_UPDATED_SCHEMA_VERSION: Literal[1] = 1
DEAD_LETTER_SCHEMA_VERSION: Literal[1] = 1

DEFAULT_MAX_TEXT_CHARS = 8000
DEFAULT_MAX_EVENT_BYTES = 64_000
EVENT_NAMESPACE = uuid.UUID("6f1c4a52-3c1e-5b7a-9d0e-2b8f4c6a1e37")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a time zone (e.g. '2026-11-28T06:00:00Z')")
    return value.astimezone(UTC)


def _language(value: str) -> str:
    try:
        return normalize_language(value)
    except UnknownLanguageError as exc:
        raise ValueError(str(exc)) from None


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]
LanguageCode = Annotated[str, AfterValidator(_language)]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptEvent(_Event):
    """What a user asked, in which language, when (topic ``prompt-events``, key = language)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = PROMPT_EVENT_SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=200)
    occurred_at: UtcDatetime
    language: LanguageCode
    text: str = Field(max_length=1_000_000)
    source: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None

    @field_validator("text")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty")
        return value

    @property
    def point_id(self) -> uuid.UUID:
        """Vector-store id: uuid5 of the event id, so a redelivered event upserts in place."""
        return event_point_id(self.event_id)


def event_point_id(event_id: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_NAMESPACE, event_id)


class ClusterChange(_Event):
    cluster: int
    reference_share: float
    window_share: float
    delta: float
    sample_texts: list[str] = Field(default_factory=list)


class DriftEvent(_Event):
    """The usage of one language moved away from what its live adapter was built for."""

    schema_version: Literal[1] = DRIFT_EVENT_SCHEMA_VERSION
    drift_id: uuid.UUID
    language: LanguageCode
    window_start: UtcDatetime
    window_end: UtcDatetime
    statistic: float = Field(ge=0.0)
    threshold: float = Field(ge=0.0)
    p_value: float | None = Field(None, ge=0.0, le=1.0)
    n_events: int = Field(ge=0)
    n_sampled: int = Field(ge=0)
    semantic_map_version: int | None = None
    reference_version: int | None = None
    top_cluster_changes: list[ClusterChange] = Field(default_factory=list)
    detected_at: UtcDatetime = Field(default_factory=utc_now)


class PeftInfo(_Event):
    type: str
    r: int = Field(ge=1)
    alpha: float
    target_modules: list[str]
    modules_to_save: list[str] | None = None


class AdapterUpdated(_Event):
    """A new adapter version is live: enough for a server to fetch, verify and hot-load it."""

    schema_version: Literal[1] = ADAPTER_UPDATED_SCHEMA_VERSION
    message_id: uuid.UUID
    language: LanguageCode
    base_model: str
    base_model_revision: str
    adapter_id: str
    version: int = Field(ge=1)
    adapter_name: str
    artifact_uri: str
    manifest: dict[str, str]
    peft: PeftInfo
    metrics: dict[str, float] = Field(default_factory=dict)
    previous_version: int | None = None
    drift_id: uuid.UUID | None = None
    created_at: UtcDatetime = Field(default_factory=utc_now)


class DeadLetter(_Event):
    """A message we could not process, kept with its original bytes (base64) and the reason."""

    schema_version: Literal[1] = DEAD_LETTER_SCHEMA_VERSION
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    stage: str
    reason: str
    detail: str
    raw_b64: str
    received_at: UtcDatetime = Field(default_factory=utc_now)

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)


EventT = TypeVar("EventT", bound=BaseModel)


def encode(event: BaseModel) -> bytes:
    """The one JSON encoding of every public event."""
    return event.model_dump_json().encode("utf-8")


def decode(raw: bytes, model: type[EventT]) -> EventT:
    """Decode a message of a known type; raises :class:`InvalidEventError` with the reason
    codes of :func:`parse_prompt_event` (``invalid_utf8``, ``invalid_json``, ``missing_field``)."""
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidEventError("invalid_utf8", str(exc), stage="decode") from None
    except json.JSONDecodeError as exc:
        raise InvalidEventError("invalid_json", str(exc), stage="decode") from None
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidEventError(_reason(exc), _first_error(exc), stage="schema") from None


_FIELD_REASONS = {
    "text": "invalid_text",
    "language": "unknown_language",
    "occurred_at": "invalid_timestamp",
    "event_id": "invalid_event_id",
    "schema_version": "unsupported_schema_version",
}


def _first_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_prompt_event(
    raw: bytes,
    *,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> PromptEvent:
    """Decode and validate one ``prompt-events`` value; raises :class:`InvalidEventError` with a
    stable reason code (``invalid_utf8``, ``missing_field``, ``empty_text`` …)."""
    if raw is None or len(raw) == 0:
        raise InvalidEventError("empty_payload", "message value is empty", stage="decode")
    if len(raw) > max_event_bytes:
        raise InvalidEventError(
            "oversized_payload", f"{len(raw)} bytes > limit {max_event_bytes}", stage="decode"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEventError("invalid_utf8", str(exc), stage="decode") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidEventError("invalid_json", str(exc), stage="decode") from None
    if not isinstance(payload, dict):
        raise InvalidEventError(
            "not_an_object", f"expected a JSON object, got {type(payload).__name__}", "decode"
        )
    version = payload.get("schema_version")
    if version is None:
        raise InvalidEventError("missing_field", "schema_version: field required", "schema")
    if version != PROMPT_EVENT_SCHEMA_VERSION:
        raise InvalidEventError(
            "unsupported_schema_version",
            f"schema_version {version!r} (this consumer reads {PROMPT_EVENT_SCHEMA_VERSION})",
            "schema",
        )
    try:
        event = PromptEvent.model_validate(payload)
    except ValidationError as exc:
        raise InvalidEventError(_reason(exc), _first_error(exc), stage="validate") from None
    if len(event.text) > max_text_chars:
        raise InvalidEventError(
            "text_too_long", f"{len(event.text)} chars > limit {max_text_chars}", "validate"
        )
    return event


def _reason(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "missing":
        return "missing_field"
    if field == "text" and "empty" in str(error.get("msg", "")):
        return "empty_text"
    if field == "text" and error["type"] == "string_too_long":
        return "text_too_long"
    if field == "occurred_at" and "time zone" in str(error.get("msg", "")):
        return "naive_timestamp"
    return _FIELD_REASONS.get(field, "invalid_field")


def dead_letter_for(
    raw: bytes,
    error: InvalidEventError,
    *,
    source_topic: str,
    partition: int | None = None,
    offset: int | None = None,
) -> DeadLetter:
    return DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        stage=error.stage,
        reason=error.reason,
        detail=error.detail[:2000],
        raw_b64=base64.b64encode(raw or b"").decode("ascii"),
    )


def decode_prompt_event(
    raw: bytes,
    *,
    source_topic: str = "prompt-events",
    partition: int | None = None,
    offset: int | None = None,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> PromptEvent | DeadLetter:
    """Never raises: a valid event, or a dead letter that says why it is not one."""
    try:
        return parse_prompt_event(
            raw, max_text_chars=max_text_chars, max_event_bytes=max_event_bytes
        )
    except InvalidEventError as exc:
        return dead_letter_for(
            raw, exc, source_topic=source_topic, partition=partition, offset=offset
        )
    except Exception as exc:  # a bug must not stop the stream either; keep the message
        error = InvalidEventError("internal_error", repr(exc)[:500], stage="decode")
        return dead_letter_for(
            raw, error, source_topic=source_topic, partition=partition, offset=offset
        )
