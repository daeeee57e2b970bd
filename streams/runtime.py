"""What the Faust agent needs at run time, opened once per worker and closed on shutdown.

:class:`StreamRuntime` owns the embedder, the vector store, the database store, the batch
processor, the gatherer (:mod:`streams.gather`) and the outbox relay. Consumed batches are
decoded, their sample decided and gathered into flushes; one flush at a time is checkpointed
while the agent consumes the next. All blocking work (embedding, Qdrant, PostgreSQL, the outbox
producer) runs on one dedicated thread, in flush order, so the event loop keeps serving Kafka
heartbeats while a flush is embedded. After each flush the controller
(:mod:`streams.controller`) sets the rate from its cost and the consumer's own lag
(:meth:`StreamRuntime.lag_events`). A batch that fails transiently (a service unavailable) is
retried with back-off and never acknowledged; one that fails because of an event is isolated by
the checkpoint (the event dead-lettered, the rest processed). On shutdown the thread finishes
the batch in hand before anything is closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from compass.bootstrap import Services
from compass.config import Settings
from compass.core.errors import is_transient
from compass.core.events import DeadLetter, encode, utc_now
from streams.checkpoint import OFFLINE, Edges, checkpoint
from streams.controller import FlushStats, RateDecision
from streams.exporter import export_batch, export_retry
from streams.gather import Flush, Gatherer
from streams.pipeline import BatchProcessor, BatchReport
from streams.stages import Decoded, Message, dead_letter_key, decode_messages

log = structlog.get_logger(__name__)
T = TypeVar("T")
SHUTDOWN_GRACE_S = 8.0
METRICS_EVERY_S = 2.0
OVERFILL_BATCHES = 8
"""While a flush is in flight, the next one keeps gathering up to this many embedding batches
(and the event bound) instead of stopping the consumer at one: the batch thread is busy anyway,
and a flush's fixed steps (transaction, upsert, drift check, commit) are then paid once."""


@dataclass
class StreamMetrics:
    """Counters since start plus the latest load-shedding picture (logged and written as JSON)."""

    started_at: float
    batches: int = 0
    events: int = 0
    counted: int = 0
    embedded: int = 0
    dead_letters: int = 0
    late_events: int = 0
    drift_events: int = 0
    windows_checked: int = 0
    retries: int = 0
    sample_rate: float = 1.0
    lag_events: int | None = None
    max_lag_events: int = 0
    lag_seconds: float | None = None
    embed_capacity: float | None = None
    capacity: float | None = None
    arrival_rate: float | None = None
    event_lag_seconds: float | None = None
    events_per_s: float = 0.0

    def add(self, report: BatchReport, decision: RateDecision) -> None:
        self.batches += 1
        self.events += report.n_valid + report.n_dead
        self.counted += report.n_counted
        self.embedded += report.n_embedded
        self.dead_letters += report.n_dead + len(report.poison)
        self.late_events += report.n_late
        self.drift_events += len(report.drift_events)
        self.windows_checked += report.windows_checked
        self.sample_rate = decision.rate
        self.lag_events = decision.lag_events
        self.max_lag_events = max(self.max_lag_events, decision.lag_events or 0)
        self.lag_seconds = decision.lag_seconds
        self.embed_capacity = decision.embed_capacity
        self.capacity = decision.capacity
        self.arrival_rate = decision.arrival_rate
        self.event_lag_seconds = decision.event_lag_seconds
        elapsed = max(time.monotonic() - self.started_at, 1e-9)
        self.events_per_s = self.events / elapsed


class StreamRuntime:
    """Resources of one stream worker; :meth:`handle` processes one consumed micro-batch."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compass-batch")
        self._lock = asyncio.Lock()
        self.processor: BatchProcessor | None = None
        self._store: Any = None
        self._vector_store: Any = None
        self._producer: Any = None
        self._services: Services | None = None
        self.metrics = StreamMetrics(started_at=time.monotonic())
        self.gatherer = Gatherer(
            embed_batch=settings.stream_embed_batch_size,
            max_events=settings.stream_max_batch_events,
            max_wait_s=settings.stream_batch_within_s,
        )
        self._flush_lock = asyncio.Lock()
        self._inflight: asyncio.Future[BatchReport] | None = None
        self._dlq: Any = None
        self._last_flush_end: float | None = None
        self._next_offsets: dict[tuple[str, int], int] = {}
        self.log_end: dict[tuple[str, int], int] = {}
        self.commit: Callable[[Mapping[tuple[str, int], int]], Awaitable[None]] | None = None
        """Commits a durable flush's next offsets (the consumer's, :mod:`streams.consumer`);
        ``None``: nothing to commit (no broker, or only the per-batch ``ack`` of
        :meth:`handle`)."""
        self._metrics_written = 0.0
        self._metrics_dirty = False
        self._last_progress = 0.0
        self._closed = False
        self.metrics_path: Path = settings.data_dir / "streams" / f"metrics-{os.getpid()}.json"

    # ------------------------------------------------------------------ lifecycle
    async def run_blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def open(self) -> BatchProcessor:
        """Open every resource (blocking); idempotent."""
        if self.processor is not None:
            return self.processor
        from compass.bootstrap import bootstrap, open_unit_of_work

        settings = self.settings
        if not settings.database_url:
            from compass.core.errors import ConfigError

            raise ConfigError("the stream needs COMPASS_DATABASE_URL (compass streams sets it)")
        # no ping per checkout: a dead connection fails the flush transiently and it is retried
        self._store = open_unit_of_work(settings, pre_ping=False)
        services = self._services = bootstrap(
            settings, uow_factory=self._store, embedding_cache=settings.stream_embedding_cache
        )
        embedder = services.embedder
        self._vector_store = services.vector_store
        processor = BatchProcessor(
            settings,
            embedder=embedder,
            vector_store=self._vector_store,
            uow_factory=self._store,
            maps=services.maps,
            detectors=services.detectors,
        )
        processor.check_ready()
        self.processor = processor
        log.info(
            "stream.ready", embedder=embedder.model_id, take=settings.stream_batch_size,
            embed_batch=settings.stream_embed_batch_size,
            forced_rate=settings.stream_sample_rate, window_s=settings.stream_window_seconds,
        )  # fmt: skip
        return processor

    async def start(self) -> BatchProcessor:
        async with self._lock:
            if self.processor is None:
                await self.run_blocking(self.open)
            assert self.processor is not None
            return self.processor

    def close(self) -> None:
        """Finish the batch in hand, then close everything (blocking)."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        for resource in (self._producer, self._vector_store):
            if resource is not None:
                try:
                    resource.close()
                except Exception:  # closing is best effort; the data is already durable
                    log.exception("stream.close_failed")
        if self._store is not None:
            self._store.dispose()
        self._write_metrics()
        log.info("stream.stopped", **_loggable(self.metrics))

    # ------------------------------------------------------------------ consumed batches
    async def handle(
        self,
        messages: Sequence[Message],
        dlq: Any,
        ack: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Take one consumed batch: decode it, decide its sample (stratified, at the current
        rate) and gather it (:mod:`streams.gather`); flush when a bound is reached. ``ack``
        (idempotent) acknowledges the batch; it is called by the flush that contains it, as
        the checkpoint's last step."""
        processor = await self.start()
        self._dlq = dlq
        decoded = decode_messages(
            messages,
            max_text_chars=self.settings.max_text_chars,
            max_event_bytes=self.settings.max_event_bytes,
            max_clock_skew_s=self.settings.stream_max_clock_skew_s,
            max_event_age_s=self.settings.stream_max_event_age_s,
        )
        events, start, first = decoded.events, 0, True
        while True:  # a consumed batch whose sample would overfill a flush is split
            gatherer = self.gatherer
            budget = max(1, self._sample_cap() - gatherer.n_sampled)
            room = gatherer.max_events - gatherer.n_waiting
            chosen, end = processor.sampler.choose_within(events, start, budget, room)
            last = end >= len(events)
            part_events = events[start:end]  # with their own origins only: an id's origin in
            # another part (another flush) would key its dead letter with the wrong position
            if start == 0 and end >= len(events):
                origins = decoded.origins  # the whole batch: every origin is its own
            else:
                origins = {e.event_id: decoded.origins[e.event_id] for e in part_events}
            part = Decoded(part_events, decoded.dead_letters if first else [], origins)
            self.gatherer.add(part, chosen, (ack or OFFLINE.ack) if last else None,
                              messages if last else ())  # fmt: skip
            start, first = end, False
            if self._should_flush():
                await self.flush()  # may update the rate the rest is decided at
            if last:
                return

    def _busy(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    def _sample_cap(self) -> int:
        """Most sampled events the gathered flush may hold now: one embedding batch, or
        :data:`OVERFILL_BATCHES` of them while a flush is in flight and the rate is known (forced,
        or set by the controller from a measured embedding cost — not the initial 1.0, which
        would fill an overfilled flush with texts the controller is about to shed)."""
        gatherer = self.gatherer
        controller = self.processor.controller if self.processor is not None else None
        known = controller is not None and (
            controller.forced_rate is not None or controller.embed_cost is not None
        )
        if known and self._busy():
            return gatherer.embed_batch * OVERFILL_BATCHES
        return gatherer.embed_batch

    def _should_flush(self) -> bool:
        """A bound is reached and either nothing is in flight or the gathered events may not
        grow further (:meth:`_sample_cap` sampled events, or the event bound)."""
        gatherer = self.gatherer
        if not gatherer.due():
            return False
        if not self._busy():
            return True
        return gatherer.n_sampled >= self._sample_cap() or gatherer.n_waiting >= gatherer.max_events

    @property
    def flush_deferred(self) -> bool:
        """A flush is due but waits for the one in flight (the consumer then polls often, so
        it starts as soon as that one ends)."""
        return self._inflight is not None and self.gatherer.due()

    async def flush_if_due(self) -> None:
        """The timer's and the idle consumer's call: flush waiting events once a bound is
        reached (a quiet stream's time bound included) and the flush in flight is done."""
        if self._should_flush():
            await self.flush()
        if self._metrics_dirty and time.monotonic() - self._metrics_written >= METRICS_EVERY_S:
            await self.run_blocking(self._write_metrics)

    async def flush(self, wait: bool = False) -> None:
        """Checkpoint everything gathered. One flush is in flight at a time: this waits for
        the previous one (so acknowledgements stay in consumption order), starts this one and
        returns while it runs on the batch thread — the agent consumes the next batches
        meanwhile. ``wait``: return only when this flush is done."""
        async with self._flush_lock:
            batch = self.gatherer.take()
            await self._finish_inflight()
            if batch is not None:
                self._inflight = asyncio.ensure_future(self._checkpoint(batch))
            if wait:
                await self._finish_inflight()

    async def _finish_inflight(self) -> None:
        """Wait for the flush in flight; its failure (not a retried one: those never end)
        propagates once, to the caller — the agent, whose death stops the process."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    async def _checkpoint(self, batch: Flush) -> BatchReport:
        """Run the flush's :func:`~streams.checkpoint.checkpoint` (its blocking steps on the
        batch thread), retrying until it succeeds, then feed the controller.

        Only transient failures (database or broker unavailable) reach the retry loop: the
        checkpoint isolates and dead-letters an event that fails deterministically, so a
        poison event never stalls the partition."""
        processor = await self.start()
        dlq = self._dlq
        edges = Edges(
            send_dead_letters=lambda letters: self._send_dead_letters(letters, dlq),
            publish_outbox=self.relay_outbox,
            ack=lambda: self._acknowledge(batch),
        )
        delay = 0.5
        while True:
            try:
                report = await checkpoint(
                    batch.decoded, processor, run=self.run_blocking, edges=edges
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the batch, do not ack it, try again
                self.metrics.retries += 1
                export_retry()
                log.error(
                    "stream.batch_failed", error=repr(exc)[:300], retry_in_s=delay,
                    transient=is_transient(exc),
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        for key, position in batch.positions.items():
            self._next_offsets[key] = max(self._next_offsets.get(key, 0), position)
        now = time.monotonic()
        since = batch.opened_at
        if self._last_flush_end is not None:
            since = max(since, self._last_flush_end)
        self._last_flush_end = now
        event_lag = event_span = None
        if batch.newest is not None and batch.oldest is not None:
            event_lag = (utc_now() - batch.newest).total_seconds()
            event_span = (batch.newest - batch.oldest).total_seconds()
        lag = self.lag_events()
        decision = processor.controller.update(
            FlushStats(
                n_events=report.n_valid,
                n_embedded=report.n_embedded,
                embed_seconds=report.embed_seconds,
                busy_seconds=report.busy_seconds,
                interval_seconds=now - since,
                # events were waiting all along: a full flush with a backlog behind it
                saturated=batch.by_size and (lag is None or 2 * lag >= batch.n_messages),
                lag_events=lag,
                event_lag_seconds=event_lag,
                event_span_seconds=event_span,
            )
        )
        self.metrics.add(report, decision)
        self._metrics_dirty = True
        export_batch(report, decision, batch.decoded)
        log.debug(
            "stream.batch", n=batch.n_messages, embedded=report.n_embedded,
            rate=round(decision.rate, 4), lag=decision.lag_events,
            busy_s=round(report.busy_seconds, 3),
            **{f"{k}_s": round(v, 3) for k, v in report.stage_seconds.items()},
        )  # fmt: skip
        if now - self._last_progress >= 10.0 or report.drift_events:
            self._last_progress = now
            log.info("stream.progress", **_loggable(self.metrics))
        if now - self._metrics_written >= METRICS_EVERY_S:
            await self.run_blocking(self._write_metrics)
        return report

    async def _acknowledge(self, batch: Flush) -> None:
        """The checkpoint's last step: the consumed batches' acks, then the offsets committed
        (idempotent: a failed checkpoint is retried as a whole)."""
        await batch.ack()
        if self.commit is not None:
            await self.commit(batch.positions)

    # ------------------------------------------------------------------ lag
    def start_behind(self, backlog: int) -> None:
        """The consumer's first fetch found ``backlog`` events behind it: shed from the first
        flush when that is more than one flush (:meth:`SamplingController.start_behind`)."""
        if self.processor is not None and self.processor.controller.start_behind(
            backlog, self.gatherer.max_events
        ):
            log.info("stream.starting_behind", backlog=backlog, rate=self.processor.controller.rate)

    def observe_log_end(self, ends: Mapping[tuple[str, int], int]) -> None:
        """Record log-end offsets the consumer saw (ListOffsets, fetch high-water marks); the
        largest figure seen for a partition wins (Tansu's ListOffsets can under-report)."""
        for key, end in ends.items():
            if end is not None and end >= 0:
                self.log_end[key] = max(self.log_end.get(key, 0), int(end))

    def lag_events(self) -> int | None:
        """Events waiting on this worker's partitions: log end minus processed position,
        summed over partitions this worker has processed (``None`` before any log end)."""
        if not self.log_end:
            return None
        return sum(
            max(0, end - self._next_offsets[key])
            for key, end in self.log_end.items()
            if key in self._next_offsets
        )

    async def _send_dead_letters(self, letters: Sequence[DeadLetter], dlq: Any) -> None:
        """Hand every letter to the producer, then await their delivery once (straight to the
        app's producer: ``Topic.send`` costs ~0.1 ms a message, issue 14's goodput)."""
        if not letters or dlq is None:
            return
        producer = await dlq.app.maybe_start_producer()
        topic = dlq.get_topic_name()
        pending = [
            await producer.send(topic, dead_letter_key(letter), encode(letter), None, None, None)
            for letter in letters
        ]
        await asyncio.gather(*pending)  # delivered before the batch can be acknowledged

    # ------------------------------------------------------------------ outbox
    def relay_outbox(self) -> int:
        """Publish pending outbox rows (drift events) at least once (blocking)."""
        if self._services is None or not self._services.can_publish:
            return 0
        self._producer = self._services.publisher  # opened on first use, closed by close()
        return self._services.relay().drain()

    def _write_metrics(self) -> None:
        """The metrics as JSON (every ``METRICS_EVERY_S`` and at close, not every batch)."""
        self._metrics_written = time.monotonic()
        self._metrics_dirty = False
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.metrics), indent=1, sort_keys=True))
        tmp.replace(self.metrics_path)


def _loggable(metrics: StreamMetrics) -> dict[str, Any]:
    data = asdict(metrics)
    data.pop("started_at")
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


def arm_shutdown_watchdog(grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """Exit the process if shutting down takes longer than ``grace_s``.

    Only for worker processes: a stuck shutdown (Faust can hang on it) must not keep them
    alive, and exiting is safe because offsets are only committed after effects are durable.
    """

    def _hard_exit() -> None:
        log.warning("stream.shutdown_timeout", grace_s=grace_s)
        os._exit(0)

    timer = threading.Timer(grace_s, _hard_exit)
    timer.daemon = True
    timer.start()


def prepare_services(settings: Settings) -> Settings:
    """``settings`` with every service reachable (:func:`compass.bootstrap.prepare_services`)."""
    from compass.bootstrap import prepare_services as prepare

    return prepare(settings)


def preflight(settings: Settings, semantic_map_path: Path | None = None) -> int:
    """Make sure a semantic map is active; return its database version
    (:func:`compass.bootstrap.ensure_semantic_map`)."""
    from compass.bootstrap import ensure_semantic_map

    assert settings.database_url is not None
    return ensure_semantic_map(settings, semantic_map_path)
