"""Load shedding: the sample is uniform and replay-stable; the rate keeps the backlog bounded."""

from __future__ import annotations

import numpy as np
import pytest

from streams.shedding import BatchStats, SamplingController, is_sampled, sample_unit


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


def _simulate(
    controller: SamplingController, arrival: float, capacity: float, steps: int = 400
) -> tuple[list[float], list[float]]:
    """A queue fed at ``arrival``/s, drained in batches of 64 by an embedder of ``capacity``/s."""
    batch, within, overhead = 64, 1.0, 0.002
    lag = 0.0
    lags, rates = [], []
    for _ in range(steps):
        wait = 0.0 if lag >= batch else min(within, (batch - lag) / arrival)
        lag += arrival * wait
        n = int(min(batch, lag))
        lag -= n
        rate = controller.rate
        embedded = round(n * rate)
        embed_s = embedded / capacity
        busy = embed_s + n * overhead
        lag += arrival * busy
        controller.update(
            BatchStats(
                n_events=n,
                n_embedded=embedded,
                embed_seconds=embed_s,
                busy_seconds=busy,
                interval_seconds=wait + busy,
                lag_events=int(lag),
                batch_full=n == batch,
            )
        )
        lags.append(lag)
        rates.append(controller.rate)
    return lags, rates


@pytest.mark.parametrize("factor", [2.0, 5.0])
def test_overload_is_shed_and_the_backlog_stays_bounded(factor: float) -> None:
    capacity = 60.0
    controller = SamplingController(max_lag_s=30.0)
    lags, rates = _simulate(controller, arrival=factor * capacity, capacity=capacity)
    tail_rate = float(np.mean(rates[-100:]))
    # the rate at which throughput (embedding at 90 % capacity + 2 ms/event) matches arrivals
    balance = 0.9 * capacity * (1.0 / (factor * capacity) - 0.002)
    assert 0.6 * balance < tail_rate <= 1.05 * balance
    # backlog measured in seconds of work at the chosen rate never exceeds the budget
    throughput = 1.0 / (tail_rate / capacity + 0.002)
    assert max(lags[-200:]) / throughput <= 30.0


def test_light_load_embeds_everything_and_recovers_after_a_burst() -> None:
    controller = SamplingController(max_lag_s=30.0)
    _simulate(controller, arrival=300.0, capacity=60.0, steps=150)
    assert controller.rate < 0.5
    _, rates = _simulate(controller, arrival=20.0, capacity=60.0, steps=150)
    assert rates[-1] == 1.0


def test_forced_rate_is_kept() -> None:
    controller = SamplingController(forced_rate=0.25)
    _simulate(controller, arrival=10.0, capacity=60.0, steps=20)
    assert controller.rate == 0.25
    with pytest.raises(ValueError):
        SamplingController(forced_rate=0.0)
