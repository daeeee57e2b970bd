"""The Jensen–Shannon drift detector (registered as ``"js"``): is a language's live cluster
distribution still the one its adapter was built for?

Pure code (numpy/scipy only, no I/O). The statistic is the Jensen–Shannon divergence (base 2, so
it lies in [0, 1], :func:`compass.core.distributions.js_divergence`) between the reference
cluster shares and the window's shares. A finite window inflates JS even when nothing changed —
roughly ``JS ≈ χ²_{K-1} / (8 ln2 · n)`` for ``n`` events over ``K`` clusters — so a fixed
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

*Many languages.* The per-test level comes from the configured correction over ``n_tests``
languages (:mod:`compass.core.detectors.correction`; Bonferroni by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from compass.core.detectors.base import (
    ClusterShift,
    Counts,
    DriftConfig,
    DriftResult,
    register_detector,
)
from compass.core.distributions import js_divergence

_EPS = 1e-12


# --------------------------------------------------------------------------- dispersion
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


# --------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class JSDriftConfig(DriftConfig):
    """:class:`DriftConfig` plus the calibration knobs: ``n_simulations`` (≥ 200, raised as
    the level needs), the reference's ``smoothing`` (events added per cluster), the dispersion's
    bounds and the confidence of its upper bound (``None``: the point estimate)."""

    n_simulations: int = 4000
    smoothing: float = 0.5
    min_dispersion: float = 1.0
    max_dispersion: float = 50.0
    dispersion_confidence: float | None = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_simulations < 200:
            raise ValueError("n_simulations must be ≥ 200")


@dataclass(frozen=True)
class _Null:
    values: np.ndarray  # sorted simulated statistics
    slope: float  # tail model: log P(JS > x) ≈ intercept + slope · x beyond the data
    intercept: float


@register_detector("js")
class JSDriftDetector:
    """Jensen–Shannon drift test of a window's cluster counts against a reference.

    Built from a :class:`JSDriftConfig` or its fields as keywords (``get_detector("js", ...)``).
    ``fit`` takes the reference as counts (a finite sample, e.g. the first stable window) or as
    shares with ``exact=True`` (e.g. an adapter's training coverage). State is explicit:
    ``reference``, ``n_reference``, ``dispersion``; ``fit`` replaces it, and ``score`` never
    changes it. Raises :class:`ValueError` on empty or negative counts, :class:`RuntimeError`
    when scoring before ``fit``.
    """

    def __init__(
        self, config: JSDriftConfig | None = None, n_clusters: int | None = None, **params: Any
    ) -> None:
        if config is not None and params:
            raise TypeError("give either a config or its fields, not both")
        self.config = config if config is not None else JSDriftConfig(**params)
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
        ref_vec = _vector(self.reference, clusters)
        win_vec = _vector(win, clusters)
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
        threshold = _quantile(null, 1.0 - self.config.test_level)
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
        """The clusters compared: reference ∪ window ∪ ``range(n_clusters)``, sorted (a sparse
        union, so a cluster outside the map's range still counts against the reference)."""
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
        shares = _vector(self.reference, clusters)
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


def _vector(counts: Mapping[int, float], clusters: list[int]) -> np.ndarray:
    """Values of sparse ``counts`` over the (sorted, possibly sparse) ``clusters``; not
    :func:`~compass.core.distributions.counts_vector`, whose dense ``[0, k)`` range would drop
    clusters outside the map's range and so change the statistic for such input."""
    return np.array([counts.get(c, 0.0) for c in clusters], dtype=np.float64)


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


def _n_simulations(config: JSDriftConfig) -> int:
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
