"""The drift check of one language's window that just became final: plan → judge → record.

*Plan*: the windows from the language's block counts (:func:`compass.core.windows.plan_check`)
and the reference (the live adapter's coverage when it applies, else the first stable window).
*Judge*: a detector built by the composition root's factory
(:class:`compass.bootstrap.DriftDetectors`: ``COMPASS_DRIFT_DETECTOR``, corrected with
``COMPASS_DRIFT_CORRECTION``) for the number of languages tested, seeded per language.
*Record*: the drift event and its outbox row in one transaction, only if new.
Where this sits in a batch's order: :func:`streams.checkpoint.checkpoint`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import numpy as np
import structlog

from compass import metrics
from compass.config import Settings
from compass.core import windows
from compass.core.detectors import DriftDetector, DriftResult
from compass.core.events import DriftEvent
from compass.core.windows import Span, WindowCheck, WindowPolicy
from compass.ports.storage import AdapterVersionRecord, DriftRecord, SemanticMapRecord, UnitOfWork
from compass.ports.vector_store import Range, VectorStore
from streams import stages

log = structlog.get_logger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACTIVE_LOOKBACK = timedelta(days=7)


class MissingEmbeddings(LookupError):
    """An embedding-based detector cannot be fitted: the reference's vectors are not stored."""


class DetectorFactory(Protocol):
    """A new, unfitted detector for one check (:class:`compass.bootstrap.DriftDetectors`)."""

    def __call__(self, *, n_clusters: int, n_tests: int, seed: int) -> DriftDetector: ...


@dataclass(frozen=True)
class Reference:
    """What a window is compared with: a finite sample — the live reference span's sampled
    counts, or the live adapter's stored reference counts — with its block rows (burstiness;
    ``None`` or empty when unknown), or, with ``exact``, shares taken as the truth."""

    counts: Mapping[int, float]
    blocks: np.ndarray | None = None
    sample_rate: float = 1.0
    adapter_version: int | None = None
    span: Span | None = None
    exact: bool = False
    period: tuple[datetime, datetime] | None = None
    """Event-time bounds of the reference sample (its embeddings are read from there)."""


@dataclass(frozen=True)
class PlannedCheck:
    """A window ready to be judged: its counts and the reference to judge it against."""

    language: str
    record: SemanticMapRecord
    window: WindowCheck
    reference: Reference


class DriftChecker:
    """Judges one language's window that just became final (plan → judge → record).

    ``detectors`` builds the detector of a check (default: the settings' factory,
    :func:`compass.bootstrap.drift_detectors`).
    """

    def __init__(
        self,
        settings: Settings,
        uow_factory: Callable[[], UnitOfWork],
        vector_store: VectorStore,
        policy: WindowPolicy,
        detectors: DetectorFactory | None = None,
    ) -> None:
        if detectors is None:
            from compass.bootstrap import drift_detectors

            detectors = drift_detectors(settings)
        self.settings = settings
        self._uow_factory = uow_factory
        self._store = vector_store
        self.policy = policy
        self.detectors = detectors
        self._detectors: dict[tuple[object, ...], DriftDetector] = {}

    def check(
        self,
        language: str,
        boundary: datetime,
        record: SemanticMapRecord,
        known_languages: Iterable[str] = (),
    ) -> DriftEvent | None:
        """Judge ``language``'s window ending at ``boundary``; return a *newly* recorded drift.

        The number of tests the detector corrects for is every language with usage in the last
        week or seen by this worker: partitions are consumed independently, so "active right
        now" would depend on which partition the consumer happened to read first."""
        with self._uow_factory() as uow:
            planned = self.plan(uow, language, boundary, record)
            if planned is None:
                return None
            active = set(uow.usage.languages_with_usage(boundary - ACTIVE_LOOKBACK))
            try:
                result = self.judge(planned, n_tests=max(1, len(active | set(known_languages))))
            except MissingEmbeddings as exc:  # e.g. a reference older than the vector store
                log.warning("drift.skipped", language=language, reason=str(exc))
                return None
            metrics.record_drift_check(language, result.statistic, result.threshold)
            if not result.is_drift:
                return None
            event = self.record(uow, planned, result)
        if event is not None:
            log.warning(
                "drift.detected", language=language, window_start=event.window_start.isoformat(),
                statistic=round(result.statistic, 5), threshold=round(result.threshold, 5),
                top_clusters=[c.cluster for c in result.top_changes],
            )  # fmt: skip
        return event

    def plan(
        self, uow: UnitOfWork, language: str, boundary: datetime, record: SemanticMapRecord
    ) -> PlannedCheck | None:
        """The window ending at ``boundary`` and its reference, or ``None`` when there is
        nothing to judge (judged already, still open, no reference yet, too few events)."""
        last = uow.drift.last_drift_event(language)
        if last is not None and last.semantic_map_version != record.version:
            last = None
        if last is not None and last.window_end >= boundary:
            return None  # judged past this point already (a replay)
        active = uow.adapters.active_version(language, self.settings.base_model_id)
        adapter = active if _adapter_reference_applies(active, last, record) else None
        anchor = windows.resume_after(None if last is None else last.window_end, self.policy)
        by_block = uow.usage.usage_by_window(language, anchor or EPOCH, boundary, record.version)
        window = windows.plan_check(
            by_block, self.policy, anchor=anchor, boundary=boundary,
            need_reference=adapter is None, n_clusters=record.semantic_map.k,
        )  # fmt: skip
        if window is None:
            return None
        if not window.test.enough:
            log.info(
                "drift.skipped", language=language, window_start=window.test.start.isoformat(),
                n_sampled=window.test.n_sampled, reason="too few events in the longest window",
            )  # fmt: skip
            return None
        return PlannedCheck(language, record, window, _reference(adapter, window))

    def judge(self, planned: PlannedCheck, *, n_tests: int) -> DriftResult:
        """Score the window with the configured detector, corrected for ``n_tests`` tests."""
        test = planned.window.test
        detector = self._detector(planned, n_tests)
        if getattr(detector, "needs_embeddings", False):
            vectors = self._embeddings(planned, test.start, test.end)
            result = cast(Any, detector).score(
                planned.window.counts, n_events=test.n_events, sample_rate=test.sample_rate,
                embeddings=vectors if len(vectors) else None,
            )  # fmt: skip
        else:
            result = detector.score(
                planned.window.counts, n_events=test.n_events, sample_rate=test.sample_rate
            )
        _log_result(planned.language, test, result, n_tests)
        return result

    def record(
        self, uow: UnitOfWork, planned: PlannedCheck, result: DriftResult
    ) -> DriftEvent | None:
        """Write the drift and its outbox row in ``uow``'s transaction; ``None`` if this
        window's drift is already recorded (and so already in the outbox)."""
        reference = planned.reference
        spans = [planned.window.test, *([reference.span] if reference.span else [])]
        event = stages.build_drift_event(
            language=planned.language,
            span=planned.window.test,
            result=result,
            map_version=planned.record.version,
            reference_version=reference.adapter_version,
            sample_texts=self._sample_texts(planned, spans, result),
            labels={c.cluster: c.title for c in planned.record.semantic_map.labels},
        )
        if not uow.drift.record_drift_event(event):
            return None
        uow.outbox.add_outbox(
            self.settings.topic_drift_events, planned.language, event.model_dump(mode="json")
        )
        uow.commit()
        return event

    def _detector(self, planned: PlannedCheck, n_tests: int) -> DriftDetector:
        """A fitted detector from the factory, seeded by the language, reused while its
        inputs are unchanged (the JS detector's simulated nulls are the costly part)."""
        reference = planned.reference
        key = (
            planned.language,
            planned.record.version,
            n_tests,
            tuple(sorted(reference.counts.items())),
            None if reference.blocks is None else reference.blocks.tobytes(),
            None if reference.blocks is None else reference.sample_rate,
            reference.exact,
        )
        detector = self._detectors.get(key)
        if detector is None:
            detector = self.detectors(
                n_clusters=planned.record.semantic_map.k,
                n_tests=n_tests,
                seed=zlib.crc32(planned.language.encode()),
            )
            embeddings = None
            if getattr(detector, "needs_embeddings", False):
                embeddings = self._reference_embeddings(planned)
            fit_reference(detector, reference, embeddings)
            if len(self._detectors) >= 256:
                self._detectors.clear()
            self._detectors[key] = detector
        return detector

    def _reference_embeddings(self, planned: PlannedCheck) -> np.ndarray:
        """The reference sample's embeddings (an embedding-based detector's input); raises
        :class:`MissingEmbeddings` when its period is unknown or no vectors are stored for it
        (the check is then skipped and logged, never failed)."""
        reference = planned.reference
        period = reference.period or (
            (reference.span.start, reference.span.end) if reference.span else None
        )
        if period is None:
            raise MissingEmbeddings("the reference's event-time period is unknown")
        vectors = self._embeddings(planned, *period)
        if not len(vectors):
            raise MissingEmbeddings(f"no stored embeddings in the reference period {period}")
        return vectors

    def _embeddings(self, planned: PlannedCheck, start: datetime, end: datetime) -> np.ndarray:
        """``(n, dim)`` stored vectors of the language's events with ``start <= occurred_at <
        end`` under the check's semantic map: one query on the indexed event time."""
        where: dict[str, str | int | bool | Range] = {
            "language": planned.language,
            "semantic_map_version": planned.record.version,
            "occurred_at_ts": Range(
                gte=math.floor(start.timestamp()), lt=math.ceil(end.timestamp())
            ),
        }
        rows = [
            point.vector
            for point in self._store.scroll(where=where, with_vectors=True)
            if point.vector is not None
        ]
        return np.vstack(rows) if rows else np.zeros((0, self._store.dim), dtype=np.float32)

    def _sample_texts(
        self, planned: PlannedCheck, spans: Sequence[Span], result: DriftResult
    ) -> dict[int, list[str]]:
        """A few prompts of each changed cluster, read back from the vector store: from the
        window, or for a cluster that faded, from the reference period. None in privacy mode
        (``store_text`` off), even from points stored before it was switched on."""
        out: dict[int, list[str]] = {}
        if not self.settings.store_text:
            return out
        for change in result.top_changes:
            texts: list[str] = []
            for span in spans:
                cursor = span.start
                while cursor < span.end and len(texts) < 3:
                    where: Mapping[str, str | int | bool] = {
                        "language": planned.language,
                        "cluster": change.cluster,
                        "semantic_map_version": planned.record.version,
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


def fit_reference(
    detector: DriftDetector, reference: Reference, embeddings: np.ndarray | None = None
) -> DriftDetector:
    """Fit ``detector`` to ``reference`` the one way every path does: as a finite sample (with
    its block rows, when there are at least two, for the burstiness) unless it is ``exact``;
    ``embeddings`` only for a detector that ``needs_embeddings``."""
    extra: dict[str, Any] = {} if embeddings is None else {"embeddings": embeddings}
    if reference.exact:
        return detector.fit(reference.counts, exact=True, **extra)
    blocks = reference.blocks
    return detector.fit(
        reference.counts,
        blocks=blocks if blocks is not None and len(blocks) >= 2 else None,
        blocks_sample_rate=reference.sample_rate or 1.0,
        **extra,
    )


def _adapter_reference_applies(
    active: AdapterVersionRecord | None, last: DriftRecord | None, record: SemanticMapRecord
) -> bool:
    """An adapter's reference counts once it answers the latest drift (or there was none), and
    only if it was activated under the current semantic map (its cluster ids are that map's)
    and its reference is known as a sample (:func:`_adapter_sample`)."""
    if active is None or _adapter_sample(active) is None:
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


def _adapter_sample(adapter: AdapterVersionRecord) -> Reference | None:
    """The live adapter's reference as a *sample*, never as exact shares (the triggering window
    held tens of events: judged as exact, stationary usage raised drift in 31–61 % of windows).

    Stored counts (migration 0004) with their block rows; for an older version, its shares
    times the sampled size of the drift window that triggered it; ``None`` when neither is
    known — the check then builds a reference from live usage, as before any adapter."""
    stored = adapter.reference_counts
    if stored is not None and stored.n_sampled > 0 and stored.counts:
        blocks = np.asarray(stored.blocks, dtype=np.float64) if stored.blocks else None
        period = (
            (stored.window_start, stored.window_end)
            if stored.window_start is not None and stored.window_end is not None
            else None
        )
        return Reference(
            dict(stored.counts), blocks=blocks, sample_rate=stored.sample_rate,
            adapter_version=adapter.number, period=period,
        )  # fmt: skip
    n = adapter.trigger_n_sampled
    shares = adapter.reference_distribution
    if n and n > 0 and shares and sum(shares.values()) > 0:
        total = sum(shares.values())
        counts = {c: v / total * n for c, v in shares.items()}
        return Reference(counts, adapter_version=adapter.number)
    return None


def _reference(adapter: AdapterVersionRecord | None, window: WindowCheck) -> Reference:
    """The adapter's reference sample when it applies, else the live reference span of the
    plan (which exists: no test span is planned before it)."""
    if adapter is not None:
        sample = _adapter_sample(adapter)
        assert sample is not None  # _adapter_reference_applies checked it
        return sample
    assert window.reference is not None and window.reference_counts is not None
    return Reference(
        window.reference_counts,
        blocks=window.reference_blocks,
        sample_rate=window.reference.sample_rate,
        span=window.reference,
    )


def _log_result(language: str, span: Span, result: DriftResult, n_tests: int) -> None:
    log.info(
        "drift.check", language=language, window_start=span.start.isoformat(),
        window_end=span.end.isoformat(), statistic=round(result.statistic, 5),
        threshold=round(result.threshold, 5), p_value=round(result.p_value, 6),
        n_events=result.n_events, n_sampled=result.n_sampled,
        dispersion=round(result.dispersion, 3), n_tests=n_tests, drift=result.is_drift,
    )  # fmt: skip
