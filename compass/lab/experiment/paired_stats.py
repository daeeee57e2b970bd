"""Paired statistics over units for experiment v2 (registered in docs/results.md).

- :func:`sign_flip_test`: two-sided test of mean(d) = 0 for paired differences ``d`` (one per
  unit): under H0 each ``d_u`` is symmetric about 0, so flipping signs gives the null
  distribution of the mean. Exact over all 2^n patterns when 2^n <= ``exact_limit``, else
  ``n_resamples`` random patterns with the +1 correction (Phipson & Smyth 2010).
- :func:`bootstrap_ci`: percentile interval of a statistic over units resampled with
  replacement (Efron & Tibshirani 1993, ch. 13).
- :func:`tost`: two one-sided sign-flip tests of ``d - margin`` < 0 and ``d + margin`` > 0
  (Schuirmann 1987); equivalence when both reject at ``alpha``.
- :func:`holm`: Holm-Bonferroni adjusted p-values (Holm 1979).
- :func:`paired_t_power` / :func:`n_for_power`: power of the two-sided paired t test for a
  standardised effect ``d_z`` from the noncentral t (``scipy.stats.nct``, df = n - 1,
  noncentrality d_z sqrt(n)); :func:`simulated_sign_flip_power` checks it for the sign-flip test.
- :func:`spearman_permutation`: Spearman's rho with a permutation p-value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


def _one_sided_p(d: np.ndarray, side: str, exact_limit: int, n_resamples: int, seed: int) -> float:
    n = len(d)
    observed = d.mean()
    if 2**n <= exact_limit:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        means = signs @ d / n
        count, total = None, len(means)
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(n_resamples, n))
        means = signs @ d / n
        count, total = 1, n_resamples + 1
    tol = 1e-12 * max(1.0, abs(observed))
    if side == "two":
        hits = int(np.sum(np.abs(means) >= abs(observed) - tol))
    elif side == "less":
        hits = int(np.sum(means <= observed + tol))
    else:
        hits = int(np.sum(means >= observed - tol))
    return (hits + (count or 0)) / total


def sign_flip_test(
    differences: Sequence[float] | np.ndarray,
    *,
    alternative: str = "two-sided",
    exact_limit: int = 65_536,
    n_resamples: int = 20_000,
    seed: int = 0,
) -> float:
    """p-value of mean(differences) = 0 (``alternative``: two-sided, less, greater)."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        raise ValueError("no differences to test")
    side = {"two-sided": "two", "less": "less", "greater": "greater"}[alternative]
    return _one_sided_p(d, side, exact_limit, n_resamples, seed)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], Any] = np.mean,
    *,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``values``."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(x), size=(n_resamples, len(x)))
    draws = np.array([statistic(x[r]) for r in rows])
    draws = draws[np.isfinite(draws)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def dz(values: Sequence[float] | np.ndarray) -> float:
    """Paired standardised effect: mean / sd (ddof 1); nan when undefined."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or x.std(ddof=1) == 0:
        return float("nan")
    return float(x.mean() / x.std(ddof=1))


@dataclass(frozen=True)
class TostResult:
    margin: float
    p_upper: float
    p_lower: float
    equivalent: bool

    @property
    def p_value(self) -> float:
        return max(self.p_upper, self.p_lower)


def tost(
    differences: Sequence[float] | np.ndarray, margin: float, alpha: float = 0.05
) -> TostResult:
    """Equivalence of mean(differences) to 0 within +-``margin`` by two one-sided sign-flip
    tests: H0a mean >= margin (test ``d - margin``, 'less'), H0b mean <= -margin."""
    d = np.asarray(differences, dtype=float)
    p_upper = sign_flip_test(d - margin, alternative="less")
    p_lower = sign_flip_test(d + margin, alternative="greater")
    return TostResult(margin, p_upper, p_lower, p_upper < alpha and p_lower < alpha)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def paired_t_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample/paired t test for standardised effect ``effect``."""
    if n < 2:
        return 0.0
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect * np.sqrt(n)
    upper = stats.nct.sf(critical, df, noncentrality)
    lower = stats.nct.cdf(-critical, df, noncentrality)
    return float(upper + lower)


def n_for_power(effect: float, power: float = 0.8, alpha: float = 0.05, n_max: int = 10_000) -> int:
    """Smallest number of units giving ``power`` for ``effect`` (paired t, noncentral t)."""
    for n in range(2, n_max + 1):
        if paired_t_power(effect, n, alpha) >= power:
            return n
    raise ValueError(f"more than {n_max} units needed for d_z = {effect}")


def simulated_sign_flip_power(
    effect: float,
    n: int,
    *,
    alpha: float = 0.05,
    n_sim: int = 400,
    n_resamples: int = 2000,
    seed: int = 0,
    residuals: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Share of simulated experiments whose sign-flip test rejects; differences are normal
    (or resampled standardised pilot ``residuals``) shifted to mean ``effect`` x sd."""
    rng = np.random.default_rng(seed)
    pool = None
    if residuals is not None and len(residuals) >= 2:
        r = np.asarray(residuals, dtype=float)
        pool = (r - r.mean()) / r.std(ddof=1)
    rejected = 0
    for k in range(n_sim):
        noise = rng.choice(pool, size=n) if pool is not None else rng.standard_normal(n)
        p = sign_flip_test(noise + effect, n_resamples=n_resamples, exact_limit=0, seed=k)
        rejected += int(p < alpha)
    return rejected / n_sim


def spearman_permutation(
    x: Sequence[float], y: Sequence[float], n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Spearman's rho and its two-sided permutation p-value (+1 correction)."""
    a = stats.rankdata(np.asarray(x, dtype=float))
    b = stats.rankdata(np.asarray(y, dtype=float))
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan"), 1.0
    rho = float(np.corrcoef(a, b)[0, 1])
    rng = np.random.default_rng(seed)
    hits = sum(
        abs(np.corrcoef(a, rng.permutation(b))[0, 1]) >= abs(rho) - 1e-12
        for _ in range(n_resamples)
    )
    return rho, (hits + 1) / (n_resamples + 1)
