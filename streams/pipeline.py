"""One micro-batch, start to finish, in the order that makes redelivery harmless.

:class:`BatchProcessor` is synchronous on purpose: the Faust agent runs it in a worker thread
(embedding would otherwise stall the event loop and its heartbeats) and acknowledges the batch's
offsets only after it returns. Order of effects, each idempotent:

1. dead letters → the ``dead_letters`` table (by source/partition/offset; the DLQ topic send
   happens in the agent before this);
2. sampled events → embed → nearest centroid → vector store upsert (id = uuid5(event_id));
   the upsert is in the store's write-ahead log when it returns (segments are flushed every few
   seconds and on shutdown);
3. every valid event → ``record_usage`` (dedup row and counts in one transaction);
4. per language, base windows that became final → drift check; a drift is written to
   ``drift_events`` and the outbox in one transaction, and only a *new* row goes to the outbox.
   The outbox relay then publishes it at least once (crash-safe re-sending).

A crash anywhere before the acknowledgement replays the batch; every step above then finds its
work done and changes nothing.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import structlog

from compass.config import Settings
from compass.core.drift import (
    DriftConfig,
    DriftResult,
    JSDriftDetector,
    Span,
    WindowPolicy,
    plan_windows,
)
from compass.core.events import DriftEvent, PromptEvent
from compass.core.semantic_map import SemanticMap
from compass.ports.embedder import Embedder
from compass.ports.storage import AdapterVersionRecord, DriftRecord, SemanticMapRecord, UnitOfWork
from compass.qdrant.store import VectorStore
from streams import stages
from streams.shedding import SamplingController

log = structlog.get_logger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACTIVE_LOOKBACK = timedelta(days=7)
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


class MapProvider:
    """The active semantic map, re-read from the database every ``refresh_s`` seconds."""

    def __init__(self, uow_factory: Callable[[], UnitOfWork], refresh_s: float = 30.0) -> None:
        self._uow_factory = uow_factory
        self._refresh_s = refresh_s
        self._record: SemanticMapRecord | None = None
        self._read_at = 0.0

    def current(self) -> SemanticMapRecord:
        now = time.monotonic()
        if self._record is None or now - self._read_at > self._refresh_s:
            with self._uow_factory() as uow:
                record = uow.semantic_maps.active_semantic_map()
            if record is None:
                from compass.core.errors import ConfigError

                raise ConfigError(
                    "no active semantic map in the database: build and activate one first"
                )
            if self._record is None or record.version != self._record.version:
                log.info("stream.semantic_map", version=record.version, k=record.semantic_map.k)
            self._record, self._read_at = record, now
        return self._record


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


class DriftChecker:
    """Judges one language's window that just became final (see :mod:`compass.core.drift`)."""

    def __init__(
        self,
        settings: Settings,
        uow_factory: Callable[[], UnitOfWork],
        vector_store: VectorStore,
        policy: WindowPolicy,
    ) -> None:
        self.settings = settings
        self._uow_factory = uow_factory
        self._store = vector_store
        self.policy = policy
        self._detectors: dict[tuple[object, ...], JSDriftDetector] = {}

    def check(
        self,
        language: str,
        boundary: datetime,
        record: SemanticMapRecord,
        known_languages: Iterable[str] = (),
    ) -> DriftEvent | None:
        """Judge ``language``'s window ending at ``boundary``; return a *newly* recorded drift.

        The number of languages tested (Bonferroni's ``m``) is every language with usage in the
        last week or seen by this worker: partitions are consumed independently, so "active
        right now" would depend on which partition the consumer happened to read first."""
        version = record.version
        policy = self.policy
        with self._uow_factory() as uow:
            last = uow.drift.last_drift_event(language)
            if last is not None and last.semantic_map_version != version:
                last = None
            if last is not None and last.window_end >= boundary:
                return None  # judged past this point already (a replay)
            active = uow.adapters.active_version(language, self.settings.base_model_id)
            use_adapter = _adapter_reference_applies(active, last, record)
            since = (
                EPOCH if last is None else last.window_end + policy.base * policy.cooldown_windows
            )
            by_block = uow.usage.usage_by_window(language, since, boundary, version)
            if not by_block:
                return None
            by_window = stages.group_windows(by_block, policy)
            anchor = since if last is not None else min(by_window)
            plan = plan_windows(
                stages.window_bins(by_window),
                policy,
                anchor=anchor,
                until=boundary,
                need_reference=not use_adapter,
            )
            if not plan.tests or plan.tests[-1].end != boundary:
                return None
            span = plan.tests[-1]
            if not span.enough:
                log.info(
                    "drift.skipped", language=language, window_start=span.start.isoformat(),
                    n_sampled=span.n_sampled, reason="too few events in the longest window",
                )  # fmt: skip
                return None
            active_languages = set(uow.usage.languages_with_usage(boundary - ACTIVE_LOOKBACK))
            n_tests = max(1, len(active_languages | set(known_languages)))
            if use_adapter:
                assert active is not None
                detector = self._detector(
                    language, n_tests, record, active.reference_distribution, None, None
                )
                reference_version: int | None = active.number
            elif plan.reference is not None:
                ref = plan.reference
                detector = self._detector(
                    language,
                    n_tests,
                    record,
                    stages.span_counts(by_window, ref),
                    stages.span_blocks(by_block, ref, record.semantic_map.k),
                    ref.n_sampled / max(ref.n_events, 1),
                )
                reference_version = None
            else:
                return None
            result = detector.score(
                stages.span_counts(by_window, span),
                n_events=span.n_events,
                sample_rate=span.n_sampled / max(span.n_events, 1),
            )
            _log_result(language, span.start, span.end, result, n_tests)
            if not result.is_drift:
                return None
            event = stages.build_drift_event(
                language=language,
                span=span,
                result=result,
                map_version=version,
                reference_version=reference_version,
                sample_texts=self._sample_texts(
                    language, [span, *([plan.reference] if plan.reference else [])], result, version
                ),
            )
            if not uow.drift.record_drift_event(event):
                return None  # this window's drift is already recorded (and in the outbox)
            uow.outbox.add_outbox(
                self.settings.topic_drift_events, language, event.model_dump(mode="json")
            )
            uow.commit()
        log.warning(
            "drift.detected", language=language, window_start=span.start.isoformat(),
            statistic=round(result.statistic, 5), threshold=round(result.threshold, 5),
            top_clusters=[c.cluster for c in result.top_changes],
        )  # fmt: skip
        return event

    def _detector(
        self,
        language: str,
        n_tests: int,
        record: SemanticMapRecord,
        reference: Mapping[int, float],
        blocks: np.ndarray | None,
        blocks_rate: float | None,
    ) -> JSDriftDetector:
        """A fitted detector, reused while its inputs are unchanged (its simulated nulls are
        the costly part)."""
        key = (
            language,
            record.version,
            n_tests,
            tuple(sorted(reference.items())),
            None if blocks is None else blocks.tobytes(),
            blocks_rate,
        )
        detector = self._detectors.get(key)
        if detector is None:
            config = DriftConfig(
                false_alarm_rate=self.settings.drift_false_alarm_rate,
                n_tests=n_tests,
                min_events=self.policy.min_events,
                seed=zlib.crc32(language.encode()),
            )
            detector = JSDriftDetector(config, n_clusters=record.semantic_map.k)
            if blocks is None:
                detector.fit(reference, exact=True)
            else:
                detector.fit(reference, blocks=blocks, blocks_sample_rate=blocks_rate or 1.0)
            if len(self._detectors) >= 256:
                self._detectors.clear()
            self._detectors[key] = detector
        return detector

    def _sample_texts(
        self, language: str, spans: list[Span], result: DriftResult, version: int
    ) -> dict[int, list[str]]:
        """A few prompts of each changed cluster, read back from the vector store: from the
        window, or for a cluster that faded, from the reference period."""
        out: dict[int, list[str]] = {}
        for change in result.top_changes:
            texts: list[str] = []
            for span in spans:
                cursor = span.start
                while cursor < span.end and len(texts) < 3:
                    where: Mapping[str, str | int | bool] = {
                        "language": language,
                        "cluster": change.cluster,
                        "semantic_map_version": version,
                        "window_start": cursor.isoformat(),
                    }
                    for point in self._store.scroll(where=where, batch_size=3):
                        text = point.payload.get("text")
                        if isinstance(text, str) and len(texts) < 3:
                            texts.append(text[:500])
                    cursor += self.policy.base
            if texts:
                out[change.cluster] = texts
        return out


def _adapter_reference_applies(
    active: AdapterVersionRecord | None, last: DriftRecord | None, record: SemanticMapRecord
) -> bool:
    """An adapter's reference counts once it answers the latest drift (or there was none), and
    only if it was activated under the current semantic map (its cluster ids are that map's)."""
    if active is None or not active.reference_distribution:
        return False
    if (
        record.activated_at is not None
        and active.activated_at is not None
        and active.activated_at < record.activated_at
    ):
        return False
    if last is None or active.drift_id == last.drift_id:
        return True
    return active.activated_at is not None and active.activated_at >= last.detected_at


def _log_result(
    language: str, start: datetime, end: datetime, result: DriftResult, n_tests: int
) -> None:
    log.info(
        "drift.check", language=language, window_start=start.isoformat(),
        window_end=end.isoformat(), statistic=round(result.statistic, 5),
        threshold=round(result.threshold, 5), p_value=round(result.p_value, 6),
        n_events=result.n_events, n_sampled=result.n_sampled,
        dispersion=round(result.dispersion, 3), n_tests=n_tests, drift=result.is_drift,
    )  # fmt: skip


class BatchProcessor:
    """Everything a micro-batch does after decoding, synchronously (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder,
        vector_store: VectorStore,
        uow_factory: Callable[[], UnitOfWork],
        controller: SamplingController | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.vector_store = vector_store
        self.uow_factory = uow_factory
        self.policy = window_policy(settings)
        self.maps = MapProvider(uow_factory)
        self.controller = controller or SamplingController(
            forced_rate=settings.stream_sample_rate,
            min_rate=settings.stream_min_sample_rate,
            max_lag_s=settings.stream_max_lag_s,
        )
        self.checker = DriftChecker(settings, uow_factory, vector_store, self.policy)
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
        started = time.perf_counter()
        record = self.maps.current()
        events = stages.unique_events(decoded.events)
        rate = self.controller.rate
        mask = stages.sample_mask(events, rate)
        chosen = [e for e, keep in zip(events, mask.tolist(), strict=True) if keep]

        t0 = time.perf_counter()
        vectors = stages.embed_texts(self.embedder, [e.text for e in chosen])
        embed_seconds = time.perf_counter() - t0
        clusters = stages.assign_clusters(record.semantic_map, vectors)
        points = stages.vector_points(
            chosen, vectors, clusters, map_version=record.version, policy=self.policy
        )
        t1 = time.perf_counter()
        if points:
            self.vector_store.upsert(points)  # in Qdrant's write-ahead log once this returns
            self._maybe_flush()
        t2 = time.perf_counter()

        observations = stages.usage_observations(
            events, mask, clusters, map_version=record.version, policy=self.policy
        )
        n_late = self._count_late(events)
        with self.uow_factory() as uow:
            for letter in decoded.dead_letters:
                uow.dead_letters.record_dead_letter(letter)
            n_counted = uow.usage.record_usage(observations)
            uow.commit()
        t3 = time.perf_counter()

        watermarks = dict(self.watermarks)
        closed = stages.advance_watermarks(watermarks, events, self.policy)
        drift_events = []
        checked = 0
        for language, boundaries in sorted(closed.items()):
            for boundary in boundaries:
                checked += 1
                event = self.checker.check(language, boundary, record, watermarks)
                if event is not None:
                    drift_events.append(event)
        self.watermarks = watermarks  # only once every check of this batch succeeded
        return BatchReport(
            n_valid=len(decoded.events),
            n_dead=len(decoded.dead_letters),
            n_counted=n_counted,
            n_embedded=len(chosen),
            n_late=n_late,
            sample_rate=rate,
            embed_seconds=embed_seconds,
            busy_seconds=time.perf_counter() - started,
            stage_seconds={
                "prepare": t0 - started,
                "embed": embed_seconds,
                "store": t2 - t1,
                "count": t3 - t2,
                "drift": time.perf_counter() - t3,
            },
            windows_checked=checked,
            drift_events=drift_events,
        )

    def _maybe_flush(self) -> None:
        """Flush store segments every ``VECTOR_FLUSH_S``: an upsert is already in Qdrant's
        write-ahead log, which survives a killed worker (tested); a flush per batch would cost
        ~0.1 s of every ~1 s batch for protection against power loss only."""
        now = time.monotonic()
        if now - self._flushed_at >= VECTOR_FLUSH_S:
            self.vector_store.flush()
            self._flushed_at = now

    def _count_late(self, events: list[PromptEvent]) -> int:
        """Events whose base window was already judged when they arrived (counted anyway)."""
        lateness = timedelta(seconds=self.policy.allowed_lateness_seconds)
        late = 0
        for event in events:
            mark = self.watermarks.get(event.language)
            if mark is not None:
                end = self.policy.window_start(event.occurred_at) + self.policy.base
                late += int(end + lateness <= mark)
        return late
