"""What the demo shows, read the way an operator would: from PostgreSQL (the tables and views of
docs/sql.md) and from the processes' Prometheus ``/metrics`` endpoints — never from objects
inside the stream app or the worker.

:class:`StateReader.read` returns a :class:`DemoSnapshot`; the live display
(:mod:`compass.lab.demo_live`) renders it and the demo's summary is the last one.
Window-by-window drift statistics come from the stream app's ``compass_drift_statistic`` and
``compass_drift_threshold`` gauges (the last judged window per language): the reader appends a
point each time a language's pair changes, so a poll that misses a window misses its point;
the drift events themselves come from the ``drift_events`` table and are never missed.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine


@dataclass
class LanguageView:
    """One language: events produced (by the demo) and counted (``usage_counts``), and the
    drift statistic vs threshold of each judged window seen (JS divergence, nats)."""

    produced: int = 0
    counted: int = 0
    checks: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class WorkerView:
    """The running job as the worker's metrics show it."""

    stage: str = "idle"
    step: int = 0
    steps: int = 0
    loss: float | None = None


@dataclass
class DemoSnapshot:
    phase: str = "starting"
    languages: dict[str, LanguageView] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    drift_events: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    announcements: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[str, str, str]] = field(default_factory=list)  # adapter, prompt, answer
    worker: WorkerView | None = None
    processes: dict[str, str] = field(default_factory=dict)  # name → running / exited 0 / ...
    elapsed_s: float = 0.0

    def counted_total(self) -> int:
        return sum(view.counted for view in self.languages.values())


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout_s: float = 3.0) -> Samples:
    """Samples of a Prometheus text endpoint: ``(name, sorted labels) → value``; ``{}`` when
    the endpoint does not answer (the process is starting or gone)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read().decode("utf-8")
    except OSError:
        return {}
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {
        dict(labels)[label]: value
        for (metric, labels), value in samples.items()
        if metric == name and label in dict(labels)
    }


class StateReader:
    """Reads one :class:`DemoSnapshot` per call into ``snapshot`` (kept between calls, so the
    drift points accumulate). ``since`` bounds the rows to this run's event time."""

    def __init__(self, engine: Engine, since: datetime, languages: list[str]) -> None:
        self.engine = engine
        self.since = since
        self.snapshot = DemoSnapshot(languages={code: LanguageView() for code in languages})

    def read(
        self, stream_metrics: str | None = None, worker_metrics: str | None = None
    ) -> DemoSnapshot:
        snap = self.snapshot
        self._read_database(snap)
        if stream_metrics:
            samples = scrape(stream_metrics)
            statistic = _by_label(samples, "compass_drift_statistic", "language")
            threshold = _by_label(samples, "compass_drift_threshold", "language")
            for language, value in statistic.items():
                view = snap.languages.setdefault(language, LanguageView())
                point = (value, threshold.get(language, float("nan")))
                if not view.checks or view.checks[-1] != point:
                    view.checks.append(point)
        if worker_metrics:
            samples = scrape(worker_metrics)
            if samples:
                stage = _by_label(samples, "compass_worker_job_stage_running", "stage")
                current = next((name for name, on in stage.items() if on == 1), "idle")
                loss = samples.get(("compass_worker_training_loss_nats", ()))
                snap.worker = WorkerView(
                    stage=current,
                    step=int(samples.get(("compass_worker_training_completed_steps", ()), 0)),
                    steps=int(samples.get(("compass_worker_training_planned_steps", ()), 0)),
                    loss=loss,
                )
        return snap

    def _read_database(self, snap: DemoSnapshot) -> None:
        window = {"since": self.since}
        with self.engine.connect() as conn:
            for language, total in conn.execute(
                text(
                    "SELECT language, SUM(total_count)::bigint FROM usage_counts "
                    "WHERE window_start >= :since GROUP BY language"
                ),
                window,
            ):
                snap.languages.setdefault(language, LanguageView()).counted = int(total)
            snap.dead_letters = {
                str(reason): int(count)
                for reason, count in conn.execute(
                    text("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason ORDER BY 1")
                )
            }
            snap.drift_events = _rows(
                conn.execute(
                    text(
                        "SELECT drift_id, language, window_start, window_end, statistic, "
                        "threshold, n_events, reference_version, job_status, version, "
                        "version_status FROM drift_history WHERE window_start >= :since "
                        "ORDER BY detected_at"
                    ),
                    window,
                )
            )
            snap.jobs = _rows(
                conn.execute(
                    text(
                        "SELECT language, status, attempts, last_error FROM training_jobs "
                        "ORDER BY id"
                    )
                )
            )
            snap.versions = _rows(
                conn.execute(
                    text(
                        "SELECT language, version, adapter_name, status, parent_version, sampler, "
                        "metrics, notes, training_seconds, artifact_uri FROM adapter_history "
                        "ORDER BY language, version"
                    )
                )
            )
            snap.announcements = [
                dict(payload)
                for (payload,) in conn.execute(
                    text(
                        "SELECT payload FROM outbox WHERE topic LIKE '%adapter-updated' "
                        "AND published_at IS NOT NULL ORDER BY id"
                    )
                )
            ]


def _rows(result: Any) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in result]
