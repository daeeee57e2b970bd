"""Usage drift: is a language's live cluster distribution still the one its adapter was built for?

Pure domain code (numpy/scipy only, no I/O). Two parts:

**The detector** (:class:`JSDriftDetector`, alibi-detect style: ``fit`` → ``score`` → ``predict``).
The statistic is the Jensen–Shannon divergence (base 2, so it lies in [0, 1]) between the
reference cluster shares and the window's shares. A finite window inflates JS even when nothing
changed — roughly ``JS ≈ χ²_{K-1} / (8 ln2 · n)`` for ``n`` events over ``K`` clusters — so a fixed
threshold is wrong for every window size but one. The threshold is instead *calibrated for the
window*: we simulate the statistic under "no drift" by drawing multinomial windows (and, when the
reference is itself a finite sample, a fresh reference) from the smoothed reference shares and
take the ``1 - α`` quantile (at its Monte Carlo upper confidence bound, so the false-alarm rate
stays at or below target). When ``α`` is so small that too few simulated values reach the tail,
the tail is extrapolated: JS has an exponential upper tail (as the χ² it approximates), so a line
through the log-survival of the top 2 % of the simulations gives the far quantiles.

*Dependence.* Real usage comes in sessions and bursts: one user asks several related questions,
so counts are over-dispersed — ``Var(count_k) = φ·n·p_k(1-p_k)`` with ``φ ≥ 1`` instead of the
multinomial's ``φ = 1``. Treating such a window as ``n`` independent events makes false alarms
frequent. We estimate ``φ`` from consecutive blocks of the reference period (Pearson dispersion
statistic, ``X² / df`` across blocks — the block analogue of a block bootstrap's variance
inflation; we use its upper confidence bound, as an underestimate is what causes false alarms)
and calibrate with the *effective* sample size ``n / φ``.

*Load shedding.* Under sampling the pipeline embeds a uniform random subset at a known rate
``r``; the cluster counts of that subset are themselves a multinomial sample of the window, so
the test uses the sampled counts and the *sampled* size. Thinning at rate ``r`` reduces session
clumping: a dispersion ``φ`` of the full stream becomes ``1 + r(φ − 1)`` in the sample.

*Many languages.* Each evaluation round tests every active language; the per-test level is
``α / m`` (Bonferroni), so the chance of *any* false alarm in a round stays ≤ ``α`` whatever the
dependence between languages. (Benjamini–Hochberg is offered for offline batches with
:func:`benjamini_hochberg`; online, languages close their windows at different times, which BH
cannot wait for.)

**The windows** (:class:`WindowPolicy`, :func:`plan_windows`). Counts live in aligned event-time
*base windows* (e.g. one hour), each kept as a few equal *blocks* (the dispersion's sub-samples).
A base window is closed once the language's watermark (the latest ``occurred_at`` seen) passes
its end plus the allowed lateness; later events are still counted but no longer change a
verdict. Starting from an *anchor* (the first event under the
current semantic map, or the end of the last drift window plus a cooldown), the first base
windows that hold ``reference_min_events`` sampled events form the reference (when no adapter
reference exists), then test windows are formed greedily: a test window closes at the first base
boundary at which it holds ``min_events`` sampled events. A busy language is therefore judged
every base window while a quiet one is judged over several (up to ``max_span_windows``; a span
that still has too few events is skipped, never judged on noise). The plan is a pure function of
the per-window counts, so a replay reproduces the same windows and the same drift keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
from scipy import stats

from compass.core.distributions import js_divergence

Counts = Mapping[int, float] | Sequence[float] | np.ndarray
_EPS = 1e-12


# --------------------------------------------------------------------------- statistics


def estimate_dispersion(blocks: np.ndarray, confidence: float | None = 0.9) -> float:
    """Over-dispersion ``φ`` of counts across consecutive blocks (rows = blocks, cols = clusters).

    Pearson's ``X² / df`` against the pooled shares: about 1 for independent events, about the
    mean length-weighted session size when events come in same-topic sessions. The estimate is
    noisy (``X²`` has ``df`` degrees of freedom) and an underestimate raises false alarms, so by
    default we return its one-sided upper confidence bound ``X² / χ²_df(1 - confidence)``.
    Never below 1: less dispersion than multinomial would make the test anti-conservative.
    """
    counts = np.asarray(blocks, dtype=np.float64)
    if counts.ndim != 2:
        return 1.0
    counts = counts[counts.sum(axis=1) > 0]
    if counts.shape[0] < 2:
        return 1.0
    shares = counts.sum(axis=0) / counts.sum()
    used = shares > 0
    if used.sum() < 2:
        return 1.0
    expected = counts.sum(axis=1, keepdims=True) * shares[None, :]
    x2 = float((((counts - expected)[:, used]) ** 2 / expected[:, used]).sum())
    df = (counts.shape[0] - 1) * (int(used.sum()) - 1)
    if df <= 0:
        return 1.0
    if confidence is None:
        return max(1.0, x2 / df)
    return max(1.0, x2 / float(stats.chi2.ppf(1.0 - confidence, df)))


def thinned_dispersion(dispersion: float, sample_rate: float) -> float:
    """Dispersion of a uniform ``sample_rate`` sample of a stream with dispersion ``φ``.

    Within a session of ``m`` events, ``r·m`` are kept on average but only ``r²·m(m-1)`` of its
    pairs, so the design effect ``1 + ρ(m-1)`` becomes ``1 + r·ρ(m-1)``.
    """
    return 1.0 + min(max(sample_rate, 0.0), 1.0) * (max(dispersion, 1.0) - 1.0)


def benjamini_hochberg(p_values: Sequence[float], q: float) -> list[bool]:
    """Which of several simultaneous tests to reject with false-discovery rate ``q`` (BH 1995)."""
    m = len(p_values)
    if m == 0:
        return []
    order = np.argsort(p_values)
    ranked = np.asarray(p_values, dtype=np.float64)[order]
    passing = np.nonzero(ranked <= q * (np.arange(1, m + 1) / m))[0]
    reject = np.zeros(m, dtype=bool)
    if passing.size:
        reject[order[: passing.max() + 1]] = True
    return reject.tolist()


# --------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class DriftConfig:
    """How strict the detector is. ``false_alarm_rate`` is per evaluation round across all
    ``n_tests`` languages (Bonferroni); ``min_events`` counts *sampled* events."""

    false_alarm_rate: float = 0.01
    n_tests: int = 1
    correction: Literal["bonferroni", "none"] = "bonferroni"
    min_events: int = 50
    n_simulations: int = 4000
    smoothing: float = 0.5
    min_dispersion: float = 1.0
    max_dispersion: float = 50.0
    dispersion_confidence: float | None = 0.9
    top_k: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarm_rate < 1.0:
            raise ValueError("false_alarm_rate must be in (0, 1)")
        if self.n_tests < 1 or self.min_events < 1 or self.n_simulations < 200:
            raise ValueError("n_tests, min_events must be ≥ 1 and n_simulations ≥ 200")

    @classmethod
    def from_expected_run_time(
        cls, windows_between_false_alarms: float, **kw: object
    ) -> DriftConfig:
        """Configure by the expected number of rounds between two false alarms (1 / α)."""
        if windows_between_false_alarms <= 1:
            raise ValueError("expected run time must exceed one window")
        return cls(false_alarm_rate=1.0 / windows_between_false_alarms, **kw)  # type: ignore[arg-type]

    @property
    def test_level(self) -> float:
        """The level each single language is tested at."""
        if self.correction == "bonferroni":
            return self.false_alarm_rate / self.n_tests
        return self.false_alarm_rate


@dataclass(frozen=True)
class ClusterShift:
    """How much one cluster's share moved, and its part of the JS statistic."""

    cluster: int
    reference_share: float
    window_share: float
    delta: float
    contribution: float


@dataclass(frozen=True)
class DriftResult:
    """A scored window. ``is_drift`` is the decision; the rest says why."""

    statistic: float
    threshold: float
    p_value: float
    n_events: int
    n_sampled: int
    n_effective: float
    sample_rate: float
    dispersion: float
    is_drift: bool
    reason: Literal["drift", "no_drift", "insufficient_events"]
    top_changes: tuple[ClusterShift, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class _Null:
    values: np.ndarray  # sorted simulated statistics
    slope: float  # tail model: log P(JS > x) ≈ intercept + slope · x beyond the data
    intercept: float


class JSDriftDetector:
    """Jensen–Shannon drift test of a window's cluster counts against a reference.

    ``fit`` takes the reference as counts (a finite sample, e.g. the first stable window) or as
    shares with ``n_reference=None`` (treated as exact, e.g. an adapter's training coverage).
    State is explicit: ``reference``, ``n_reference``, ``dispersion``; ``fit`` replaces it, and
    ``score`` never changes it.
    """

    def __init__(self, config: DriftConfig | None = None, n_clusters: int | None = None) -> None:
        self.config = config or DriftConfig()
        self.n_clusters = n_clusters
        self.reference: dict[int, float] = {}
        self.n_reference: float | None = None
        self.dispersion: float = 1.0
        self._null_cache: dict[tuple[int, int], _Null] = {}

    # -- fitting
    def fit(
        self,
        reference: Counts,
        *,
        exact: bool = False,
        blocks: np.ndarray | None = None,
        blocks_sample_rate: float = 1.0,
        dispersion: float | None = None,
    ) -> JSDriftDetector:
        """Set the reference. ``blocks`` (consecutive reference sub-windows × clusters, counted
        at ``blocks_sample_rate``) estimate the stream's dispersion; ``dispersion`` sets it."""
        ref = _as_dict(reference)
        total = sum(ref.values())
        if total <= 0:
            raise ValueError("the reference distribution is empty")
        self.reference = {k: v / total for k, v in ref.items() if v > 0}
        self.n_reference = None if exact else float(total)
        if dispersion is not None:
            phi = max(1.0, float(dispersion))
        elif blocks is not None:
            phi_sampled = estimate_dispersion(blocks, self.config.dispersion_confidence)
            phi = 1.0 + (phi_sampled - 1.0) / max(blocks_sample_rate, 1e-6)
        else:
            phi = 1.0
        phi = max(phi, self.config.min_dispersion)
        self.dispersion = min(phi, self.config.max_dispersion)
        self._null_cache.clear()
        return self

    # -- scoring
    def score(
        self, window: Counts, *, n_events: int | None = None, sample_rate: float = 1.0
    ) -> DriftResult:
        """Score a window's (sampled) cluster counts. ``n_events`` is the window's total event
        count including events shed by sampling; ``sample_rate`` the share that was embedded."""
        if not self.reference:
            raise RuntimeError("fit() the detector before scoring")
        win = _as_dict(window)
        n_sampled = round(sum(win.values()))
        n_all = int(n_events) if n_events is not None else n_sampled
        rate = min(max(float(sample_rate), 1e-6), 1.0)
        phi = thinned_dispersion(self.dispersion, rate)
        n_eff = n_sampled / phi
        clusters = self._universe(win)
        ref_vec = np.array([self.reference.get(c, 0.0) for c in clusters])
        win_vec = np.array([win.get(c, 0.0) for c in clusters], dtype=np.float64)
        statistic = float(js_divergence(ref_vec, win_vec)) if n_sampled else 0.0
        changes = _top_changes(clusters, ref_vec, win_vec, self.config.top_k)
        common = dict(
            statistic=statistic,
            n_events=n_all,
            n_sampled=n_sampled,
            n_effective=n_eff,
            sample_rate=rate,
            dispersion=phi,
            top_changes=changes,
        )
        if n_sampled < self.config.min_events:
            return DriftResult(
                threshold=math.nan,
                p_value=1.0,
                is_drift=False,
                reason="insufficient_events",
                **common,  # type: ignore[arg-type]
            )
        null = self._null(n_eff)
        alpha = self.config.test_level
        threshold = _quantile(null, 1.0 - alpha)
        p_value = _p_value(null, statistic)
        is_drift = statistic > threshold
        return DriftResult(
            threshold=threshold,
            p_value=p_value,
            is_drift=is_drift,
            reason="drift" if is_drift else "no_drift",
            **common,  # type: ignore[arg-type]
        )

    def predict(
        self, window: Counts, *, n_events: int | None = None, sample_rate: float = 1.0
    ) -> bool:
        """The decision alone."""
        return self.score(window, n_events=n_events, sample_rate=sample_rate).is_drift

    def threshold_for(self, n_sampled: int, sample_rate: float = 1.0) -> float:
        """The calibrated threshold a window of ``n_sampled`` sampled events would face."""
        n_eff = n_sampled / thinned_dispersion(self.dispersion, sample_rate)
        return _quantile(self._null(n_eff), 1.0 - self.config.test_level)

    # -- internals
    def _universe(self, window: Mapping[int, float]) -> list[int]:
        keys = set(self.reference) | set(window)
        if self.n_clusters:
            keys |= set(range(self.n_clusters))
        return sorted(keys)

    def _null(self, n_eff: float) -> _Null:
        """Simulated JS under 'no drift' for a window of ``n_eff`` independent events."""
        n_win = _grid(n_eff)
        n_ref = 0 if self.n_reference is None else max(1, round(self.n_reference / self.dispersion))
        key = (n_win, n_ref)
        cached = self._null_cache.get(key)
        if cached is not None:
            return cached
        clusters = sorted(set(self.reference) | set(range(self.n_clusters or 0)))
        shares = np.array([self.reference.get(c, 0.0) for c in clusters])
        if self.n_reference is not None:
            # a finite reference: smooth so clusters it happened not to see can still occur
            counts = shares * self.n_reference + self.config.smoothing
            shares = counts / counts.sum()
        rng = np.random.default_rng(self.config.seed + 7919 * n_win + n_ref)
        b = _n_simulations(self.config)
        windows = rng.multinomial(n_win, shares, size=b)
        refs = rng.multinomial(n_ref, shares, size=b) if n_ref else shares[None, :]
        values = np.sort(js_divergence(refs, windows))
        slope, intercept = _tail_fit(values)
        null = _Null(values=values, slope=slope, intercept=intercept)
        if len(self._null_cache) > 512:
            self._null_cache.clear()
        self._null_cache[key] = null
        return null


def _as_dict(counts: Counts) -> dict[int, float]:
    if isinstance(counts, Mapping):
        items = {int(k): float(v) for k, v in counts.items()}
    else:
        items = {i: float(v) for i, v in enumerate(np.asarray(counts, dtype=np.float64).ravel())}
    if any(v < 0 or not math.isfinite(v) for v in items.values()):
        raise ValueError("counts must be finite and non-negative")
    return items


# Below this many simulated values beyond the quantile, the empirical tail is too thin to trust.
_MIN_TAIL = 20
_TAIL_VALUES = 50
_Z90 = 1.2816
_MAX_SIMULATIONS = 20_000


def _grid(n_eff: float) -> int:
    """``n_eff`` rounded *down* to a 2 % geometric grid above 50: windows of similar size share
    one simulated null (cache hits), and a smaller n only raises the threshold (safe side)."""
    n = max(1, int(n_eff))
    if n <= 50:
        return n
    step = math.log(1.02)
    return max(50, math.ceil(math.exp(math.floor(math.log(n) / step) * step) - 1e-9))


def _n_simulations(config: DriftConfig) -> int:
    """Enough simulations for ~50 values beyond the test level's quantile, within a budget."""
    wanted = math.ceil(_TAIL_VALUES / config.test_level) + 1
    return int(min(max(config.n_simulations, wanted), _MAX_SIMULATIONS))


def _quantile(null: _Null, level: float) -> float:
    """The ``level`` quantile of the null, on the safe side of its Monte Carlo error.

    The empirical quantile of ``B`` simulations misses the true one by about
    ``sqrt(level(1-level)/B)`` in probability; we take the order statistic at the one-sided 90 %
    upper confidence bound so that the false-alarm rate stays at or below target rather than
    around it. Thin tails fall back to the exponential tail fit (:func:`_tail_fit`).
    """
    b = null.values.size
    rank = level * b + _Z90 * math.sqrt(b * level * (1.0 - level))
    if b - rank >= _MIN_TAIL:
        index = min(b - 1, math.ceil(rank) - 1)
        return float(null.values[index])
    if null.slope >= 0:
        return float(null.values[-1])
    return float((math.log(1.0 - level) - null.intercept) / null.slope)


def _p_value(null: _Null, statistic: float) -> float:
    b = null.values.size
    beyond = b - int(np.searchsorted(null.values, statistic - 1e-15, side="left"))
    if beyond >= _MIN_TAIL or null.slope >= 0:
        return (1.0 + beyond) / (b + 1.0)
    return float(min(1.0, max(1e-16, math.exp(null.intercept + null.slope * statistic))))


def _tail_fit(values: np.ndarray) -> tuple[float, float]:
    """Least-squares line through log survival over the top 2 % of the simulated statistics.

    JS, like the χ² it approximates, has an exponential upper tail; extrapolating it matched
    the true quantiles within Monte Carlo error at levels down to 2e-4 for windows of 20 to
    800 events, where a moment-matched χ² was up to twice too permissive for small windows.
    """
    b = values.size
    lo, hi = int(b * 0.98), b - 10
    if hi - lo < 10 or values[hi - 1] <= values[lo]:
        return 0.0, 0.0
    survival = (b - np.arange(lo, hi)) / b
    slope, intercept = np.polyfit(values[lo:hi], np.log(survival), 1)
    return float(slope), float(intercept)


def _top_changes(
    clusters: list[int], ref: np.ndarray, win: np.ndarray, k: int
) -> tuple[ClusterShift, ...]:
    total = win.sum()
    if total <= 0:
        return ()
    w = win / total
    r = ref / max(ref.sum(), _EPS)
    m = 0.5 * (r + w)
    with np.errstate(divide="ignore", invalid="ignore"):
        part = 0.5 * (
            np.where(r > 0, r * np.log2(r / np.where(m > 0, m, 1)), 0.0)
            + np.where(w > 0, w * np.log2(w / np.where(m > 0, m, 1)), 0.0)
        )
    order = np.argsort(-np.abs(w - r), kind="stable")[:k]
    return tuple(
        ClusterShift(
            cluster=clusters[i],
            reference_share=float(r[i]),
            window_share=float(w[i]),
            delta=float(w[i] - r[i]),
            contribution=float(part[i]),
        )
        for i in order
        if abs(w[i] - r[i]) > 0
    )


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowPolicy:
    """Event-time windowing of one language's usage (see the module docstring)."""

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
        seconds = int(at.timestamp() // self.base_seconds) * self.base_seconds
        return datetime.fromtimestamp(seconds, UTC)

    def block_start(self, at: datetime) -> datetime:
        """Start of the aligned block containing ``at``."""
        seconds = int(at.timestamp() // self.block_seconds) * self.block_seconds
        return datetime.fromtimestamp(seconds, UTC)

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


@dataclass(frozen=True)
class WindowBin:
    """One base window's counts for one language: all events and sampled (embedded) ones."""

    start: datetime
    n_events: int
    n_sampled: int


@dataclass(frozen=True)
class Span:
    """A run of consecutive base windows ``[start, end)``."""

    start: datetime
    end: datetime
    n_events: int
    n_sampled: int
    enough: bool


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
