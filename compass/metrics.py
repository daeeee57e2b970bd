"""Prometheus metrics of the long-running processes (stream app, adapter worker, outbox relay).

Every metric lives in one registry, :data:`REGISTRY`, served by :mod:`compass.health` on
``COMPASS_METRICS_PORT`` together with ``/healthz`` and ``/readyz``. Names follow Prometheus
conventions: a ``compass_`` prefix, the unit in the name (``_seconds``, ``_events``,
``_ratio``, ``_messages``), counters exposed with ``_total``. Label values come from small
closed sets (stage names, dead-letter reason codes, job outcomes, language tags); anything else
is folded into ``other`` by :func:`bounded` so no event id or text ever becomes a label.

The call sites only call the ``record_*`` functions below, so the stream, the worker and the
relay stay free of Prometheus types.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
"""Every COMPASS metric (and no process/platform collectors: names stay ours)."""

_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}$")
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)

# ---------------------------------------------------------------------------- the stream app
STREAM_EVENTS = Counter(
    "compass_stream_events",
    "Prompt events consumed by the stream app (valid and dead-lettered).",
    registry=REGISTRY,
)
STREAM_EVENTS_COUNTED = Counter(
    "compass_stream_events_counted",
    "Valid, first-seen prompt events added to the usage counts.",
    registry=REGISTRY,
)
STREAM_EVENTS_EMBEDDED = Counter(
    "compass_stream_events_embedded",
    "Prompt events embedded and stored in the vector store (the sampled ones).",
    registry=REGISTRY,
)
STREAM_LATE_EVENTS = Counter(
    "compass_stream_late_events",
    "Prompt events that arrived after their window was judged.",
    registry=REGISTRY,
)
STREAM_BATCHES = Counter(
    "compass_stream_batches", "Micro-batches checkpointed by the stream app.", registry=REGISTRY
)
STREAM_BATCH_RETRIES = Counter(
    "compass_stream_batch_retries",
    "Micro-batches whose checkpoint failed and was retried.",
    registry=REGISTRY,
)
STREAM_BATCH_SECONDS = Histogram(
    "compass_stream_batch_duration_seconds",
    "Busy time of one micro-batch, decode to acknowledgement.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
STREAM_STAGE_SECONDS = Histogram(
    "compass_stream_stage_duration_seconds",
    "Time of one stage of a micro-batch (embed, assign, store, count, drift …).",
    ["stage"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
STREAM_SAMPLE_RATE = Gauge(
    "compass_stream_sample_rate_ratio",
    "Share of valid events embedded (load shedding; 1 = all).",
    registry=REGISTRY,
)
STREAM_LAG_EVENTS = Gauge(
    "compass_stream_consumer_lag_events",
    "Prompt events waiting on this process's partitions.",
    registry=REGISTRY,
)
STREAM_LAG_SECONDS = Gauge(
    "compass_stream_consumer_lag_seconds",
    "Estimated time to drain the waiting events at the current capacity.",
    registry=REGISTRY,
)
STREAM_ARRIVAL_RATE = Gauge(
    "compass_stream_arrival_rate_events_per_second",
    "Prompt events arriving per second, as the sample-rate controller estimates it.",
    registry=REGISTRY,
)
STREAM_CAPACITY = Gauge(
    "compass_stream_capacity_events_per_second",
    "Events per second the stream processes at the current sample rate (controller estimate).",
    registry=REGISTRY,
)
STREAM_EVENT_LAG_SECONDS = Gauge(
    "compass_stream_event_time_lag_seconds",
    "Wall clock minus the newest event time of the last flushed batch.",
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "compass_dead_letters",
    "Messages dead-lettered, by process and reason code.",
    ["source", "reason"],
    registry=REGISTRY,
)
DRIFT_WINDOWS_CHECKED = Counter(
    "compass_drift_windows_checked",
    "Closed event-time windows judged by the drift detector.",
    registry=REGISTRY,
)
DRIFT_STATISTIC = Gauge(
    "compass_drift_statistic",
    "Drift statistic of a language's last judged window.",
    ["language"],
    registry=REGISTRY,
)
DRIFT_THRESHOLD = Gauge(
    "compass_drift_threshold",
    "Threshold the last judged window's statistic was compared with.",
    ["language"],
    registry=REGISTRY,
)
DRIFT_EVENTS = Counter(
    "compass_drift_events",
    "Drift events recorded (each becomes one training job).",
    ["language"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------- the worker
WORKER_JOBS = Counter(
    "compass_worker_jobs",
    "Drift events handled by this worker, by outcome "
    "(promoted, rejected, failed, skipped, stopped).",
    ["outcome"],
    registry=REGISTRY,
)
WORKER_JOBS_RUNNING = Gauge(
    "compass_worker_jobs_running", "Jobs this worker is running now (0 or 1).", registry=REGISTRY
)
WORKER_JOB_SECONDS = Histogram(
    "compass_worker_job_duration_seconds",
    "Wall time of one job: select, train, evaluate, gate, record.",
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)
JOB_STAGES = ("idle", "sampling", "training", "evaluating", "gating")
WORKER_JOB_STAGE = Gauge(
    "compass_worker_job_stage_running",
    "1 for the stage the running job is in (sampling, training, evaluating, gating), else 0.",
    ["stage"],
    registry=REGISTRY,
)
WORKER_TRAINING_STEP = Gauge(
    "compass_worker_training_completed_steps",
    "Optimizer steps done in the running job.",
    registry=REGISTRY,
)
WORKER_TRAINING_STEPS = Gauge(
    "compass_worker_training_planned_steps",
    "Optimizer steps planned in the running job.",
    registry=REGISTRY,
)
WORKER_TRAINING_LOSS = Gauge(
    "compass_worker_training_loss_nats",
    "Task loss (mean token NLL, nats) of the running job's latest step.",
    registry=REGISTRY,
)
WORKER_LEASE_RENEWALS = Counter(
    "compass_worker_lease_renewals",
    "Job leases renewed while a job was running.",
    registry=REGISTRY,
)
ADAPTER_VERSIONS = Counter(
    "compass_adapter_versions",
    "Adapter versions recorded, by gate decision (promoted, rejected).",
    ["decision"],
    registry=REGISTRY,
)

# ---------------------------------------------------------------------------- the relay
OUTBOX_PUBLISHED = Counter(
    "compass_outbox_published_messages",
    "Outbox rows published to Kafka and marked published.",
    registry=REGISTRY,
)
OUTBOX_FAILURES = Counter(
    "compass_outbox_publish_failures",
    "Relay rounds that failed (broker or database error); rows stay pending.",
    registry=REGISTRY,
)

# ------------------------------------------------------------------------ database snapshot
DB_SNAPSHOT_NAMES = (
    "compass_jobs",
    "compass_outbox_backlog_messages",
    "compass_outbox_oldest_unpublished_age_seconds",
)
JOB_STATES = ("queued", "running", "succeeded", "failed")


@dataclass(frozen=True)
class DatabaseSnapshot:
    """What the database says about the loop at one moment (read by the relay on scrape)."""

    jobs_by_state: Mapping[str, int]
    outbox_backlog: int
    oldest_unpublished_age_s: float


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time: jobs by state (all workers), the outbox
    backlog and the age of its oldest unpublished row. One process per deployment should
    register it (the relay does), so the numbers are not summed twice on a dashboard."""

    def __init__(self, read: Callable[[], DatabaseSnapshot]) -> None:
        self._read = read

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            snapshot = self._read()
        except Exception:  # an unreachable database must not break the scrape
            return []
        return self._families(snapshot)

    @staticmethod
    def _families(snapshot: DatabaseSnapshot | None) -> list[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("compass_jobs", "Training jobs by state.", labels=["state"])
        backlog = GaugeMetricFamily(
            "compass_outbox_backlog_messages", "Outbox rows not yet published."
        )
        age = GaugeMetricFamily(
            "compass_outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none).",
        )
        if snapshot is not None:
            for state in JOB_STATES:
                jobs.add_metric([state], snapshot.jobs_by_state.get(state, 0))
            backlog.add_metric([], snapshot.outbox_backlog)
            age.add_metric([], snapshot.oldest_unpublished_age_s)
        return [jobs, backlog, age]


def watch_database(read: Callable[[], DatabaseSnapshot]) -> DatabaseCollector:
    """Register a :class:`DatabaseCollector` on :data:`REGISTRY`; unregister it when done."""
    collector = DatabaseCollector(read)
    REGISTRY.register(collector)
    return collector


# ------------------------------------------------------------------------------ call sites
def bounded(value: str, pattern: re.Pattern[str] = _LABEL) -> str:
    """``value`` when it looks like a code from a closed set, else ``other``."""
    return value if pattern.match(value) else "other"


def language_label(language: str) -> str:
    """A language tag as a label value (``other`` for anything that is not a short tag)."""
    return bounded(language, _LANGUAGE)


def record_stream_batch(
    *,
    n_events: int,
    n_counted: int,
    n_embedded: int,
    n_late: int,
    windows_checked: int,
    busy_seconds: float,
    stage_seconds: Mapping[str, float],
    sample_rate: float,
    lag_events: int | None,
    lag_seconds: float | None,
    drift_languages: Iterable[str] = (),
    dead_letter_reasons: Iterable[str] = (),
    arrival_rate: float | None = None,
    capacity: float | None = None,
    event_lag_seconds: float | None = None,
) -> None:
    """One checkpointed micro-batch of the stream app."""
    for gauge, value in (
        (STREAM_ARRIVAL_RATE, arrival_rate),
        (STREAM_CAPACITY, capacity),
        (STREAM_EVENT_LAG_SECONDS, event_lag_seconds),
    ):
        if value is not None:
            gauge.set(value)
    STREAM_BATCHES.inc()
    STREAM_EVENTS.inc(n_events)
    STREAM_EVENTS_COUNTED.inc(n_counted)
    STREAM_EVENTS_EMBEDDED.inc(n_embedded)
    STREAM_LATE_EVENTS.inc(n_late)
    DRIFT_WINDOWS_CHECKED.inc(windows_checked)
    STREAM_BATCH_SECONDS.observe(busy_seconds)
    for stage, seconds in stage_seconds.items():
        STREAM_STAGE_SECONDS.labels(bounded(stage)).observe(seconds)
    STREAM_SAMPLE_RATE.set(sample_rate)
    if lag_events is not None:
        STREAM_LAG_EVENTS.set(lag_events)
    if lag_seconds is not None:
        STREAM_LAG_SECONDS.set(lag_seconds)
    for language in drift_languages:
        DRIFT_EVENTS.labels(language_label(language)).inc()
    record_dead_letters("stream", dead_letter_reasons)


def record_dead_letters(source: str, reasons: Iterable[str]) -> None:
    for reason in reasons:
        DEAD_LETTERS.labels(bounded(source), bounded(reason)).inc()


def record_drift_check(language: str, statistic: float, threshold: float) -> None:
    """A judged window: the statistic and the threshold it was held against."""
    label = language_label(language)
    DRIFT_STATISTIC.labels(label).set(statistic)
    DRIFT_THRESHOLD.labels(label).set(threshold)


def job_stage(stage: str) -> None:
    """Mark ``stage`` (one of :data:`JOB_STAGES`) as the worker's current stage."""
    for name in JOB_STAGES:
        WORKER_JOB_STAGE.labels(name).set(1 if name == stage else 0)
    if stage in ("idle", "sampling"):
        WORKER_TRAINING_STEP.set(0)


def training_step(step: int, steps: int, loss: float) -> None:
    """The running job finished optimizer step ``step`` of ``steps`` with task loss ``loss``."""
    WORKER_TRAINING_STEP.set(step)
    WORKER_TRAINING_STEPS.set(steps)
    if math.isfinite(loss):
        WORKER_TRAINING_LOSS.set(loss)


def record_job(outcome: str, seconds: float | None = None) -> None:
    """A drift event the worker handled; ``promoted``/``rejected`` also count a version."""
    WORKER_JOBS.labels(bounded(outcome)).inc()
    if outcome in ("promoted", "rejected"):
        ADAPTER_VERSIONS.labels(outcome).inc()
    if seconds is not None:
        WORKER_JOB_SECONDS.observe(seconds)


class running_job:
    """``with running_job(): ...`` keeps :data:`WORKER_JOBS_RUNNING` at 1 meanwhile."""

    def __enter__(self) -> running_job:
        self._started = time.monotonic()
        WORKER_JOBS_RUNNING.inc()
        return self

    def __exit__(self, *exc: object) -> None:
        WORKER_JOBS_RUNNING.dec()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started


def registered_names() -> set[str]:
    """Every sample name :data:`REGISTRY` can expose (``_total``, ``_bucket`` … included):
    what the dashboard and the alert rules may query."""
    names: set[str] = set(DB_SNAPSHOT_NAMES)
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.update({f"{family.name}_total", f"{family.name}_created"})
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names
