"""Event-time windows: when a language's usage is judged, and over which counts.

Pure code (numpy only, no I/O). Counts live in aligned event-time *base windows* (e.g. one hour),
each kept as a few equal *blocks* (the sub-samples the drift detector estimates burstiness
from). A base window is closed once the language's watermark (the latest ``occurred_at`` seen)
passes its end plus the allowed lateness (:func:`advance_watermarks`); later events are still
counted but no longer change a verdict.

Starting from an *anchor* (the first event under the current semantic map, or the end of the
last drift window plus a cooldown, :func:`resume_after`), the first base windows that hold
``reference_min_events`` sampled events form the reference (when no adapter reference exists),
then test windows are formed greedily: a test window closes at the first base boundary at which
it holds ``min_events`` sampled events. A busy language is therefore judged every base window
while a quiet one is judged over several (up to ``max_span_windows``; a span that still has too
few events is skipped, never judged on noise). The plan is a pure function of the per-window
counts, so a replay reproduces the same windows and the same drift keys.

:func:`plan_check` is the one place that turns a language's block counts into what a drift
check of the window ending at a boundary needs (:class:`WindowCheck`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple, Protocol

import numpy as np

from compass.core.distributions import counts_vector

UNASSIGNED_CLUSTER = -1
"""Cluster id for events counted in ``total`` but never embedded (dropped by load sampling)."""


class ClusterCount(NamedTuple):
    """Counts of one cluster: ``total`` (sum of weights) and ``sampled`` (events embedded)."""

    total: float
    sampled: int


Counted = Mapping[datetime, Mapping[int, ClusterCount]]
"""Counts per window (or block) start, then per cluster."""


@dataclass(frozen=True)
class WindowPolicy:
    """Event-time windowing of one language's usage (see the module docstring).

    ``base_seconds`` is the base window, ``blocks_per_window`` (a divisor of it) the blocks
    counts are kept in; ``min_events`` / ``reference_min_events`` count *sampled* events.
    Raises :class:`ValueError` on an inconsistent policy.
    """

    base_seconds: int = 3600
    allowed_lateness_seconds: int = 300
    min_events: int = 50
    reference_min_events: int = 100
    max_span_windows: int = 24
    cooldown_windows: int = 1
    blocks_per_window: int = 1

    def __post_init__(self) -> None:
        if self.base_seconds < 1 or self.allowed_lateness_seconds < 0:
            raise ValueError("base_seconds must be ≥ 1 and allowed lateness ≥ 0")
        if self.blocks_per_window < 1 or self.base_seconds % self.blocks_per_window:
            raise ValueError("blocks_per_window must divide base_seconds")
        if self.min_events < 1 or self.reference_min_events < 1 or self.max_span_windows < 1:
            raise ValueError("event minimums and max_span_windows must be ≥ 1")

    @property
    def base(self) -> timedelta:
        return timedelta(seconds=self.base_seconds)

    @property
    def block_seconds(self) -> int:
        """Counts are kept per block (a fixed fraction of a base window): blocks are the
        consecutive sub-samples the dispersion is estimated from."""
        return self.base_seconds // self.blocks_per_window

    def window_start(self, at: datetime) -> datetime:
        """Start of the aligned base window containing ``at`` (epoch-aligned, UTC)."""
        return _epoch_datetime(_aligned(at, self.base_seconds))

    def block_start(self, at: datetime) -> datetime:
        """Start of the aligned block containing ``at``."""
        return _epoch_datetime(_aligned(at, self.block_seconds))

    def closed_boundaries(self, before: datetime | None, after: datetime) -> list[datetime]:
        """Base-window ends that the watermark moving from ``before`` to ``after`` closes.

        A window ending at ``b`` closes when the watermark reaches ``b + allowed lateness``.
        With no previous watermark, only the boundaries inside the last base window are new.
        """
        lateness = timedelta(seconds=self.allowed_lateness_seconds)
        last = self.window_start(after - lateness)  # the latest boundary b with b + L ≤ after
        if before is None:
            return [last]
        first = self.window_start(before - lateness) + self.base
        out = []
        b = first
        while b <= last:
            out.append(b)
            b += self.base
        return out

    def is_late(self, at: datetime, watermark: datetime | None) -> bool:
        """Was the base window of an event at ``at`` already final at ``watermark``?"""
        if watermark is None:
            return False
        end = _aligned(at, self.base_seconds) + self.base_seconds  # epoch seconds
        return end + self.allowed_lateness_seconds <= watermark.timestamp()


def _aligned(at: datetime, size: int) -> int:
    """Epoch seconds of the start of the ``size``-second slot holding ``at``."""
    return int(at.timestamp() // size) * size


@lru_cache(maxsize=4096)
def _epoch_datetime(seconds: int) -> datetime:
    """The UTC datetime of whole epoch ``seconds`` (window and block starts are few and
    recur for every event in them: the stream asks for one per event)."""
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class WindowBin:
    """One base window's counts for one language: all events and sampled (embedded) ones."""

    start: datetime
    n_events: int
    n_sampled: int


@dataclass(frozen=True)
class Span:
    """A run of consecutive base windows ``[start, end)``; ``enough`` says it may be judged."""

    start: datetime
    end: datetime
    n_events: int
    n_sampled: int
    enough: bool

    @property
    def sample_rate(self) -> float:
        """The share of the span's events that were embedded (1 for an empty span's guard)."""
        return self.n_sampled / max(self.n_events, 1)


@dataclass(frozen=True)
class WindowPlan:
    reference: Span | None
    tests: tuple[Span, ...]


def plan_windows(
    bins: Sequence[WindowBin],
    policy: WindowPolicy,
    *,
    anchor: datetime,
    until: datetime,
    need_reference: bool,
) -> WindowPlan:
    """Cut ``[anchor, until)`` into a reference span (if needed) and test spans.

    ``bins`` may skip empty base windows. Every span ends on a base boundary; a test span ends at
    the first boundary where it holds ``min_events`` sampled events, or after
    ``max_span_windows`` base windows with ``enough=False`` (skipped, not judged). A trailing span
    that is neither is still open and not returned.
    """
    by_start = {b.start: b for b in bins}
    start = policy.window_start(anchor)
    reference: Span | None = None
    tests: list[Span] = []
    span_start, n_all, n_sampled, width = start, 0, 0, 0
    cursor = start
    while cursor + policy.base <= until:
        current = by_start.get(cursor)
        if current is not None:
            n_all += current.n_events
            n_sampled += current.n_sampled
        width += 1
        cursor += policy.base
        if need_reference and reference is None:
            if n_sampled >= policy.reference_min_events:
                reference = Span(span_start, cursor, n_all, n_sampled, True)
                span_start, n_all, n_sampled, width = cursor, 0, 0, 0
            continue
        if n_sampled >= policy.min_events or width >= policy.max_span_windows:
            enough = n_sampled >= policy.min_events
            tests.append(Span(span_start, cursor, n_all, n_sampled, enough))
            span_start, n_all, n_sampled, width = cursor, 0, 0, 0
    return WindowPlan(reference=reference, tests=tuple(tests))


# --------------------------------------------------------------------------- watermarks
class Timed(Protocol):
    """Anything with a language and an event time (a :class:`~compass.core.events.PromptEvent`)."""

    @property
    def language(self) -> str: ...

    @property
    def occurred_at(self) -> datetime: ...


def advance_watermarks(
    watermarks: dict[str, datetime],
    events: Iterable[Timed],
    policy: WindowPolicy,
    *,
    limit: datetime | None = None,
) -> dict[str, list[datetime]]:
    """Move each language's watermark (latest ``occurred_at`` seen) and return, per language,
    the base-window ends that became final (end + allowed lateness ≤ watermark).

    ``watermarks`` is updated in place. A language seen for the first time since start-up starts
    from its earliest event in the batch, so windows whose verdicts may have been lost in a crash
    are judged again (drift events are idempotent per window). No watermark passes ``limit``
    (the stream passes the wall clock plus the allowed clock skew): one event stamped years ahead
    can neither close the windows in between nor make on-time events late."""
    by_language: dict[str, list[datetime]] = {}
    for event in events:
        at = event.occurred_at if limit is None else min(event.occurred_at, limit)
        by_language.setdefault(event.language, []).append(at)
    closed: dict[str, list[datetime]] = {}
    for language, times in by_language.items():
        before = watermarks.get(language, min(times))
        after = max(before, max(times))
        watermarks[language] = after
        boundaries = _closed_near(policy, before, after, times) if after > before else []
        if boundaries:
            closed[language] = boundaries
    return closed


def _closed_near(
    policy: WindowPolicy, before: datetime, after: datetime, times: Iterable[datetime]
) -> list[datetime]:
    """:meth:`WindowPolicy.closed_boundaries` of ``before → after``, keeping only boundaries
    within ``max_span_windows + 1`` base windows after an event: of this batch (``times``) or an
    earlier one (at most ``before``). A span ending farther from every event holds none and is
    never judged, so a watermark that jumps years (an old event, then a current one) costs checks
    only where there were events."""
    lateness = timedelta(seconds=policy.allowed_lateness_seconds)
    first = policy.window_start(before - lateness) + policy.base
    last = policy.window_start(after - lateness)
    reach = policy.base * (policy.max_span_windows + 1)
    ranges = [(first, policy.window_start(before) + reach)]
    ranges += [(start, start + reach) for start in {policy.window_start(t) for t in times}]
    out: set[datetime] = set()
    for low, high in ranges:
        boundary = max(first, low)
        while boundary <= min(last, high):
            out.add(boundary)
            boundary += policy.base
    return sorted(out)


# --------------------------------------------------------------------------- counts
def group_windows(
    by_block: Counted, policy: WindowPolicy
) -> dict[datetime, dict[int, ClusterCount]]:
    """Block counts summed into their base windows."""
    out: dict[datetime, dict[int, ClusterCount]] = {}
    for start, counts in by_block.items():
        window = out.setdefault(policy.window_start(start), {})
        for cluster, count in counts.items():
            old = window.get(cluster, ClusterCount(0.0, 0))
            window[cluster] = ClusterCount(old.total + count.total, old.sampled + count.sampled)
    return out


def window_bins(by_window: Counted) -> list[WindowBin]:
    """One :class:`WindowBin` per base window, oldest first (events rounded to whole ones)."""
    return [
        WindowBin(
            start=start,
            n_events=round(sum(c.total for c in counts.values())),
            n_sampled=sum(c.sampled for c in counts.values()),
        )
        for start, counts in sorted(by_window.items())
    ]


def span_counts(by_window: Counted, span: Span) -> dict[int, float]:
    """Sampled counts per (real) cluster over the span's base windows."""
    out: dict[int, float] = {}
    for start, counts in by_window.items():
        if span.start <= start < span.end:
            for cluster, count in counts.items():
                if cluster != UNASSIGNED_CLUSTER and count.sampled:
                    out[cluster] = out.get(cluster, 0.0) + count.sampled
    return out


def span_blocks(by_block: Counted, span: Span, n_clusters: int) -> np.ndarray:
    """``(blocks, n_clusters)`` sampled counts, one row per block of the span, oldest first (the
    dispersion's sub-samples); shed events (:data:`UNASSIGNED_CLUSTER`) are left out."""
    rows = [
        counts_vector({c: n.sampled for c, n in counts.items()}, n_clusters)
        for start, counts in sorted(by_block.items())
        if span.start <= start < span.end
    ]
    return np.array(rows) if rows else np.zeros((0, n_clusters))


# --------------------------------------------------------------------------- one check
@dataclass(frozen=True)
class WindowCheck:
    """What a drift check of one closed window needs, cut from a language's block counts.

    ``test`` is the span ending at the boundary (judge it only if ``test.enough``) and ``counts``
    its sampled counts per cluster. ``reference`` is the live reference span when one was
    needed, with its sampled counts and its ``(blocks, k)`` block rows; ``None`` otherwise.
    """

    test: Span
    counts: dict[int, float]
    reference: Span | None = None
    reference_counts: dict[int, float] | None = None
    reference_blocks: np.ndarray | None = None


def resume_after(last_window_end: datetime | None, policy: WindowPolicy) -> datetime | None:
    """Where the next plan starts: the end of the last drift window plus the cooldown, or
    ``None`` (from the language's first event) when it has not drifted under this map."""
    if last_window_end is None:
        return None
    return last_window_end + policy.base * policy.cooldown_windows


def plan_check(
    by_block: Counted,
    policy: WindowPolicy,
    *,
    anchor: datetime | None,
    boundary: datetime,
    need_reference: bool,
    n_clusters: int,
) -> WindowCheck | None:
    """The check of the window that ends at ``boundary``, or ``None`` when no test span ends
    there (still open, or nothing counted, or no reference yet).

    ``by_block`` holds the language's block counts from ``anchor`` (or from its first block when
    ``anchor`` is ``None``) up to ``boundary``; ``n_clusters`` is the semantic map's ``k``.
    """
    if not by_block:
        return None
    by_window = group_windows(by_block, policy)
    plan = plan_windows(
        window_bins(by_window),
        policy,
        anchor=min(by_window) if anchor is None else anchor,
        until=boundary,
        need_reference=need_reference,
    )
    if not plan.tests or plan.tests[-1].end != boundary:
        return None
    test = plan.tests[-1]
    reference = plan.reference if need_reference else None
    return WindowCheck(
        test=test,
        counts=span_counts(by_window, test),
        reference=reference,
        reference_counts=None if reference is None else span_counts(by_window, reference),
        reference_blocks=None
        if reference is None
        else span_blocks(by_block, reference, n_clusters),
    )
