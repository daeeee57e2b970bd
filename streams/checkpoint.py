"""The checkpoint: the one function that fixes the order of a micro-batch's effects.

Delivery is at-least-once (offsets are committed only after the effects are durable) and every
sink is idempotent on a natural key, so a crash anywhere before the acknowledgement replays the
batch and every step then finds its work done and changes nothing. :func:`checkpoint` is the only
place that says in which order; the docstrings elsewhere point here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from compass.core.events import DeadLetter
from streams.stages import Decoded

if TYPE_CHECKING:
    from streams.pipeline import BatchProcessor, BatchReport

T = TypeVar("T")


class Blocking(Protocol):
    """Runs a blocking call off the event loop (the runtime's batch thread) and awaits it."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


@dataclass(frozen=True)
class Edges:
    """The broker side of a batch: the dead-letter topic, the outbox relay and the offsets.

    ``publish_outbox`` is blocking (it runs on the batch thread); ``ack`` must be idempotent
    (a failed checkpoint is retried as a whole). :data:`OFFLINE` stands for no broker.
    """

    send_dead_letters: Callable[[Sequence[DeadLetter]], Awaitable[None]]
    publish_outbox: Callable[[], int]
    ack: Callable[[], Awaitable[None]]


async def _nothing(*_: Any) -> None:
    return None


OFFLINE = Edges(send_dead_letters=_nothing, publish_outbox=lambda: 0, ack=_nothing)
"""No broker: the dead letters go to the table only, the outbox stays pending, no offsets."""


async def checkpoint(
    decoded: Decoded, processor: BatchProcessor, *, run: Blocking, edges: Edges
) -> BatchReport:
    """Take one decoded micro-batch through every effect, in the order that makes redelivery
    harmless, and return the processor's report of it.

    1. dead letters → the DLQ topic (original bytes, reason, stage; keyed by source offset);
    2. sampled events → embed → nearest centroid → vector store upsert (id = uuid5(event_id));
       in the store's write-ahead log when it returns;
    3. dead letters → ``dead_letters`` table, every valid event → usage counts and dedup rows
       (one transaction);
    4. per language, base windows that became final → drift check; a drift goes to
       ``drift_events`` and the outbox in one transaction, and only a *new* row to the outbox;
    5. if a drift was recorded, the outbox relay publishes it (at least once; a crash leaves the
       row pending for the relay's timer);
    6. acknowledge the batch's offsets (committed only now).

    Steps 2–5 are blocking and run as one call through ``run`` (:func:`commit_batch`), so a
    shutdown lets the batch in hand finish them. An exception anywhere propagates and nothing
    is acknowledged.
    """
    await edges.send_dead_letters(decoded.dead_letters)
    report = await run(commit_batch, processor, decoded, edges.publish_outbox)
    await edges.ack()
    return report


def commit_batch(
    processor: BatchProcessor, decoded: Decoded, publish_outbox: Callable[[], int]
) -> BatchReport:
    """Steps 2–5 of :func:`checkpoint`, blocking (also the whole of
    :meth:`~streams.pipeline.BatchProcessor.process`, with no relay)."""
    batch = processor.prepare(decoded)
    processor.store_vectors(batch)
    counted = processor.store_counts(batch)
    verdicts = processor.check_drift(batch)
    if verdicts.drift_events:
        publish_outbox()
    return processor.report(batch, counted, verdicts)
