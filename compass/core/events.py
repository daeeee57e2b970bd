"""Public event contracts (Kafka topic values), their one JSON codec and the edge policy.

Every value carries ``schema_version``. Consumers call :func:`decode_prompt_event`, which never
raises: a bad message becomes a :class:`DeadLetter` with a stable ``reason`` code, the stage that
rejected it and the original bytes, so nothing is lost and processing goes on.

**The edge policy** (one place, applied whenever an event is decoded or built, so nothing behind
it — PostgreSQL ``text`` and ``jsonb``, the vector store's payload, the broker — ever sees a value
it cannot hold; reason codes in ``docs/streaming.md``):

- JSON (:func:`compass.core.edge.loads_json`, used by every decoder): numbers of at most 64
  characters and finite (``NaN``, ``Infinity``, ``1e999`` are refused), nesting bounded by the
  payload size and Python's recursion guard; anything else → ``invalid_json``.
- Strings: valid Unicode (no lone surrogate such as ``"\\ud800"``) and no NUL (U+0000), in every
  string field of every event, nested ones included; no other control character (ESC, BEL …;
  TAB, LF, CR allowed) in a prompt's ``text``, ``event_id`` or ``source``; a ``text`` that
  shows nothing (whitespace, zero-width or format characters only) is ``empty_text``;
  ``event_id`` ≤ 200 characters, ``text`` ≤ ``max_text_chars``, ``source`` ≤ 200. Violations →
  ``invalid_event_id`` / ``invalid_text`` / ``invalid_field`` by field. Non-finite floats are
  refused in every event (JSON cannot carry them).
- ``metadata``: depth ≤ 8, ≤ 256 keys in all,
  strings as above → ``invalid_metadata``.
- Timestamps: a time zone (``naive_timestamp``) and the calendar range
  [:data:`EARLIEST_TIMESTAMP`, :data:`LATEST_TIMESTAMP`) (``invalid_timestamp``, so window
  arithmetic can never overflow); for prompt events, not later than ``now + max_clock_skew_s``
  (``timestamp_in_future``) nor older than ``now - max_event_age_s`` (``timestamp_too_old``).
- Language tags: canonical BCP-47 (:func:`compass.core.languages.normalize_language`) →
  ``unknown_language``.
- Dead letters themselves are bounded (:func:`dead_letter_for`): past
  :data:`DEAD_LETTER_MAX_RAW_BYTES` the original bytes are truncated, and the detail says so with
  their size and SHA-256, so a dead letter always fits the broker's message limit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from compass.core.edge import (
    check_metadata,
    check_value,
    clean_string,
    control_problem,
    is_visibly_empty,
    loads_json,
    string_problem,
)
from compass.core.errors import InvalidEventError, UnknownLanguageError
from compass.core.languages import normalize_language

PROMPT_EVENT_SCHEMA_VERSION: Literal[1] = 1
DRIFT_EVENT_SCHEMA_VERSION: Literal[1] = 1
ADAPTER_UPDATED_SCHEMA_VERSION: Literal[1] = 1
DEAD_LETTER_SCHEMA_VERSION: Literal[1] = 1

DEFAULT_MAX_TEXT_CHARS = 8000
DEFAULT_MAX_EVENT_BYTES = 64_000
DEFAULT_MAX_CLOCK_SKEW_S = 300.0
"""Prompt events stamped later than now + this are dead-lettered ``timestamp_in_future``."""
DEAD_LETTER_MAX_RAW_BYTES = 256 * 1024
"""Original bytes kept in a dead letter; its JSON then stays under ~360 KB (base64 plus the
2,000-character detail), inside Kafka's default 1 MiB message and producer request limits."""
DEAD_LETTER_MAX_DETAIL_CHARS = 2000
EARLIEST_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(9000, 1, 1, tzinfo=UTC)
EVENT_NAMESPACE = uuid.UUID("6f1c4a52-3c1e-5b7a-9d0e-2b8f4c6a1e37")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a time zone (e.g. '2026-11-28T06:00:00Z')")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not EARLIEST_TIMESTAMP <= utc < LATEST_TIMESTAMP:
        raise ValueError(
            f"timestamp {value.isoformat()} is outside {EARLIEST_TIMESTAMP:%Y-%m-%d} … "
            f"{LATEST_TIMESTAMP:%Y-%m-%d} (UTC)"
        )
    return utc


def _language(value: str) -> str:
    try:
        return normalize_language(value)
    except UnknownLanguageError as exc:
        raise ValueError(str(exc)) from None


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]
LanguageCode = Annotated[str, AfterValidator(_language)]


_MISSING = object()


class _computed_once(cached_property[bytes]):
    """:class:`functools.cached_property` without Python 3.11's lock: it takes an ``RLock``
    for every first computation (removed in 3.12, CPython gh-87634), and the stream computes
    each event's digest exactly once — that lock cost as much as the SHA-256 in a profile of
    the stream. Models that use it list it in ``ignored_types`` (not a field). Two threads
    computing at once would both store the same value."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        cache = instance.__dict__
        value = cache.get(self.attrname, _MISSING)
        if value is _MISSING:
            value = cache[self.attrname] = self.func(instance)
        return value


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        """The string and number policy, on every field of every event (nested ones too)."""
        return check_value(value)


class PromptEvent(_Event):
    """What a user asked, in which language, when (topic ``prompt-events``, key = language).

    Its string fields are checked by one validator each (the edge policy of the module
    docstring; the base class's all-field check is narrowed to ``source``): a prompt event is
    the stream's per-message cost, and each validator is a Python call from pydantic-core."""

    model_config = ConfigDict(frozen=True, extra="ignore", ignored_types=(_computed_once,))

    schema_version: Literal[1] = PROMPT_EVENT_SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=200)
    occurred_at: UtcDatetime
    language: LanguageCode
    text: str = Field(max_length=1_000_000)
    source: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        """Storable, not visibly empty, no control character — in that order (a text of NUL
        only is ``invalid_text``, of zero-width characters and ESC ``empty_text``)."""
        problem = string_problem(value)
        if problem:
            raise ValueError(f"value {problem}")
        if is_visibly_empty(value):
            raise ValueError("text is empty (only whitespace, zero-width or format characters)")
        problem = control_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, value: str) -> str:
        return _clean_field(value)

    @field_validator("source")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:  # replaces _Event._storable ("*")
        return None if value is None else _clean_field(value)

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_metadata(value)  # bounds, then every string and number in it

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with ``update``, without the cached :attr:`content_digest` (pydantic copies
        the instance dict, where the digest is cached, so it would describe the original)."""
        copy = super().model_copy(update=update, deep=deep)
        if update:
            copy.__dict__.pop("content_digest", None)
        return copy

    @property
    def point_id(self) -> uuid.UUID:
        """Vector-store id: uuid5 of the event id, so a redelivered event upserts in place."""
        return event_point_id(self.event_id)

    @_computed_once
    def content_digest(self) -> bytes:
        """SHA-256 (32 bytes) of what the event says, to tell a redelivery (same digest) from a
        re-used ``event_id`` (a different one, dead-lettered ``duplicate_event_id``).

        Over the decoded, canonical content — ``schema_version``, ``occurred_at`` (UTC,
        ISO 8601), ``language`` (the canonical tag), ``text``, ``source`` and ``metadata`` — as
        JSON with sorted keys, so key order, spacing, escapes, a time zone offset or an alias
        tag (``iw`` for ``he``), and unknown top-level fields (ignored by the v1 contract) do not
        change it. ``event_id`` itself is not in it (it is the key)."""
        return hashlib.sha256(canonical_content(self).encode("utf-8", "surrogatepass")).digest()


def canonical_content(event: PromptEvent) -> str:
    """The text :attr:`PromptEvent.content_digest` hashes: exactly ``json.dumps`` of
    ``{schema_version, occurred_at, language, text, source, metadata}`` with ``sort_keys=True,
    ensure_ascii=False, separators=(",", ":")`` (migration 0006 stored digests of that form),
    built here from its parts — about 3× faster, and the digest is computed for every counted
    event (a test checks the two agree on generated events)."""
    metadata = "null" if event.metadata is None else _CANONICAL.encode(event.metadata)
    source = "null" if event.source is None else _json_string(event.source)
    return (
        f'{{"language":{_json_string(event.language)},"metadata":{metadata},'
        f'"occurred_at":{_json_string(event.occurred_at.isoformat())},'
        f'"schema_version":{int(event.schema_version)},"source":{source},'
        f'"text":{_json_string(event.text)}}}'
    )


_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
_json_string = _CANONICAL.encode  # a str's JSON literal, as inside json.dumps(ensure_ascii=False)


def _clean_field(value: str) -> str:
    """A single-line identifier-like field: storable and free of control characters."""
    problem = string_problem(value)
    if problem:
        raise ValueError(f"value {problem}")
    problem = control_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def event_point_id(event_id: str) -> uuid.UUID:
    return uuid.uuid5(EVENT_NAMESPACE, event_id)


class ClusterChange(_Event):
    cluster: int
    reference_share: float
    window_share: float
    delta: float
    sample_texts: list[str] = Field(default_factory=list)
    label: str = ""  # the cluster's name on its semantic map (top terms), "" when unlabelled


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
    """What a serving engine checks before it loads an adapter (PEFT's ``LoraConfig`` terms).

    ``type`` is PEFT's adapter type (``"LORA"``); a DoRA adapter is ``type: "LORA"`` with
    ``use_dora: true``, as in PEFT's own ``adapter_config.json``, so an engine that cannot
    serve DoRA (vLLM, SGLang) refuses on that flag. ``use_dora`` and ``dtype`` were added in
    schema version 1 as optional fields (issue 11): an older message without them reads as
    ``use_dora=false`` and ``dtype=null`` (unknown)."""

    type: str
    r: int = Field(ge=1)
    alpha: float
    target_modules: list[str]
    modules_to_save: list[str] | None = None
    use_dora: bool = False
    dtype: str | None = Field(None, max_length=50)


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
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)  # no NaN/inf (issue 10)
    previous_version: int | None = None
    drift_id: uuid.UUID | None = None
    created_at: UtcDatetime = Field(default_factory=utc_now)
    action: Literal["promote", "rollback"] = "promote"
    """Why this version is live now: ``promote`` (the worker's gate, after drift) or
    ``rollback`` (``compass adapters rollback``). Optional, added in schema version 1."""
    reason: str = Field("", max_length=2000)
    """One line saying why (e.g. ``rollback to v2: bad French answers``); may be empty."""


class DeadLetter(_Event):
    """A message we could not process, kept with its original bytes (base64) and the reason.

    ``raw_b64`` holds at most :data:`DEAD_LETTER_MAX_RAW_BYTES` bytes; a longer original is
    truncated and ``detail`` ends with ``[raw truncated: N bytes, sha256 …]``."""

    schema_version: Literal[1] = DEAD_LETTER_SCHEMA_VERSION
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    stage: str
    reason: str
    detail: str
    raw_b64: str
    received_at: UtcDatetime = Field(default_factory=utc_now)
    _raw: bytes | None = PrivateAttr(None)  # the bytes behind raw_b64, when built here

    def __eq__(self, other: object) -> bool:
        """Equal fields (the cached bytes are only a decoded copy of ``raw_b64``)."""
        if not isinstance(other, DeadLetter):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = _Event.__hash__

    @property
    def raw(self) -> bytes:
        """The original bytes (as kept: at most :data:`DEAD_LETTER_MAX_RAW_BYTES`)."""
        return self._raw if self._raw is not None else base64.b64decode(self.raw_b64)


EventT = TypeVar("EventT", bound=BaseModel)


def encode(event: BaseModel) -> bytes:
    """The one JSON encoding of every public event."""
    return event.model_dump_json().encode("utf-8")


def decode(raw: bytes | None, model: type[EventT], *, max_bytes: int | None = None) -> EventT:
    """Decode a message of a known type under the edge policy; raises
    :class:`InvalidEventError` with the reason codes of :func:`parse_prompt_event`
    (``empty_payload``, ``oversized_payload``, ``invalid_utf8``, ``invalid_json``,
    ``not_an_object``, ``missing_field``, the field reasons); never anything else."""
    return validate_payload(parse_payload(raw, max_bytes), model)


def validate_payload(payload: dict[str, Any], model: type[EventT]) -> EventT:
    """Validate an already parsed JSON object as ``model``; raises :class:`InvalidEventError`
    with the field reason codes (stage ``schema``)."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidEventError(_reason(exc), _first_error(exc), stage="schema") from None


def parse_payload(raw: bytes | None, max_bytes: int | None = None) -> dict[str, Any]:
    """The JSON object of a message under the edge policy (size, UTF-8, bounded JSON numbers
    and nesting); raises :class:`InvalidEventError` (``empty_payload``, ``oversized_payload``,
    ``invalid_utf8``, ``invalid_json``, ``not_an_object``)."""
    return _payload(raw, max_bytes)


def _payload(raw: bytes | None, max_bytes: int | None) -> dict[str, Any]:
    """The JSON object of a message value, or :class:`InvalidEventError`."""
    if raw is None or len(raw) == 0:
        raise InvalidEventError("empty_payload", "message value is empty", stage="decode")
    if max_bytes is not None and len(raw) > max_bytes:
        raise InvalidEventError(
            "oversized_payload", f"{len(raw)} bytes > limit {max_bytes}", stage="decode"
        )
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEventError("invalid_utf8", str(exc), stage="decode") from None
    try:
        payload = loads_json(text)
    except ValueError as exc:  # JSONDecodeError included
        raise InvalidEventError("invalid_json", str(exc)[:500], stage="decode") from None
    if not isinstance(payload, dict):
        raise InvalidEventError(
            "not_an_object", f"expected a JSON object, got {type(payload).__name__}", "decode"
        )
    return payload


_FIELD_REASONS = {
    "text": "invalid_text",
    "language": "unknown_language",
    "occurred_at": "invalid_timestamp",
    "event_id": "invalid_event_id",
    "schema_version": "unsupported_schema_version",
    "metadata": "invalid_metadata",
}


def _first_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return clean_string("; ".join(parts))


def parse_prompt_event(
    raw: bytes | None,
    *,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    max_clock_skew_s: float | None = DEFAULT_MAX_CLOCK_SKEW_S,
    max_event_age_s: float | None = None,
    now: datetime | None = None,
) -> PromptEvent:
    """Decode and validate one ``prompt-events`` value under the edge policy; raises
    :class:`InvalidEventError` with a stable reason code (``invalid_utf8``, ``missing_field``,
    ``empty_text``, ``timestamp_in_future`` …; all listed in ``docs/streaming.md``).

    ``now`` (default: the wall clock) is what ``occurred_at`` is compared with: later than
    ``now + max_clock_skew_s`` is ``timestamp_in_future``, earlier than ``now -
    max_event_age_s`` is ``timestamp_too_old``; ``None`` switches either check off."""
    payload = _payload(raw, max_event_bytes)
    version = payload.get("schema_version")
    if version is None:
        raise InvalidEventError("missing_field", "schema_version: field required", "schema")
    if type(version) is not int or version != PROMPT_EVENT_SCHEMA_VERSION:
        raise InvalidEventError(
            "unsupported_schema_version",
            f"schema_version {clean_string(repr(version))[:50]} (this consumer reads "
            f"{PROMPT_EVENT_SCHEMA_VERSION})",
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
    _check_event_time(event.occurred_at, now, max_clock_skew_s, max_event_age_s)
    return event


def _check_event_time(
    at: datetime, now: datetime | None, skew_s: float | None, age_s: float | None
) -> None:
    if skew_s is None and age_s is None:
        return
    now = now or utc_now()
    if skew_s is not None and at > now + timedelta(seconds=skew_s):
        raise InvalidEventError(
            "timestamp_in_future",
            f"occurred_at {at.isoformat()} is more than {skew_s:g} s after {now.isoformat()}",
            "validate",
        )
    if age_s is not None and at < now - timedelta(seconds=age_s):
        raise InvalidEventError(
            "timestamp_too_old",
            f"occurred_at {at.isoformat()} is more than {age_s:g} s before {now.isoformat()}",
            "validate",
        )


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
    raw: bytes | None,
    error: InvalidEventError,
    *,
    source_topic: str,
    partition: int | None = None,
    offset: int | None = None,
) -> DeadLetter:
    """The dead letter of ``raw``; never fails and is bounded in size: at most
    :data:`DEAD_LETTER_MAX_RAW_BYTES` of the original (the detail then records its full size and
    SHA-256) and :data:`DEAD_LETTER_MAX_DETAIL_CHARS` of detail, every string made storable."""
    data = bytes(raw or b"")
    note = ""
    if len(data) > DEAD_LETTER_MAX_RAW_BYTES:
        digest = hashlib.sha256(data).hexdigest()
        note = f" [raw truncated: {len(data)} bytes, sha256 {digest}]"
        data = data[:DEAD_LETTER_MAX_RAW_BYTES]
    detail = clean_string(str(error.detail))[: DEAD_LETTER_MAX_DETAIL_CHARS - len(note)] + note
    # built without validation: every string above is cleaned and bounded, the base64 is ASCII,
    # the position is the broker's — validating again cost as much as the rest (a 256 KB raw's
    # base64 scanned for NUL and surrogates); tests check the result equals a validated one
    letter = DeadLetter.model_construct(
        source_topic=clean_string(source_topic)[:200],
        partition=None if partition is None else int(partition),
        offset=None if offset is None else int(offset),
        stage=clean_string(error.stage)[:50],
        reason=clean_string(error.reason)[:50],
        detail=detail,
        raw_b64=base64.b64encode(data).decode("ascii"),
        received_at=utc_now(),
    )
    letter._raw = data
    return letter


def decode_prompt_event(
    raw: bytes | None,
    *,
    source_topic: str = "prompt-events",
    partition: int | None = None,
    offset: int | None = None,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    max_clock_skew_s: float | None = DEFAULT_MAX_CLOCK_SKEW_S,
    max_event_age_s: float | None = None,
    now: datetime | None = None,
) -> PromptEvent | DeadLetter:
    """Never raises: a valid event, or a dead letter that says why it is not one (the checks
    and their arguments are :func:`parse_prompt_event`'s)."""
    try:
        return parse_prompt_event(
            raw,
            max_text_chars=max_text_chars,
            max_event_bytes=max_event_bytes,
            max_clock_skew_s=max_clock_skew_s,
            max_event_age_s=max_event_age_s,
            now=now,
        )
    except InvalidEventError as exc:
        error = exc
    except Exception as exc:  # a bug must not stop the stream either; keep the message
        error = InvalidEventError("internal_error", repr(exc)[:500], stage="decode")
    return dead_letter_for(
        raw, error, source_topic=source_topic, partition=partition, offset=offset
    )
