"""Significance and effect size for "method A vs method B" over seeds (and languages).

- Permutation test: the difference of means under random relabelling of the two groups
  (``n_resamples`` draws, two-sided, with the +1 correction so p is never 0). With ``strata``
  (the language of each run), labels are shuffled only within a stratum, so a language that is
  easy for every method cannot create a difference.
- Cohen's d: difference of means over the pooled standard deviation (ddof=1), the two-sample
  form the paper reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    mean_a: float
    mean_b: float
    difference: float
    p_value: float
    cohens_d: float
    n_a: int
    n_b: int
    n_resamples: int


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    pooled = ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2)
    if pooled <= 0:
        diff = x.mean() - y.mean()
        return 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    return float((x.mean() - y.mean()) / np.sqrt(pooled))


def permutation_test(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 10_000,
    seed: int = 0,
    strata_a: Sequence[str] | None = None,
    strata_b: Sequence[str] | None = None,
) -> Comparison:
    """Two-sided permutation test of mean(a) - mean(b)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    values = np.concatenate([x, y])
    labels = np.concatenate([np.ones(len(x), bool), np.zeros(len(y), bool)])
    strata = np.asarray(
        list(strata_a or ["all"] * len(x)) + list(strata_b or ["all"] * len(y)), dtype=object
    )
    observed = x.mean() - y.mean()
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in sorted(set(strata.tolist()))]
    extreme = 0
    for _ in range(n_resamples):
        permuted = labels.copy()
        for rows in groups:
            permuted[rows] = labels[rows][rng.permutation(len(rows))]
        diff = values[permuted].mean() - values[~permuted].mean()
        if abs(diff) >= abs(observed) - 1e-12:
            extreme += 1
    return Comparison(
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        difference=float(observed),
        p_value=(extreme + 1) / (n_resamples + 1),
        cohens_d=cohens_d(x.tolist(), y.tolist()),
        n_a=len(x),
        n_b=len(y),
        n_resamples=n_resamples,
    )
