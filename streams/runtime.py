"""What the Faust agent needs at run time, opened once per worker and closed on shutdown.

:class:`StreamRuntime` owns the embedder, the vector store, the database store, the batch
processor and the outbox relay. All blocking work (embedding, Qdrant, PostgreSQL, the outbox
producer) runs on one dedicated thread, in batch order, so the event loop keeps serving Kafka
heartbeats while a batch is embedded. A batch that fails transiently (a service unavailable) is
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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from compass.bootstrap import Services
from compass.config import Settings
from compass.core.errors import is_transient
from compass.core.events import DeadLetter, encode
from streams.checkpoint import OFFLINE, Edges, checkpoint
from streams.exporter import export_batch, export_retry
from streams.pipeline import BatchProcessor, BatchReport
from streams.shedding import BatchStats, RateDecision
from streams.stages import RawMessage, dead_letter_key, decode_messages

log = structlog.get_logger(__name__)
T = TypeVar("T")
SHUTDOWN_GRACE_S = 8.0


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
    arrival_rate: float | None = None
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
        self.embed_capacity = decision.capacity
        self.arrival_rate = decision.arrival_rate
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
        self._last_batch_end: float | None = None
        self._next_offsets: dict[Any, int] = {}
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
        from compass.bootstrap import bootstrap

        settings = self.settings
        if not settings.database_url:
            from compass.core.errors import ConfigError

            raise ConfigError("the stream needs COMPASS_DATABASE_URL (compass streams sets it)")
        services = self._services = bootstrap(
            settings, embedding_cache=settings.stream_embedding_cache
        )
        embedder = services.embedder
        self._store = services.uow_factory
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
            "stream.ready", embedder=embedder.model_id, batch=settings.stream_batch_size,
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

    # ------------------------------------------------------------------ one batch
    async def handle(
        self,
        messages: list[RawMessage],
        dlq: Any,
        lag: Any = None,
        ack: Callable[[], Awaitable[None]] | None = None,
    ) -> BatchReport:
        """Decode, then run the batch's :func:`~streams.checkpoint.checkpoint` (its blocking
        steps on the batch thread), retrying until it succeeds; ``ack`` (idempotent)
        acknowledges the batch's offsets as the checkpoint's last step.

        Only transient failures (database or broker unavailable) reach the retry loop: the
        checkpoint isolates and dead-letters an event that fails deterministically, so a
        poison event never stalls the partition."""
        processor = await self.start()
        started = time.monotonic()
        decoded = decode_messages(
            messages,
            max_text_chars=self.settings.max_text_chars,
            max_event_bytes=self.settings.max_event_bytes,
            max_clock_skew_s=self.settings.stream_max_clock_skew_s,
            max_event_age_s=self.settings.stream_max_event_age_s,
        )
        edges = Edges(
            send_dead_letters=lambda letters: self._send_dead_letters(letters, dlq),
            publish_outbox=self.relay_outbox,
            ack=ack or OFFLINE.ack,
        )
        delay = 0.5
        while True:
            try:
                report = await checkpoint(decoded, processor, run=self.run_blocking, edges=edges)
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
        for message in messages:
            if message.partition is not None and message.offset is not None:
                key = (message.topic, message.partition)
                self._next_offsets[key] = max(self._next_offsets.get(key, 0), message.offset + 1)
        now = time.monotonic()
        interval = now - (self._last_batch_end if self._last_batch_end is not None else started)
        self._last_batch_end = now
        decision = processor.controller.update(
            BatchStats(
                n_events=report.n_valid,
                n_embedded=report.n_embedded,
                embed_seconds=report.embed_seconds,
                busy_seconds=report.busy_seconds,
                interval_seconds=interval,
                lag_events=lag(self._next_offsets) if lag is not None else None,
                batch_full=len(messages) >= self.settings.stream_batch_size,
            )
        )
        self.metrics.add(report, decision)
        export_batch(report, decision, decoded)
        log.debug(
            "stream.batch", n=len(messages), embedded=report.n_embedded,
            rate=round(report.sample_rate, 3), lag=decision.lag_events,
            busy_s=round(report.busy_seconds, 3),
            **{f"{k}_s": round(v, 3) for k, v in report.stage_seconds.items()},
        )  # fmt: skip
        if now - self._last_progress >= 10.0 or report.drift_events:
            self._last_progress = now
            log.info("stream.progress", **_loggable(self.metrics))
        await self.run_blocking(self._write_metrics)
        return report

    async def _send_dead_letters(self, letters: Sequence[DeadLetter], dlq: Any) -> None:
        if not letters or dlq is None:
            return
        pending = [
            await dlq.send(key=dead_letter_key(letter), value=encode(letter)) for letter in letters
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
