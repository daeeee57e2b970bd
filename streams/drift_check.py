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

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import structlog

from compass.config import Settings
from compass.core import windows
from compass.core.detectors import DriftDetector, DriftResult
from compass.core.events import DriftEvent
from compass.core.windows import Span, WindowCheck, WindowPolicy
from compass.ports.storage import AdapterVersionRecord, DriftRecord, SemanticMapRecord, UnitOfWork
from compass.ports.vector_store import VectorStore
from streams import stages

log = structlog.get_logger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ACTIVE_LOOKBACK = timedelta(days=7)


class DetectorFactory(Protocol):
    """A new, unfitted detector for one check (:class:`compass.bootstrap.DriftDetectors`)."""

    def __call__(self, *, n_clusters: int, n_tests: int, seed: int) -> DriftDetector: ...


@dataclass(frozen=True)
class Reference:
    """What a window is compared with: an adapter's coverage shares (``blocks`` is ``None``,
    exact) or the live reference span's sampled counts with its block rows."""

    counts: Mapping[int, float]
    blocks: np.ndarray | None = None
    sample_rate: float = 1.0
    adapter_version: int | None = None
    span: Span | None = None


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
            result = self.judge(planned, n_tests=max(1, len(active | set(known_languages))))
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
        result = self._detector(planned, n_tests).score(
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
        )
        detector = self._detectors.get(key)
        if detector is None:
            detector = self.detectors(
                n_clusters=planned.record.semantic_map.k,
                n_tests=n_tests,
                seed=zlib.crc32(planned.language.encode()),
            )
            if reference.blocks is None:
                detector.fit(reference.counts, exact=True)
            else:
                detector.fit(
                    reference.counts,
                    blocks=reference.blocks,
                    blocks_sample_rate=reference.sample_rate or 1.0,
                )
            if len(self._detectors) >= 256:
                self._detectors.clear()
            self._detectors[key] = detector
        return detector

    def _sample_texts(
        self, planned: PlannedCheck, spans: Sequence[Span], result: DriftResult
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


def _reference(adapter: AdapterVersionRecord | None, window: WindowCheck) -> Reference:
    """The adapter's coverage when it applies, else the live reference span of the plan (which
    exists: no test span is planned before it)."""
    if adapter is not None:
        return Reference(adapter.reference_distribution, adapter_version=adapter.number)
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
