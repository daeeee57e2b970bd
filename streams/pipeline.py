"""One micro-batch's work, as the steps :func:`streams.checkpoint.checkpoint` runs in order.

:class:`BatchProcessor` prepares a batch (sample → embed → assign; nothing written) and owns its
sinks, each idempotent: the vector store, the usage counts and the drift check
(:class:`streams.drift_check.DriftChecker`). Everything here is synchronous: the stream runtime
runs it on its batch thread so that embedding does not stall the event loop and its heartbeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import structlog

from compass.config import Settings
from compass.core import windows
from compass.core.errors import is_transient
from compass.core.events import DeadLetter, DriftEvent, PromptEvent, utc_now
from compass.core.semantic_map import SemanticMap
from compass.core.windows import WindowPolicy
from compass.map_provider import SemanticMapProvider
from compass.ports.embedder import Embedder
from compass.ports.storage import SemanticMapRecord, UnitOfWork, UsageObservation
from compass.ports.vector_store import VectorPoint, VectorStore
from streams import stages
from streams.checkpoint import commit_batch
from streams.controller import SamplingController
from streams.drift_check import DetectorFactory, DriftChecker
from streams.shedding import StratifiedSampler

log = structlog.get_logger(__name__)
VECTOR_FLUSH_S = 5.0


def window_policy(settings: Settings) -> WindowPolicy:
    return WindowPolicy(
        base_seconds=settings.stream_window_seconds,
        allowed_lateness_seconds=settings.stream_allowed_lateness_s,
        min_events=settings.drift_min_events,
        reference_min_events=settings.drift_reference_min_events,
        max_span_windows=settings.drift_max_span_windows,
        cooldown_windows=settings.drift_cooldown_windows,
        blocks_per_window=settings.stream_blocks_per_window,
    )


@dataclass(frozen=True)
class BatchReport:
    n_valid: int
    n_dead: int
    n_counted: int
    n_embedded: int
    n_late: int
    sample_rate: float
    embed_seconds: float
    busy_seconds: float
    windows_checked: int
    drift_events: list[DriftEvent] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    poison: list[DeadLetter] = field(default_factory=list)
    """Valid events dead-lettered after decoding — processing them failed (``processing_error``)
    or their ``event_id`` was counted before with other content (``duplicate_event_id``); they
    are in ``n_valid``, not in ``n_dead`` (which counts the decoder's dead letters)."""

    @staticmethod
    def merge(
        parts: list[BatchReport], *, n_valid: int, n_dead: int, n_counted: int,
        poison: list[DeadLetter], sample_rate: float,
    ) -> BatchReport:  # fmt: skip
        """One report for a batch processed in parts (an isolated poison event)."""
        seconds: dict[str, float] = {}
        for part in parts:
            for stage, value in part.stage_seconds.items():
                seconds[stage] = seconds.get(stage, 0.0) + value
        return BatchReport(
            n_valid=n_valid,
            n_dead=n_dead,
            n_counted=n_counted,
            n_embedded=sum(p.n_embedded for p in parts),
            n_late=sum(p.n_late for p in parts),
            sample_rate=sample_rate,
            embed_seconds=sum(p.embed_seconds for p in parts),
            busy_seconds=sum(p.busy_seconds for p in parts),
            windows_checked=sum(p.windows_checked for p in parts),
            drift_events=[e for p in parts for e in p.drift_events],
            stage_seconds=seconds,
            poison=poison + [letter for part in parts for letter in part.poison],
        )


# --------------------------------------------------------------------------- the batch
@dataclass(frozen=True)
class PreparedBatch:
    """A decoded micro-batch made ready for its sinks; nothing is written yet.

    ``events`` are the unique valid events, ``points`` the embedded ones' vector points,
    ``observations`` one usage count per event; ``seconds`` collects each step's duration.
    """

    record: SemanticMapRecord
    dead_letters: list[DeadLetter]
    n_valid: int
    events: list[PromptEvent]
    sample_rate: float
    points: list[VectorPoint]
    observations: list[UsageObservation]
    n_late: int
    seconds: dict[str, float] = field(default_factory=dict)
    origins: Mapping[str, stages.Message] = field(default_factory=dict)
    conflicts: list[DeadLetter] = field(default_factory=list)
    """``duplicate_event_id`` dead letters: ids repeated in the batch with other content (found
    by :meth:`BatchProcessor.prepare`), then those counted before (:meth:`store_counts`)."""


@dataclass(frozen=True)
class WindowFailure:
    """A window whose drift check failed deterministically and was skipped."""

    language: str
    boundary: datetime
    error: BaseException


@dataclass(frozen=True)
class Verdicts:
    """What the drift step did: windows checked, the drift events newly recorded, and (when
    asked to skip them) the windows whose check failed."""

    windows_checked: int
    drift_events: list[DriftEvent]
    failed: list[WindowFailure] = field(default_factory=list)


class BatchProcessor:
    """The steps of a micro-batch after decoding, each synchronous and idempotent; their order
    is :func:`streams.checkpoint.checkpoint`'s."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder,
        vector_store: VectorStore,
        uow_factory: Callable[[], UnitOfWork],
        controller: SamplingController | None = None,
        maps: SemanticMapProvider | None = None,
        detectors: DetectorFactory | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.vector_store = vector_store
        self.uow_factory = uow_factory
        self.policy = window_policy(settings)
        self.maps = maps or SemanticMapProvider(uow_factory)
        self.controller = controller or SamplingController(
            forced_rate=settings.stream_sample_rate,
            min_rate=settings.stream_min_sample_rate,
            floor_embed_share=settings.stream_floor_embed_share,
            max_lag_s=settings.stream_max_lag_s,
        )
        self.sampler = StratifiedSampler(
            self.policy,
            rate=lambda: self.controller.rate,
            min_per_window=settings.stream_min_sampled_per_window,
        )
        self.checker = DriftChecker(settings, uow_factory, vector_store, self.policy, detectors)
        self.watermarks: dict[str, datetime] = {}
        self._flushed_at = time.monotonic()

    def check_ready(self) -> SemanticMap:
        """Fail early (clear message) when there is no usable semantic map."""
        semantic_map = self.maps.current().semantic_map
        if semantic_map.dim != self.embedder.dim:
            from compass.core.errors import ConfigError

            raise ConfigError(
                f"the active semantic map has dimension {semantic_map.dim} but the embedder "
                f"{self.embedder.model_id} gives {self.embedder.dim}"
            )
        return semantic_map

    def process(self, decoded: stages.Decoded) -> BatchReport:
        """Steps 2–4 of the checkpoint without a broker (no DLQ topic, the outbox left to the
        relay, no offsets), blocking: for tests and tools that feed batches directly."""
        return commit_batch(self, decoded, publish_outbox=lambda: 0)

    def prepare(self, decoded: stages.Decoded) -> PreparedBatch:
        """Sample → embed → assign clusters → vector points and usage observations."""
        started = time.perf_counter()
        record = self.maps.current()
        events = stages.unique_events(decoded.events)
        conflicts = [  # only across gathered polls: decode_messages catches them within one
            stages.duplicate_dead_letter(event, None, first)
            for event, first in stages.conflicting_repeats(decoded.events)
        ]
        rate = self.controller.rate
        if decoded.sampled is None:
            mask = self.sampler.choose(events)
        else:
            mask = np.fromiter((e.event_id in decoded.sampled for e in events), bool, len(events))
        reused = self._reused_ids(
            [e for e, keep in zip(events, mask.tolist(), strict=True) if keep]
        )
        if reused:  # counted before with other content: never embedded, never a vector point
            mask &= np.fromiter((e.event_id not in reused for e in events), bool, len(events))
        chosen = [e for e, keep in zip(events, mask.tolist(), strict=True) if keep]
        t0 = time.perf_counter()
        # shedding means the consumer is saturated: leave it a core (docs/streaming.md)
        self.embedder.leave_a_core(rate < 1.0)
        vectors = stages.embed_texts(self.embedder, [e.text for e in chosen])
        embed_seconds = time.perf_counter() - t0
        clusters = stages.assign_clusters(record.semantic_map, vectors)
        version = record.version
        batch = PreparedBatch(
            record=record,
            dead_letters=decoded.dead_letters,
            n_valid=len(decoded.events),
            events=events,
            sample_rate=rate,
            points=stages.vector_points(
                chosen,
                vectors,
                clusters,
                map_version=version,
                policy=self.policy,
                store_text=self.settings.store_text,
            ),
            observations=stages.usage_observations(
                events, mask, clusters, map_version=version, policy=self.policy
            ),
            n_late=sum(
                self.policy.is_late(e.occurred_at, self.watermarks.get(e.language)) for e in events
            ),
            origins=decoded.origins,
            conflicts=conflicts,
        )
        batch.seconds["embed"] = embed_seconds
        batch.seconds["prepare"] = time.perf_counter() - started - embed_seconds
        return batch

    def _reused_ids(self, chosen: list[PromptEvent]) -> set[str]:
        """Issue 14: the sampled events whose ``event_id`` was counted in an earlier flush with
        other content. Embedding one would overwrite the first event's point (uuid5 of the id)
        before the count step dead-letters it (``duplicate_event_id``); one indexed read of the
        sampled ids only (redeliveries with the same content pass)."""
        if not chosen:
            return set()
        with self.uow_factory() as uow:
            return uow.usage.reused_ids([(e.event_id, e.content_digest) for e in chosen])

    def store_vectors(self, batch: PreparedBatch) -> None:
        """Upsert the points (in Qdrant's write-ahead log once this returns)."""
        started = time.perf_counter()
        if batch.points:
            self.vector_store.upsert(batch.points)
            self._maybe_flush()
        batch.seconds["store"] = time.perf_counter() - started

    def store_counts(self, batch: PreparedBatch) -> int:
        """Dead letters and usage counts in one transaction; the number of events newly
        counted (a redelivered event is not counted again). An event whose ``event_id`` was
        counted before with other content is not counted: its ``duplicate_event_id`` dead
        letter joins ``batch.conflicts``, written in the same transaction (the report's
        ``poison``, which the checkpoint sends to the DLQ topic)."""
        started = time.perf_counter()
        with self.uow_factory() as uow:
            uow.dead_letters.record_dead_letters(batch.dead_letters)
            recorded = uow.usage.record_usage_checked(batch.observations)
            n_counted = recorded.counted
            if recorded.conflicts:
                by_id = {e.event_id: e for e in batch.events}
                batch.conflicts.extend(
                    stages.duplicate_dead_letter(by_id[i], batch.origins.get(i))
                    for i in dict.fromkeys(recorded.conflicts)
                )
            uow.dead_letters.record_dead_letters(batch.conflicts)
            uow.commit()
        batch.seconds["count"] = time.perf_counter() - started
        return n_counted

    def check_drift(self, batch: PreparedBatch, *, skip_failed: bool = False) -> Verdicts:
        """Advance the watermarks (never past the wall clock plus the allowed clock skew) and
        judge every window that became final, per language.

        A failing check raises (and no watermark moves) unless ``skip_failed``: then a
        deterministic failure skips that window (logged, returned in ``failed``) and the others
        go on; a transient one (:func:`~compass.core.errors.is_transient`) still raises."""
        started = time.perf_counter()
        watermarks = dict(self.watermarks)
        limit = utc_now() + timedelta(seconds=self.settings.stream_max_clock_skew_s)
        closed = windows.advance_watermarks(watermarks, batch.events, self.policy, limit=limit)
        drift_events, checked, failed = [], 0, []
        for language, boundaries in sorted(closed.items()):
            for boundary in boundaries:
                checked += 1
                try:
                    event = self.checker.check(language, boundary, batch.record, watermarks)
                except Exception as exc:
                    if not skip_failed or is_transient(exc):
                        raise
                    log.error(
                        "drift.window_failed", language=language, boundary=boundary.isoformat(),
                        error=repr(exc)[:300],
                    )  # fmt: skip
                    failed.append(WindowFailure(language, boundary, exc))
                    continue
                if event is not None:
                    drift_events.append(event)
        self.watermarks = watermarks  # only once every check of this batch is done
        batch.seconds["drift"] = time.perf_counter() - started
        return Verdicts(checked, drift_events, failed)

    def store_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Record dead letters in their own transaction (those of an isolated batch)."""
        if not letters:
            return
        with self.uow_factory() as uow:
            uow.dead_letters.record_dead_letters(letters)
            uow.commit()

    def report(self, batch: PreparedBatch, n_counted: int, verdicts: Verdicts) -> BatchReport:
        return BatchReport(
            n_valid=batch.n_valid,
            n_dead=len(batch.dead_letters),
            n_counted=n_counted,
            n_embedded=len(batch.points),
            n_late=batch.n_late,
            sample_rate=batch.sample_rate,
            embed_seconds=batch.seconds.get("embed", 0.0),
            busy_seconds=sum(batch.seconds.values()),
            stage_seconds=dict(batch.seconds),
            windows_checked=verdicts.windows_checked,
            drift_events=verdicts.drift_events,
            poison=list(batch.conflicts),
        )

    def _maybe_flush(self) -> None:
        """Flush store segments every ``VECTOR_FLUSH_S``: an upsert is already in Qdrant's
        write-ahead log, which survives a killed worker (tested); a flush per batch would cost
        ~0.1 s of every ~1 s batch for protection against power loss only."""
        now = time.monotonic()
        if now - self._flushed_at >= VECTOR_FLUSH_S:
            self.vector_store.flush()
            self._flushed_at = now
