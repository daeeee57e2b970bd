"""The stream's stages as small functions, each testable without Kafka.

decode + validate → de-duplicate → choose the sample → embed → assign clusters → vector points
→ usage observations → (per closed window, :mod:`compass.core.windows`) drift event. The
topology is :mod:`streams.app`; the order of a batch's effects is
:func:`streams.checkpoint.checkpoint`'s.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

import numpy as np

from compass.core.detectors import DriftResult
from compass.core.edge import clean_string
from compass.core.errors import InvalidEventError
from compass.core.events import (
    DEFAULT_MAX_CLOCK_SKEW_S,
    EVENT_NAMESPACE,
    ClusterChange,
    DeadLetter,
    DriftEvent,
    PromptEvent,
    dead_letter_for,
    decode_prompt_event,
    encode,
    utc_now,
)
from compass.core.semantic_map import SemanticMap
from compass.core.windows import UNASSIGNED_CLUSTER, Span, WindowPolicy
from compass.ports.embedder import Embedder
from compass.ports.storage import UsageObservation
from compass.ports.vector_store import VectorPoint
from streams.shedding import is_sampled


class Message(Protocol):
    """What the stream reads of a consumed record: aiokafka's ``ConsumerRecord`` as the
    consumer hands it over (no copy per message), or a :class:`RawMessage`."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int | None: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class RawMessage(NamedTuple):
    """One record as the broker gave it, built by hand (tests, tools): a :class:`Message`."""

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Decoded:
    """A micro-batch after decoding: its valid events (in order), its dead letters, and the
    message each event came from (by ``event_id``, first occurrence), for dead-lettering an event
    that later fails to process."""

    events: list[PromptEvent]
    dead_letters: list[DeadLetter]
    origins: Mapping[str, Message] = field(default_factory=dict)
    sampled: frozenset[str] | None = None
    """Ids of the events chosen for embedding when the batch was gathered
    (:mod:`streams.gather`); ``None``: the processor's sampler chooses when it prepares it."""

    def part(self, events: list[PromptEvent]) -> Decoded:
        """Some of the events, without the dead letters (a part of an isolated batch)."""
        return Decoded(events, [], self.origins, self.sampled)


def decode_messages(
    messages: Sequence[Message],
    *,
    max_text_chars: int,
    max_event_bytes: int,
    max_clock_skew_s: float | None = DEFAULT_MAX_CLOCK_SKEW_S,
    max_event_age_s: float | None = None,
    now: datetime | None = None,
) -> Decoded:
    """Valid events and dead letters (with reason, stage and original bytes) under the edge
    policy of :func:`compass.core.events.parse_prompt_event`, against one ``now`` (default: the
    wall clock) for the whole batch; never raises."""
    now = now or utc_now()
    events: list[PromptEvent] = []
    dead: list[DeadLetter] = []
    origins: dict[str, Message] = {}
    firsts: dict[str, PromptEvent] = {}  # an id again with other content: duplicate_event_id
    for message in messages:
        outcome = decode_prompt_event(
            message.value or b"",
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            max_text_chars=max_text_chars,
            max_event_bytes=max_event_bytes,
            max_clock_skew_s=max_clock_skew_s,
            max_event_age_s=max_event_age_s,
            now=now,
        )
        if isinstance(outcome, DeadLetter):
            dead.append(outcome)
        elif (first := firsts.setdefault(outcome.event_id, outcome)) is not outcome and (
            first.content_digest != outcome.content_digest
        ):
            dead.append(duplicate_dead_letter(outcome, message, first))
        else:
            events.append(outcome)
            origins.setdefault(outcome.event_id, message)
    return Decoded(events, dead, origins)


def processing_dead_letter(
    event: PromptEvent, origin: Message | None, *, stage: str, error: BaseException
) -> DeadLetter:
    """The dead letter of a valid event that failed deterministically at ``stage`` (reason
    ``processing_error``, the exception's type and message as the detail), with its original
    message's bytes and position (re-encoded when unknown); bounded like every dead letter."""
    raw = origin.value if origin is not None and origin.value else encode(event)
    summary = f"{stage}: {type(error).__name__}: {error}"
    return dead_letter_for(
        raw,
        InvalidEventError("processing_error", summary, stage=stage),
        source_topic=origin.topic if origin is not None else "prompt-events",
        partition=None if origin is None else origin.partition,
        offset=None if origin is None else origin.offset,
    )


def duplicate_dead_letter(
    event: PromptEvent, origin: Message | None, first: PromptEvent | None = None
) -> DeadLetter:
    """The dead letter (reason ``duplicate_event_id``, stage ``dedup``) of an event whose
    ``event_id`` was already seen with *other* content (:attr:`PromptEvent.content_digest`):
    ``first`` earlier in the batch, or counted before (``None``). A redelivery — same content —
    is no such thing: it is counted once, silently."""
    raw = origin.value if origin is not None and origin.value else encode(event)
    where = "earlier in this batch" if first is not None else "by an event counted before"
    detail = (
        f"event_id {event.event_id!r} is already used {where} with other content "
        f"(sha256 of this content {event.content_digest.hex()[:16]}…)"
    )
    return dead_letter_for(
        raw,
        InvalidEventError("duplicate_event_id", detail, stage="dedup"),
        source_topic=origin.topic if origin is not None else "prompt-events",
        partition=None if origin is None else origin.partition,
        offset=None if origin is None else origin.offset,
    )


def dead_letter_key(letter: DeadLetter) -> bytes:
    """A stable key so DLQ consumers can drop re-sent copies."""
    return f"{letter.source_topic}:{letter.partition}:{letter.offset}".encode()


def unique_events(events: Iterable[PromptEvent]) -> list[PromptEvent]:
    """First occurrence of each ``event_id`` (a producer retry can repeat one in a batch)."""
    seen: set[str] = set()
    out = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out


def conflicting_repeats(events: Iterable[PromptEvent]) -> list[tuple[PromptEvent, PromptEvent]]:
    """(event, the first with its ``event_id``) for each later event whose content differs from
    the first's (a re-used id); same content is a redelivery, not listed."""
    firsts: dict[str, PromptEvent] = {}
    out = []
    for event in events:
        first = firsts.setdefault(event.event_id, event)
        if first is not event and first.content_digest != event.content_digest:
            out.append((event, first))
    return out


def sample_mask(events: Sequence[PromptEvent], rate: float) -> np.ndarray:
    """Which events to embed at ``rate`` (uniform, content-blind, replay-stable)."""
    return np.array([is_sampled(e.event_id, rate) for e in events], dtype=bool)


def embed_texts(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """One micro-batch through the embedder (the e5 ``query`` form, as the semantic map)."""
    if not texts:
        return np.empty((0, embedder.dim), dtype=np.float32)
    return embedder.embed(list(texts), progress=False)


def assign_clusters(semantic_map: SemanticMap, vectors: np.ndarray) -> np.ndarray:
    if vectors.shape[0] == 0:
        return np.empty(0, dtype=np.int32)
    return semantic_map.assign(vectors)


def vector_points(
    events: Sequence[PromptEvent],
    vectors: np.ndarray,
    clusters: np.ndarray,
    *,
    map_version: int,
    policy: WindowPolicy,
    store_text: bool = True,
) -> list[VectorPoint]:
    """Points keyed by uuid5(event_id): a redelivered event overwrites itself. The payload
    carries the text's SHA-256 always and the text itself only when ``store_text`` (privacy
    mode off, ``COMPASS_STORE_TEXT``)."""
    return [
        VectorPoint(
            id=event.point_id,
            vector=vectors[i],
            payload=_payload(event, store_text)
            | {
                "event_id": event.event_id,
                "language": event.language,
                "cluster": int(clusters[i]),
                "occurred_at": event.occurred_at.isoformat(),
                # epoch seconds, indexed: the worker's event-time range query (issue 10)
                "occurred_at_ts": math.floor(event.occurred_at.timestamp()),
                "window_start": policy.window_start(event.occurred_at).isoformat(),
                "semantic_map_version": map_version,
            },
        )
        for i, event in enumerate(events)
    ]


def _payload(event: PromptEvent, store_text: bool) -> dict[str, str]:
    digest = hashlib.sha256(event.text.encode("utf-8")).hexdigest()
    return {"text_sha256": digest, "text": event.text} if store_text else {"text_sha256": digest}


def usage_observations(
    events: Sequence[PromptEvent],
    sampled: np.ndarray,
    clusters_of_sampled: np.ndarray,
    *,
    map_version: int,
    policy: WindowPolicy,
) -> list[UsageObservation]:
    """Every event counted once, in its block; shed ones under :data:`UNASSIGNED_CLUSTER`."""
    out = []
    it = iter(clusters_of_sampled.tolist())
    for event, chosen in zip(events, sampled.tolist(), strict=True):
        out.append(
            UsageObservation(
                event_id=event.event_id,
                language=event.language,
                cluster=int(next(it)) if chosen else UNASSIGNED_CLUSTER,
                window_start=policy.block_start(event.occurred_at),
                window_seconds=policy.block_seconds,
                semantic_map_version=map_version,
                sampled=bool(chosen),
                weight=1.0,
                content_digest=event.content_digest,
            )
        )
    return out


def drift_id_for(language: str, window_start: datetime, map_version: int) -> uuid.UUID:
    """The same (language, window, map) always gets the same drift id."""
    return uuid.uuid5(EVENT_NAMESPACE, f"drift:{language}:{window_start.isoformat()}:{map_version}")


def build_drift_event(
    *,
    language: str,
    span: Span,
    result: DriftResult,
    map_version: int,
    reference_version: int | None,
    sample_texts: Mapping[int, list[str]],
    labels: Mapping[int, str] | None = None,
) -> DriftEvent:
    return DriftEvent(
        drift_id=drift_id_for(language, span.start, map_version),
        language=language,
        window_start=span.start,
        window_end=span.end,
        statistic=result.statistic,
        threshold=result.threshold,
        p_value=result.p_value,
        n_events=span.n_events,
        n_sampled=result.n_sampled,
        semantic_map_version=map_version,
        reference_version=reference_version,
        top_cluster_changes=[
            ClusterChange(
                cluster=change.cluster,
                reference_share=change.reference_share,
                window_share=change.window_share,
                delta=change.delta,
                sample_texts=[clean_string(t) for t in sample_texts.get(change.cluster, [])],
                label=(labels or {}).get(change.cluster, ""),
            )
            for change in result.top_changes
        ],
    )
