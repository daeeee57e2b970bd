"""Multiple-testing correction: the level one drift test is judged at when many run together.

Each evaluation round tests every active language, so with ``m`` languages at level ``α`` each,
false alarms add up. The correction is a parameter of the detector (``correction=...``), never
the caller's arithmetic; the caller only says how many tests there are (``n_tests``).

* ``"bonferroni"``: every test at ``α / m``, so the chance of *any* false alarm in a round stays
  ≤ ``α`` whatever the dependence between languages (Dunn 1961, "Multiple comparisons among
  means", JASA 56(293):52–64). It works online, where languages close their windows at
  different times, and it is the default.
* ``"bh"``: Benjamini–Hochberg step-up control of the false-discovery rate at ``α`` (Benjamini &
  Hochberg 1995, "Controlling the false discovery rate", JRSS B 57(1):289–300), computed by
  :func:`scipy.stats.false_discovery_control` (``method="bh"``). Its gain over Bonferroni comes
  from looking at all ``m`` p-values at once (:func:`reject`). A window judged alone, as the
  stream judges each window when it closes, cannot see the others: counting them as p = 1 (the
  conservative choice, which keeps BH valid) leaves it BH's first critical value ``α / m``, so
  a lone verdict under ``"bh"`` equals Bonferroni's (:func:`per_test_level`). The stream keeps
  verdicts per window so that a replay, batched differently, reaches the same ones.
* ``"none"``: every test at ``α`` (one language, or an offline study of a single test).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from scipy import stats

Correction = Literal["bonferroni", "bh", "none"]
CORRECTIONS: tuple[Correction, ...] = get_args(Correction)


def check_correction(correction: str) -> Correction:
    """``correction`` if known; :class:`ValueError` naming the known ones otherwise."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; choose from {list(CORRECTIONS)}")
    return correction


def per_test_level(correction: Correction, alpha: float, n_tests: int) -> float:
    """The level one test is judged at on its own, among ``n_tests`` (``α`` in (0, 1))."""
    check_correction(correction)
    if correction == "none":
        return alpha
    return alpha / max(1, n_tests)  # Bonferroni, and BH's first critical value (see above)


def reject(
    p_values: Sequence[float],
    alpha: float,
    correction: Correction,
    n_tests: int | None = None,
) -> list[bool]:
    """Which of several tests judged together to reject (in the order given).

    ``n_tests`` (default: ``len(p_values)``) counts the round's tests, including ones without a
    p-value yet; those count as p = 1, which never adds a rejection. Bonferroni rejects
    ``p ≤ α / m``, BH rejects where the BH-adjusted p-value (scipy) is ``≤ α``, ``"none"``
    rejects ``p ≤ α``. Raises :class:`ValueError` when ``n_tests`` is below the p-values given.
    """
    check_correction(correction)
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size if n_tests is None else n_tests
    if m < p.size:
        raise ValueError(f"n_tests={m} is less than the {p.size} p-values given")
    if p.size == 0:
        return []
    if correction == "none":
        return (p <= alpha).tolist()
    if correction == "bonferroni":
        return (p <= alpha / m).tolist()
    padded = np.concatenate([p, np.ones(m - p.size)])
    adjusted = stats.false_discovery_control(padded, method="bh")[: p.size]
    return (adjusted <= alpha).tolist()
