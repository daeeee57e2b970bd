"""The checkpoint: the one function that fixes the order of a micro-batch's effects.

Delivery is at-least-once (offsets are committed only after the effects are durable) and every
sink is idempotent on a natural key, so a crash anywhere before the acknowledgement replays the
batch and every step then finds its work done and changes nothing. :func:`checkpoint` is the only
place that says in which order; the docstrings elsewhere point here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from compass.core.errors import is_transient
from compass.core.events import DeadLetter, PromptEvent
from streams.stages import Decoded, processing_dead_letter

if TYPE_CHECKING:
    from streams.pipeline import BatchProcessor, BatchReport, WindowFailure

T = TypeVar("T")
log = structlog.get_logger(__name__)


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
    decoded: Decoded,
    processor: BatchProcessor,
    *,
    run: Blocking,
    edges: Edges,
    aside: Blocking | None = None,
) -> BatchReport:
    """Take one decoded micro-batch through every effect, in the order that makes redelivery
    harmless, and return the processor's report of it.

    1. the decoder's dead letters, started together and running *while* steps 2–5 run:
       a. → the DLQ topic (original bytes, reason, stage; keyed by source offset), produced
          all at once and delivered on the event loop;
       b. → the ``dead_letters`` table, in their own transaction on a thread of their own
          (``aside``; PostgreSQL writes them while the batch thread works on the events);
    2. sampled events → embed → nearest centroid → vector store upsert (id = uuid5(event_id));
       in the store's write-ahead log when it returns;
    3. every valid event → usage counts and dedup rows (one transaction);
    4. per language, base windows that became final → drift check; a drift goes to
       ``drift_events`` and the outbox in one transaction, and only a *new* row to the outbox;
    5. if a drift was recorded, the outbox relay publishes it (at least once; a failure or a
       crash leaves the row pending for the relay's timer);
    6. both parts of step 1 are awaited; events that failed deterministically in 2–4
       (isolated by :func:`commit_batch`, which also writes them to the table) → the DLQ
       topic;
    7. acknowledge the batch's offsets (committed only now).

    The order between 1 and 2–5 does not matter: every one of them is idempotent on its own
    key and none reads another's output; what matters is that all of them are durable before
    step 7. Steps 2–5 are blocking and run as one call through ``run`` (:func:`commit_batch`),
    so a shutdown lets the batch in hand finish them. An exception anywhere (a transient
    failure: database or broker unavailable) propagates and nothing is acknowledged; step 1
    is always awaited before the checkpoint ends (its own failure logged when another one
    propagates), so a retried batch never overlaps the writes of its previous attempt.
    """
    letters = decoded.dead_letters
    aside_run: Blocking = aside or asyncio.to_thread
    side: list[asyncio.Future[Any]] = [asyncio.ensure_future(edges.send_dead_letters(letters))]
    if letters:
        side.append(asyncio.ensure_future(aside_run(processor.store_dead_letters, letters)))
    events = Decoded(decoded.events, [], decoded.origins, decoded.sampled)
    try:
        report = await run(commit_batch, processor, events, edges.publish_outbox)
    except asyncio.CancelledError:
        for task in side:
            task.cancel()
        raise
    except Exception:
        await _settle(side, raise_first=False)
        raise
    await _settle(side, raise_first=True)
    if report.poison:
        await edges.send_dead_letters(report.poison)
    await edges.ack()
    return dataclasses.replace(report, n_dead=len(letters))


async def _settle(tasks: Sequence[asyncio.Future[Any]], *, raise_first: bool) -> None:
    """Wait for every task; then raise the first failure, or only log them."""
    await asyncio.wait(tasks)
    errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    for error in errors[1:] if raise_first else errors:
        log.warning("stream.dead_letters_failed", error=repr(error)[:300])
    if raise_first and errors:
        raise errors[0]  # type: ignore[misc]


class StageFailed(Exception):
    """Steps 2–4 failed at ``stage`` with ``error``; ``counted`` events were counted first."""

    def __init__(self, stage: str, error: BaseException, counted: int) -> None:
        super().__init__(f"{stage}: {error!r}")
        self.stage, self.error, self.counted = stage, error, counted


def commit_batch(
    processor: BatchProcessor, decoded: Decoded, publish_outbox: Callable[[], int]
) -> BatchReport:
    """Steps 2–5 of :func:`checkpoint`, blocking (also the whole of
    :meth:`~streams.pipeline.BatchProcessor.process`, with no relay).

    No single event can stall the partition: when a step fails deterministically (anything
    :func:`~compass.core.errors.is_transient` does not call transient) the batch is bisected,
    each half going through the same steps in order, until the failing event is alone; it is
    dead-lettered (reason ``processing_error``, the stage, the exception) and the rest of the
    batch goes on. A lone event whose window fails to be judged or recorded is counted, its
    window skipped, and it is dead-lettered too (stage ``drift``, ``drift_record`` or
    ``outbox``). A transient failure propagates: the runtime retries the batch with back-off.
    """
    from streams.pipeline import BatchReport

    try:
        return _steps(processor, decoded, publish_outbox)[0]
    except StageFailed as failure:
        if is_transient(failure.error) or not decoded.events:
            raise failure.error from None
        log.warning(
            "stream.batch_isolating", stage=failure.stage, error=repr(failure.error)[:300],
            n_events=len(decoded.events),
        )  # fmt: skip
        first = failure
    parts: list[BatchReport] = []
    poison: list[DeadLetter] = []
    counted = [first.counted]

    def walk(events: list[PromptEvent]) -> None:
        try:
            report, failed = _steps(
                processor, decoded.part(events), publish_outbox, alone=len(events) == 1
            )
        except StageFailed as failure:
            if is_transient(failure.error):
                raise failure.error from None
            counted[0] += failure.counted
            if len(events) > 1:
                middle = len(events) // 2
                walk(events[:middle])
                walk(events[middle:])
                return
            poison.append(_poison(decoded, events[0], failure.stage, failure.error))
            return
        parts.append(report)
        counted[0] += report.n_counted
        for window in failed:  # only when alone: the event is counted, its window skipped
            poison.append(
                _poison(decoded, events[0], _stage_of("drift", window.error), window.error)
            )

    walk(list(decoded.events))
    stored_decode_letters = first.stage not in ("embed", "vector_upsert", "count")
    processor.store_dead_letters(poison + ([] if stored_decode_letters else decoded.dead_letters))
    for letter in poison:
        log.error("stream.event_dead_lettered", stage=letter.stage, offset=letter.offset,
                  detail=letter.detail[:300])  # fmt: skip
    return BatchReport.merge(
        parts, n_valid=len(decoded.events), n_dead=len(decoded.dead_letters),
        n_counted=counted[0], poison=poison, sample_rate=processor.controller.rate,
    )  # fmt: skip


def _steps(
    processor: BatchProcessor,
    decoded: Decoded,
    publish_outbox: Callable[[], int],
    *,
    alone: bool = False,
) -> tuple[BatchReport, list[WindowFailure]]:
    """Steps 2–5 once, in order; a failure in 2–4 raises :class:`StageFailed` naming the step.
    ``alone`` (one event): a window whose check fails is skipped and returned, not raised."""
    stage, counted = "embed", 0
    try:
        batch = processor.prepare(decoded)
        stage = "vector_upsert"
        processor.store_vectors(batch)
        stage = "count"
        counted = processor.store_counts(batch)
        stage = "drift"
        verdicts = processor.check_drift(batch, skip_failed=alone)
    except Exception as exc:
        raise StageFailed(_stage_of(stage, exc), exc, counted) from exc
    if verdicts.drift_events:
        try:
            publish_outbox()
        except Exception as exc:  # the rows stay pending; the relay's timer publishes them
            log.warning("stream.outbox_publish_failed", error=repr(exc)[:300])
    return processor.report(batch, counted, verdicts), verdicts.failed


def _stage_of(stage: str, error: BaseException) -> str:
    """``drift`` narrowed to ``drift_record`` or ``outbox`` when the failure was writing the
    drift event or its outbox row (read from the traceback)."""
    if stage != "drift":
        return stage
    names = {frame.f_code.co_name for frame, _ in traceback.walk_tb(error.__traceback__)}
    if "add_outbox" in names:
        return "outbox"
    if "record_drift_event" in names:
        return "drift_record"
    return stage


def _poison(decoded: Decoded, event: PromptEvent, stage: str, error: BaseException) -> DeadLetter:
    return processing_dead_letter(
        event, decoded.origins.get(event.event_id), stage=stage, error=error
    )
