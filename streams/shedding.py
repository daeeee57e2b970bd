"""Load shedding that keeps the drift statistics honest.

Embedding is the bottleneck (tens of texts per second per CPU core). When prompts arrive faster,
the stream still *counts* every event but embeds only a uniform random sample of them. Two rules
keep that sample usable by the drift test (:mod:`compass.core.detectors.js`):

* **Uniform and content-blind.** Whether an event is embedded depends only on a hash of its
  ``event_id`` (:func:`sample_unit`), never on its text, language or cluster, so the sampled
  cluster counts are a multinomial sample of the window. The hash also makes the decision
  replay-stable: a redelivered event gets the same verdict at the same rate, and samples at
  nested rates are nested.
* **Known rate.** Each window records all events and the sampled ones; the test uses the sampled
  counts and the sampled size.

:class:`SamplingController` picks the rate: it estimates the embedder's capacity (texts/s), the
per-event overhead of everything else, the arrival rate (events consumed plus the change in
consumer lag) and chooses the largest rate whose throughput covers arrivals *and* drains the
current backlog within half of ``max_lag_s``. It lowers the rate at once and raises it gently,
so a burst does not make it oscillate. A forced rate (``COMPASS_STREAM_SAMPLE_RATE``) bypasses it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_SCALE = float(1 << 64)


def sample_unit(event_id: str) -> float:
    """A number in [0, 1) that is uniform over event ids and fixed for one id."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def is_sampled(event_id: str, rate: float) -> bool:
    """Embed this event at sampling ``rate``?"""
    return rate >= 1.0 or sample_unit(event_id) < rate


@dataclass(frozen=True)
class BatchStats:
    """What one micro-batch cost and what was waiting after it."""

    n_events: int
    n_embedded: int
    embed_seconds: float
    busy_seconds: float
    interval_seconds: float
    lag_events: int | None
    batch_full: bool = False


@dataclass(frozen=True)
class RateDecision:
    rate: float
    capacity: float | None
    arrival_rate: float | None
    lag_events: int | None
    lag_seconds: float | None
    throughput: float | None


class SamplingController:
    """Chooses the share of events to embed so that the backlog stays bounded."""

    def __init__(
        self,
        *,
        forced_rate: float | None = None,
        min_rate: float = 0.01,
        max_lag_s: float = 30.0,
        headroom: float = 0.9,
        smoothing: float = 0.3,
        max_increase: float = 1.25,
    ) -> None:
        if forced_rate is not None and not 0.0 < forced_rate <= 1.0:
            raise ValueError("a forced sample rate must be in (0, 1]")
        self.forced_rate = forced_rate
        self.min_rate = min_rate
        self.max_lag_s = max_lag_s
        self.headroom = headroom
        self.smoothing = smoothing
        self.max_increase = max_increase
        self.rate = forced_rate if forced_rate is not None else 1.0
        self.capacity: float | None = None  # embedded texts per second
        self.overhead: float = 0.0  # seconds per event outside the embedder
        self.arrival: float | None = None  # events per second
        self._last_lag: int | None = None
        self.last: RateDecision = RateDecision(self.rate, None, None, None, None, None)

    def _ewma(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.smoothing) * old + self.smoothing * new

    def update(self, stats: BatchStats) -> RateDecision:
        """Learn from one batch and return the rate for the next."""
        if stats.n_embedded > 0 and stats.embed_seconds > 0:
            self.capacity = self._ewma(self.capacity, stats.n_embedded / stats.embed_seconds)
        if stats.n_events > 0:
            other = max(0.0, stats.busy_seconds - stats.embed_seconds) / stats.n_events
            self.overhead = self._ewma(self.overhead, other)
        lag = stats.lag_events
        if lag is None and stats.batch_full:
            # no lag figure: a full batch means events are waiting; assume a full budget of them
            lag = int(2 * stats.n_events)
        if stats.interval_seconds > 0:
            grown = 0 if lag is None or self._last_lag is None else lag - self._last_lag
            arrived = max(0.0, (stats.n_events + grown) / stats.interval_seconds)
            self.arrival = self._ewma(self.arrival, arrived)
        self._last_lag = lag
        throughput = self._throughput(self.rate)
        lag_s = None if lag is None or not throughput else lag / throughput
        if self.forced_rate is None:
            self.rate = self._choose(lag)
        self.last = RateDecision(self.rate, self.capacity, self.arrival, lag, lag_s, throughput)
        return self.last

    def _throughput(self, rate: float) -> float | None:
        """Events per second the stream processes at ``rate``."""
        if not self.capacity:
            return None
        per_event = rate / (self.capacity * self.headroom) + self.overhead
        return 1.0 / per_event if per_event > 0 else None

    def _choose(self, lag: int | None) -> float:
        if self.capacity is None or self.arrival is None:
            return self.rate
        drain = (lag or 0) / (0.5 * self.max_lag_s)
        needed = self.arrival + drain
        if needed <= 0:
            target = 1.0
        else:
            budget = 1.0 / needed - self.overhead  # seconds of embedding per event we can afford
            target = budget * self.capacity * self.headroom
        target = min(1.0, max(self.min_rate, target))
        if target > self.rate:  # raise gently, lower at once
            target = min(target, self.rate * self.max_increase + 0.01)
        return target
