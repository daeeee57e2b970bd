"""Per-window series for the report, computed from the :class:`~.history.History` alone.

* **Usage by cluster**: each language's counting cells summed into the stream's base windows
  (``COMPASS_STREAM_WINDOW_SECONDS``) under one semantic map (the language's most used one),
  as shares of the window's sampled events.
* **Drift statistic**: PostgreSQL keeps the drift *events*, not every check, so the report
  recomputes the statistic of every base window with the Jensen–Shannon detector
  (:mod:`compass.core.detectors.js`, the settings' false-alarm rate, correction and minimum
  events, one test per language) against the reference in force then: the reference counts of
  the adapter version live at the window's end, else — before any adapter — the language's
  first windows pooled until ``COMPASS_DRIFT_REFERENCE_MIN_EVENTS`` sampled events (as the
  stream builds a reference from live usage); the minimum events per window is lowered to the
  smallest window a recorded drift event of the language judged. It approximates what the
  stream saw (its test spans can join quiet windows; its pre-adapter reference can move), so
  the report marks the *recorded* drift events separately, with their own statistic and
  threshold.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from compass.core.detectors import DriftDetector, get_detector
from compass.core.gaps import gap_scores
from compass.lab.report.history import History, VersionRow


@dataclass(frozen=True)
class UsageSeries:
    """``shares[w, j]``: share of ``clusters[j]`` in window ``starts[w]`` (sampled events);
    ``totals[w]``: all events of the window."""

    language: str
    map_version: int
    window_seconds: int
    starts: tuple[datetime, ...]
    clusters: tuple[int, ...]
    counts: np.ndarray
    sampled: np.ndarray
    totals: np.ndarray

    @property
    def shares(self) -> np.ndarray:
        sums = self.sampled.sum(axis=1, keepdims=True)
        return np.divide(self.sampled, sums, out=np.zeros_like(self.sampled), where=sums > 0)


@dataclass(frozen=True)
class DriftPoint:
    """The recomputed check of one base window (``threshold`` NaN: too few events);
    ``reference``: ``v<N>`` of the live adapter, ``live usage`` or ``building`` (the window is
    part of the pre-adapter reference)."""

    start: datetime
    statistic: float
    threshold: float
    n_sampled: int
    reference: str


@dataclass(frozen=True)
class SelectionGap:
    """What drove one version's selection: the drift window's usage shares, the parent's
    coverage (its reference shares; none for a first version), the gap score per cluster
    (:func:`compass.core.gaps.gap_scores`, default weighting) and the selected items per
    cluster (``sampler_params.per_cluster``)."""

    version: VersionRow
    clusters: tuple[int, ...]
    usage: np.ndarray
    coverage: np.ndarray
    gap: np.ndarray
    selected: np.ndarray
    map_version: int | None


def _floor(moment: datetime, seconds: int) -> datetime:
    epoch = math.floor(moment.timestamp() / seconds) * seconds
    return datetime.fromtimestamp(epoch, UTC)


def usage_series(history: History, language: str, window_seconds: int) -> UsageSeries | None:
    """The language's usage per base window on its most used semantic map (``None``: none)."""
    cells = [c for c in history.usage if c.language == language]
    if not cells:
        return None
    per_map: dict[int, float] = defaultdict(float)
    for cell in cells:
        per_map[cell.map_version] += cell.total
    map_version = max(per_map, key=lambda v: (per_map[v], v))
    cells = [c for c in cells if c.map_version == map_version]
    starts = sorted({_floor(c.window_start, window_seconds) for c in cells})
    clusters = sorted({c.cluster for c in cells})
    row = {s: i for i, s in enumerate(starts)}
    col = {c: j for j, c in enumerate(clusters)}
    sampled = np.zeros((len(starts), len(clusters)))
    totals = np.zeros((len(starts), len(clusters)))
    for cell in cells:
        i, j = row[_floor(cell.window_start, window_seconds)], col[cell.cluster]
        sampled[i, j] += cell.sampled
        totals[i, j] += cell.total
    return UsageSeries(
        language, map_version, window_seconds, tuple(starts), tuple(clusters), totals, sampled,
        totals.sum(axis=1),
    )  # fmt: skip


def base_window_seconds(history: History, configured: int) -> int:
    """The window the report sums usage over and scores: the stream's base window as its
    drift events show it (their shortest span), else ``configured``
    (``COMPASS_STREAM_WINDOW_SECONDS``) — shortened, in whole counting cells, to about a 24th
    of the usage's time span when the history spans fewer than four such windows."""
    spans = [
        round((d.window_end - d.window_start).total_seconds())
        for d in history.drifts
        if d.window_end > d.window_start
    ]
    if spans:
        return min(spans)
    if not history.usage:
        return configured
    cell = max(c.window_seconds for c in history.usage)
    first = min(c.window_start for c in history.usage)
    last = max(c.window_start for c in history.usage)
    span = (last - first).total_seconds() + cell
    if span >= 4 * configured:
        return configured
    return max(cell, math.ceil(span / 24 / cell) * cell)


def _live_version(
    versions: list[VersionRow], moment: datetime
) -> VersionRow | None:  # the version serving at ``moment``
    live = [
        v
        for v in versions
        if v.activated_at is not None
        and v.activated_at <= moment
        and (v.retired_at is None or v.retired_at > moment)
    ]
    return max(live, key=lambda v: v.activated_at or moment, default=None)


def drift_series(
    history: History,
    series: UsageSeries,
    window_seconds: int,
    *,
    false_alarm_rate: float = 0.01,
    correction: str = "bonferroni",
    min_events: int = 50,
    reference_min_events: int = 200,
) -> list[DriftPoint]:
    """The recomputed drift statistic and threshold of every base window (module docstring)."""
    versions = [v for v in history.versions if v.language == series.language]
    # a recorded drift judged a window of n events: the stream's minimum was at most n
    recorded = [d.n_sampled for d in history.drifts if d.language == series.language]
    min_events = max(1, min([min_events, *recorded]))
    k = max([*series.clusters, 0]) + 1
    n_tests = max(len(history.languages), 1)
    base: dict[int, float] = defaultdict(float)
    base_until = -1
    for i, row in enumerate(series.sampled):
        if sum(base.values()) >= reference_min_events:
            break
        for j, cluster in enumerate(series.clusters):
            base[cluster] += float(row[j])
        base_until = i
    points: list[DriftPoint] = []
    detectors: dict[str, DriftDetector] = {}
    for i, start in enumerate(series.starts):
        end = start + timedelta(seconds=window_seconds)
        window = {c: float(series.sampled[i, j]) for j, c in enumerate(series.clusters)}
        n_sampled = round(sum(window.values()))
        live = _live_version(versions, end)
        if live is not None and (live.reference_counts or live.reference_distribution):
            name = f"v{live.version}"
            reference = live.reference_counts or {
                c: s * 100 for c, s in live.reference_distribution.items()
            }
        elif i <= base_until or sum(base.values()) <= 0:
            points.append(DriftPoint(start, math.nan, math.nan, n_sampled, "building"))
            continue
        else:
            name, reference = "live usage", dict(base)
        detector = detectors.get(name)
        if detector is None:
            detector = get_detector(
                "js", n_clusters=k, false_alarm_rate=false_alarm_rate, n_tests=n_tests,
                correction=correction, min_events=min_events, seed=0,
            ).fit(reference)  # fmt: skip
            detectors[name] = detector
        rate = n_sampled / series.totals[i] if series.totals[i] > 0 else 1.0
        result = detector.score(window, n_events=int(series.totals[i]), sample_rate=rate)
        points.append(
            DriftPoint(start, float(result.statistic), float(result.threshold), n_sampled, name)
        )
    return points


def selection_gaps(history: History, language: str) -> list[SelectionGap]:
    """For each version of ``language`` caused by a drift: the gap behind its selection."""
    out = []
    drifts = {d.drift_id: d for d in history.drifts}
    by_number = {v.version: v for v in history.versions if v.language == language}
    for version in by_number.values():
        drift = drifts.get(version.drift_id or "")
        if drift is None:
            continue
        window: dict[int, float] = defaultdict(float)
        for cell in history.usage:
            if (
                cell.language == language
                and (drift.map_version is None or cell.map_version == drift.map_version)
                and drift.window_start <= cell.window_start < drift.window_end
            ):
                window[cell.cluster] += cell.total
        parent = by_number.get(version.parent_version or -1)
        coverage_map = (parent.reference_counts or parent.reference_distribution) if parent else {}
        selected = {
            int(c): float(n) for c, n in (version.sampler_params.get("per_cluster") or {}).items()
        }
        clusters = tuple(sorted({*window, *coverage_map, *selected}))
        if not clusters:
            continue

        def dense(values: dict[int, float], keys: tuple[int, ...] = clusters) -> np.ndarray:
            return np.array([values.get(c, 0.0) for c in keys], dtype=np.float64)

        usage, coverage = dense(window), dense(coverage_map)
        gap = gap_scores(usage, coverage) if usage.sum() > 0 else np.zeros(len(clusters))

        def shares(values: np.ndarray) -> np.ndarray:
            return values / values.sum() if values.sum() > 0 else values

        out.append(
            SelectionGap(
                version,
                clusters,
                shares(usage),
                shares(coverage),
                gap,
                dense(selected),
                drift.map_version,
            )
        )
    return sorted(out, key=lambda g: g.version.version)
