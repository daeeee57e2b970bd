"""The stream app's Prometheus metrics and health: one call per checkpointed batch.

Kept apart from :mod:`streams.runtime` so that the runtime only calls :func:`export_batch`;
the metric definitions live in :mod:`compass.metrics`.
"""

from __future__ import annotations

from typing import Any

from compass import metrics
from streams.controller import RateDecision
from streams.pipeline import BatchReport
from streams.stages import Decoded


def export_batch(report: BatchReport, decision: RateDecision, decoded: Decoded) -> None:
    """Add one checkpointed micro-batch to the Prometheus metrics."""
    metrics.record_stream_batch(
        n_events=report.n_valid + report.n_dead,
        n_counted=report.n_counted,
        n_embedded=report.n_embedded,
        n_late=report.n_late,
        windows_checked=report.windows_checked,
        busy_seconds=report.busy_seconds,
        stage_seconds=report.stage_seconds,
        sample_rate=decision.rate,
        lag_events=decision.lag_events,
        lag_seconds=decision.lag_seconds,
        drift_languages=[event.language for event in report.drift_events],
        dead_letter_reasons=[letter.reason for letter in [*decoded.dead_letters, *report.poison]],
        arrival_rate=decision.arrival_rate,
        capacity=decision.capacity,
        event_lag_seconds=decision.event_lag_seconds,
    )


def export_retry() -> None:
    metrics.STREAM_BATCH_RETRIES.inc()


def is_ready(runtime: Any) -> bool:
    """Connected (services opened) and consuming (not shut down)."""
    return runtime.processor is not None and not runtime._closed
