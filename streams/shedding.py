"""Load shedding that keeps the drift statistics honest: which events are embedded.

Embedding is the bottleneck (tens of texts per second per CPU core). When prompts arrive faster,
the stream still *counts* every event but embeds only a sample of them. Three rules keep that
sample usable by the drift test (:mod:`compass.core.detectors.js`):

* **Content-blind.** Whether an event is embedded depends only on a hash of its ``event_id``
  (:func:`sample_unit`) and on how many of its language's events were already embedded in its
  window, never on its text or cluster, so the sampled cluster counts of a window are a sample of
  the window's distribution. At one rate the hash makes the decision replay-stable and samples at
  nested rates nested.
* **Known size.** Each window records all events and the sampled ones; the test uses the sampled
  counts and the sampled size (:class:`compass.core.windows.Span.sample_rate` is
  ``n_sampled / n_events``), so its effective size follows what was actually embedded.
* **Stratified by language** (:class:`StratifiedSampler`): the first ``min_per_window`` events of
  each (language, base window) are embedded whatever the rate, then the hash decides at the
  controller's rate. A language with 1 % of the traffic therefore still reaches the drift test's
  minimum in every window instead of being starved by the busy ones.

The rate comes from :class:`streams.controller.SamplingController`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np

from compass.core.events import PromptEvent
from compass.core.windows import WindowPolicy

_SCALE = float(1 << 64)
MAX_TALLIES = 50_000


def sample_unit(event_id: str) -> float:
    """A number in [0, 1) that is uniform over event ids and fixed for one id."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def is_sampled(event_id: str, rate: float) -> bool:
    """Embed this event at sampling ``rate``?"""
    return rate >= 1.0 or sample_unit(event_id) < rate


class StratifiedSampler:
    """Chooses the events to embed: a per-(language, window) minimum, then a hash sample.

    ``rate`` is read at each call (the controller's current rate). ``min_per_window`` events of
    each language and base window (``policy.window_start``) are embedded first, in arrival order;
    the tallies are this process's (after a restart a window can get up to ``min_per_window``
    more, which costs embeddings, never counts: usage counting de-duplicates by event id).
    Decisions are made once per event, when its batch is gathered, and carried with it, so a
    retried batch embeds the same events.
    """

    def __init__(
        self, policy: WindowPolicy, rate: Callable[[], float], min_per_window: int = 0
    ) -> None:
        self.policy = policy
        self.rate = rate
        self.min_per_window = min_per_window
        self.tallies: dict[tuple[str, datetime], int] = {}

    def choose(self, events: Sequence[PromptEvent]) -> np.ndarray:
        """Boolean mask over ``events``: which to embed (updates the tallies)."""
        return self.choose_within(events, 0, len(events) + 1)[0]

    def choose_within(
        self, events: Sequence[PromptEvent], start: int, budget: int, limit: int | None = None
    ) -> tuple[np.ndarray, int]:
        """Decide ``events[start:]`` in order until ``budget`` are chosen or ``limit`` are
        decided; returns the mask over ``events[start:end]`` and ``end`` (the events after it
        are not decided yet — they wait for the next flush and the rate the controller sets
        after this one)."""
        rate = self.rate()
        mask = np.zeros(len(events) - start, dtype=bool)
        tallies, minimum = self.tallies, self.min_per_window
        end, chosen = start, 0
        stop = len(events) if limit is None else min(len(events), start + max(1, limit))
        while end < stop and chosen < budget:
            event = events[end]
            key = (event.language, self.policy.window_start(event.occurred_at))
            seen = tallies.get(key, 0)
            if seen < minimum or rate >= 1.0 or sample_unit(event.event_id) < rate:
                mask[end - start] = True
                tallies[key] = seen + 1
                chosen += 1
            end += 1
        if len(tallies) > MAX_TALLIES:
            self._forget_oldest()
        return mask[: end - start], end

    def _forget_oldest(self) -> None:
        """Keep the newest half of the windows (old windows are closed anyway)."""
        keep = sorted(self.tallies, key=lambda k: k[1])[len(self.tallies) // 2 :]
        self.tallies = {k: self.tallies[k] for k in keep}
