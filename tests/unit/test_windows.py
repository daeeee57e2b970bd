"""Event-time windows: closing, planning, the count roll-ups and the plan of one check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from compass.core import windows
from compass.core.windows import (
    UNASSIGNED_CLUSTER,
    ClusterCount,
    Span,
    WindowBin,
    WindowPolicy,
    plan_windows,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = WindowPolicy(
    base_seconds=60,
    allowed_lateness_seconds=10,
    min_events=30,
    reference_min_events=60,
    max_span_windows=4,
)
BLOCKS = WindowPolicy(base_seconds=60, allowed_lateness_seconds=10, blocks_per_window=6)


def _bins(sampled: list[int]) -> list[WindowBin]:
    return [WindowBin(T0 + timedelta(minutes=i), n, n) for i, n in enumerate(sampled) if n > 0]


def test_busy_language_is_judged_every_base_window_after_its_reference() -> None:
    plan = plan_windows(
        _bins([40] * 6), POLICY, anchor=T0, until=T0 + timedelta(minutes=6), need_reference=True
    )
    assert plan.reference is not None
    assert (plan.reference.start, plan.reference.end) == (T0, T0 + timedelta(minutes=2))
    assert [t.end - t.start for t in plan.tests] == [timedelta(minutes=1)] * 4
    assert all(t.enough for t in plan.tests)


def test_quiet_language_gets_longer_windows_and_hopeless_spans_are_skipped() -> None:
    counts = [12] * 6 + [0] * 4 + [12] * 3
    plan = plan_windows(
        _bins(counts), POLICY, anchor=T0, until=T0 + timedelta(minutes=13), need_reference=False
    )
    spans = [
        (int((t.start - T0).total_seconds() // 60), int((t.end - T0).total_seconds() // 60))
        for t in plan.tests
    ]
    assert spans == [(0, 3), (3, 6), (6, 10), (10, 13)]
    assert [t.enough for t in plan.tests] == [True, True, False, True]
    # the open span at the end is not returned until it closes
    partial = plan_windows(
        _bins(counts), POLICY, anchor=T0, until=T0 + timedelta(minutes=12), need_reference=False
    )
    assert len(partial.tests) == 3


def test_closed_boundaries_respect_allowed_lateness() -> None:
    before = T0 + timedelta(seconds=75)
    after = T0 + timedelta(seconds=200)  # closes windows ending at 2:00 (+10 s) and 3:00 (+10 s)
    assert POLICY.closed_boundaries(before, after) == [
        T0 + timedelta(minutes=2),
        T0 + timedelta(minutes=3),
    ]
    assert POLICY.closed_boundaries(after, after + timedelta(seconds=5)) == []
    assert POLICY.window_start(T0 + timedelta(seconds=119)) == T0 + timedelta(minutes=1)
    # an event of the first window is late once the watermark passed 1:00 + 10 s
    assert POLICY.is_late(T0 + timedelta(seconds=30), T0 + timedelta(seconds=70))
    assert not POLICY.is_late(T0 + timedelta(seconds=30), T0 + timedelta(seconds=69))
    assert not POLICY.is_late(T0, None)
    # at the microsecond: the watermark exactly at end + lateness makes it late, 1 µs before not
    assert POLICY.is_late(
        T0 + timedelta(seconds=59, microseconds=999_999), T0 + timedelta(seconds=70)
    )
    assert not POLICY.is_late(T0, T0 + timedelta(seconds=69, microseconds=999_999))


HOURLY = WindowPolicy(base_seconds=3600, allowed_lateness_seconds=0, blocks_per_window=4)


@given(
    at=st.datetimes(datetime(1971, 1, 1), datetime(8999, 1, 1), timezones=st.just(UTC)),
    ahead_us=st.integers(-(10**12), 10**12),
    policy=st.sampled_from([POLICY, BLOCKS, HOURLY]),
)
def test_window_arithmetic_on_epoch_seconds_agrees_with_datetimes(
    at: datetime, ahead_us: int, policy: WindowPolicy
) -> None:
    """``window_start``/``block_start``/``is_late`` compute on epoch seconds (they run per
    event); the datetime definitions are the reference."""
    start = policy.window_start(at)
    assert start <= at < start + policy.base and start.timestamp() % policy.base_seconds == 0
    block = policy.block_start(at)
    assert block <= at < block + timedelta(seconds=policy.block_seconds) and block >= start
    watermark = at + timedelta(microseconds=ahead_us)
    lateness = timedelta(seconds=policy.allowed_lateness_seconds)
    assert policy.is_late(at, watermark) == (start + policy.base + lateness <= watermark)


@dataclass(frozen=True)
class _Seen:
    language: str
    occurred_at: datetime


def _at(language: str, seconds: float) -> _Seen:
    return _Seen(language, T0 + timedelta(seconds=seconds))


def test_watermarks_close_windows_after_the_allowed_lateness() -> None:
    marks: dict[str, datetime] = {}
    closed = windows.advance_watermarks(marks, [_at("fr", 15), _at("fr", 50)], BLOCKS)
    assert closed == {}  # first window ends at 60 s, final at 70 s
    closed = windows.advance_watermarks(marks, [_at("fr", 71), _at("de", 200)], BLOCKS)
    assert closed == {"fr": [T0 + timedelta(minutes=1)]}
    assert marks["fr"] == T0 + timedelta(seconds=71)
    closed = windows.advance_watermarks(marks, [_at("fr", 30)], BLOCKS)  # late: no change
    assert closed == {} and marks["fr"] == T0 + timedelta(seconds=71)


def test_block_counts_roll_up_into_windows_spans_and_blocks() -> None:
    by_block = {
        T0: {0: ClusterCount(3, 3), UNASSIGNED_CLUSTER: ClusterCount(2, 0)},
        T0 + timedelta(seconds=10): {1: ClusterCount(1, 1)},
        T0 + timedelta(seconds=60): {0: ClusterCount(4, 2)},
    }
    by_window = windows.group_windows(by_block, BLOCKS)
    assert by_window[T0] == {
        0: ClusterCount(3, 3),
        UNASSIGNED_CLUSTER: ClusterCount(2, 0),
        1: ClusterCount(1, 1),
    }
    bins = windows.window_bins(by_window)
    assert [(b.n_events, b.n_sampled) for b in bins] == [(6, 4), (4, 2)]
    span = Span(T0, T0 + timedelta(minutes=2), 10, 6, True)
    assert span.sample_rate == 0.6
    assert windows.span_counts(by_window, span) == {0: 5.0, 1: 1.0}
    blocks = windows.span_blocks(by_block, span, n_clusters=2)
    assert blocks.tolist() == [[3, 0], [0, 1], [2, 0]]
    assert windows.span_blocks({}, span, n_clusters=2).shape == (0, 2)


def _minutes(per_minute: list[dict[int, int]]) -> dict[datetime, dict[int, ClusterCount]]:
    return {
        T0 + timedelta(minutes=i): {c: ClusterCount(float(n), n) for c, n in counts.items()}
        for i, counts in enumerate(per_minute)
        if counts
    }


def test_plan_check_cuts_the_reference_and_the_window_ending_at_the_boundary() -> None:
    by_block = _minutes([{0: 30, 1: 10}, {0: 25, 1: 15}, {0: 10, 2: 25}, {1: 40}])
    check = windows.plan_check(
        by_block, POLICY, anchor=None, boundary=T0 + timedelta(minutes=3),
        need_reference=True, n_clusters=3,
    )  # fmt: skip
    assert check is not None and check.reference is not None
    assert (check.reference.start, check.reference.end) == (T0, T0 + timedelta(minutes=2))
    assert check.reference_counts == {0: 55.0, 1: 25.0}
    assert check.reference_blocks is not None
    assert check.reference_blocks.tolist() == [[30, 10, 0], [25, 15, 0]]
    assert (check.test.start, check.test.end, check.test.enough) == (
        T0 + timedelta(minutes=2), T0 + timedelta(minutes=3), True,
    )  # fmt: skip
    assert check.counts == {0: 10.0, 2: 25.0}
    # no test span ends at 2:00 (that is where the reference ends): nothing to check
    early = windows.plan_check(
        by_block, POLICY, anchor=None, boundary=T0 + timedelta(minutes=2),
        need_reference=True, n_clusters=3,
    )  # fmt: skip
    assert early is None


def test_plan_check_against_an_adapter_needs_no_reference_and_resumes_after_cooldown() -> None:
    by_block = _minutes([{}, {}, {0: 12}, {1: 20}])
    anchor = windows.resume_after(T0 + timedelta(minutes=1), POLICY)
    assert anchor == T0 + timedelta(minutes=2)
    assert windows.resume_after(None, POLICY) is None
    check = windows.plan_check(
        by_block, POLICY, anchor=anchor, boundary=T0 + timedelta(minutes=4),
        need_reference=False, n_clusters=2,
    )  # fmt: skip
    assert check is not None
    assert check.reference is None and check.reference_counts is None
    assert (check.test.start, check.test.n_sampled) == (T0 + timedelta(minutes=2), 32)
    assert check.counts == {0: 12.0, 1: 20.0}
    assert windows.plan_check({}, POLICY, anchor=anchor, boundary=T0, need_reference=False,
                              n_clusters=2) is None  # fmt: skip


def test_span_blocks_are_what_the_stream_counted_before() -> None:
    """The block rows through ``counts_vector`` equal the hand-built rows they replace."""
    rng = np.random.default_rng(0)
    by_block = {
        T0 + timedelta(seconds=10 * i): {
            int(c): ClusterCount(float(n), int(n)) for c, n in enumerate(rng.integers(0, 5, 4))
        }
        | {UNASSIGNED_CLUSTER: ClusterCount(3.0, 0)}
        for i in range(12)
    }
    span = Span(T0, T0 + timedelta(minutes=2), 0, 0, True)
    expected = []
    for _, counts in sorted(by_block.items()):
        row = np.zeros(4)
        for cluster, count in counts.items():
            if 0 <= cluster < 4:
                row[cluster] += count.sampled
        expected.append(row)
    assert np.array_equal(windows.span_blocks(by_block, span, 4), np.array(expected))
