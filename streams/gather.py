"""Gathering consumed batches into flushes: full embedding batches at any sample rate.

The Faust agent hands over what it consumed (bounded by ``COMPASS_STREAM_BATCH_SIZE`` and
``COMPASS_STREAM_BATCH_WITHIN_S``); each consumed batch is decoded and its events' sampling
decided at once (:class:`streams.shedding.StratifiedSampler`), then it waits here, unacknowledged,
until one of three bounds is reached:

* ``embed_batch`` sampled events are waiting — a full embedding batch (at a 1 % rate that is
  ~6,400 events: the flush grows with the load, so per-flush costs are amortised);
* ``max_events`` events are waiting — a bound on memory and on the work a crash replays;
* the oldest waiting event has waited ``max_wait_s`` — a quiet stream still flows.

A flush is one :func:`streams.checkpoint.checkpoint` over the merged batch; its ``ack``
acknowledges every consumed batch in it, in consumption order, after the effects are durable.

Dead letters are spread over the flushes of a consumed batch: a consumed batch split into
several flushes (its sample would overfill one) would otherwise put all its dead letters in
the first, whose dead-letter writes (topic and table, which the checkpoint runs beside the
events' steps) would then take far longer than its events and hold up the flushes behind it.
So a flush takes at most as many dead letters as it has events, and the rest wait for the next
flush — except that a flush carrying a consumed batch's ``ack`` takes every dead letter
gathered before it (its offsets are committed only after they are written). Nothing here does
I/O.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from compass.core.events import DeadLetter, PromptEvent
from streams.stages import Decoded, Message, duplicate_dead_letter

Ack = Callable[[], Awaitable[None]]


@dataclass
class Flush:
    """Consumed batches merged for one checkpoint.

    ``decoded.sampled`` holds the ids chosen for embedding; ``positions`` the next offset per
    (topic, partition) once it is acknowledged; ``n_messages`` the events and dead letters in
    it; ``newest`` the latest event time in it."""

    decoded: Decoded
    acks: list[Ack]
    positions: dict[tuple[str, int], int]
    n_messages: int
    n_sampled: int
    opened_at: float
    newest: datetime | None = None
    oldest: datetime | None = None
    by_size: bool = False

    async def ack(self) -> None:
        """Acknowledge every consumed batch, in order (each ack is idempotent)."""
        for ack in self.acks:
            await ack()


@dataclass
class Gatherer:
    """Holds consumed, decoded batches until a bound is reached (see the module docstring)."""

    embed_batch: int
    max_events: int
    max_wait_s: float
    clock: Callable[[], float] = time.monotonic
    _events: list[PromptEvent] = field(default_factory=list)
    _dead: list[DeadLetter] = field(default_factory=list)
    _dead_due: int = 0
    _origins: dict[str, Message] = field(default_factory=dict)
    _sampled: set[str] = field(default_factory=set)
    _acks: list[Ack] = field(default_factory=list)
    _positions: dict[tuple[str, int], int] = field(default_factory=dict)
    _n_messages: int = 0
    _opened_at: float | None = None
    _newest: datetime | None = None
    _oldest: datetime | None = None
    _firsts: dict[str, PromptEvent] = field(default_factory=dict)

    def add(
        self,
        decoded: Decoded,
        chosen: np.ndarray,
        ack: Ack | None,
        messages: Sequence[Message] = (),
    ) -> None:
        """Events of one consumed batch with the sampling mask over them; a consumed batch
        split over several flushes (its sample would overfill one) gives its ``ack`` and its
        ``messages`` (the offsets) with its last part, so it is acknowledged only when every
        part is durable (flushes complete in order)."""
        if self._opened_at is None:
            self._opened_at = self.clock()
        decoded, chosen = self._reused_ids_dead_lettered(decoded, chosen)
        self._events.extend(decoded.events)
        self._dead.extend(decoded.dead_letters)
        if self._origins:  # an id's first origin stays (merged in C, not per event in Python)
            merged = dict(decoded.origins)
            merged.update(self._origins)
            self._origins = merged
        else:
            self._origins = dict(decoded.origins)
        pairs = zip(decoded.events, chosen.tolist(), strict=True)
        self._sampled.update(event.event_id for event, keep in pairs if keep)
        if decoded.events:
            times = [event.occurred_at for event in decoded.events]
            newest, oldest = max(times), min(times)
            if self._newest is None or newest > self._newest:
                self._newest = newest
            if self._oldest is None or oldest < self._oldest:
                self._oldest = oldest
        if ack is not None:
            self._acks.append(ack)
            self._dead_due = len(self._dead)  # written before this ack, so in the next flush
        for message in messages:
            if message.partition is not None and message.offset is not None:
                key = (message.topic, message.partition)
                if message.offset + 1 > self._positions.get(key, -1):
                    self._positions[key] = message.offset + 1
        self._n_messages += len(decoded.events) + len(decoded.dead_letters)

    def _reused_ids_dead_lettered(
        self, decoded: Decoded, chosen: np.ndarray
    ) -> tuple[Decoded, np.ndarray]:
        """Issue 14: an event whose ``event_id`` already waits here with *other* content (a
        re-used id, from an earlier consumed batch of this flush) becomes its
        ``duplicate_event_id`` dead letter, keyed by its own message; the same content is a
        redelivery and stays (de-duplicated later). One dict look-up per event."""
        keep = [True] * len(decoded.events)
        dead: list[DeadLetter] = []
        for i, event in enumerate(decoded.events):
            first = self._firsts.setdefault(event.event_id, event)
            if first is not event and first.content_digest != event.content_digest:
                keep[i] = False
                origin = decoded.origins.get(event.event_id)
                dead.append(duplicate_dead_letter(event, origin, first))
        if not dead:
            return decoded, chosen
        events = [e for e, k in zip(decoded.events, keep, strict=True) if k]
        mask = np.asarray(chosen, dtype=bool)[np.asarray(keep, dtype=bool)]
        return Decoded(events, [*decoded.dead_letters, *dead], decoded.origins), mask

    @property
    def n_sampled(self) -> int:
        return len(self._sampled)

    @property
    def n_waiting(self) -> int:
        """Events and dead letters gathered so far."""
        return self._n_messages

    def full(self) -> bool:
        """A size bound is reached (a full embedding batch, or the event bound)."""
        return len(self._sampled) >= self.embed_batch or self._n_messages >= self.max_events

    def due(self) -> bool:
        """Flush now? A size bound, or the oldest waiting event has waited ``max_wait_s``."""
        if self._opened_at is None:
            return False
        return self.full() or self.clock() - self._opened_at >= self.max_wait_s

    def take(self) -> Flush | None:
        """Everything waiting, as one :class:`Flush` (``None`` when nothing waits) — but for
        dead letters beyond the flush's share (see the module docstring), which keep waiting."""
        if self._opened_at is None:
            return None
        n_events = len(self._events)
        share = len(self._dead) if not n_events else max(self._dead_due, n_events)
        dead, held = self._dead[:share], self._dead[share:]
        flush = Flush(
            decoded=Decoded(self._events, dead, self._origins, frozenset(self._sampled)),
            acks=self._acks,
            positions=self._positions,
            n_messages=n_events + len(dead),
            n_sampled=len(self._sampled),
            opened_at=self._opened_at,
            newest=self._newest,
            oldest=self._oldest,
            by_size=self.full(),
        )
        self._events, self._dead, self._origins, self._sampled = [], held, {}, set()
        self._acks, self._positions, self._n_messages, self._dead_due = [], {}, len(held), 0
        self._opened_at = self.clock() if held else None
        self._newest, self._oldest = None, None
        self._firsts = {}
        return flush
