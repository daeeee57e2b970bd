"""Cluster distributions: counts per semantic cluster, shares, and the divergence between them.

Shared by the gap analysis (usage vs coverage), the drift detectors (window vs reference) and
the adapter worker (the reference distribution kept with a version). One definition each, so the
same counts give the same number everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_EPS = 1e-12


def counts_vector(counts: Mapping[int, float], k: int) -> np.ndarray:
    """Dense ``(k,)`` float64 vector from sparse ``{cluster: count}``.

    Clusters outside ``[0, k)`` are dropped: the stream counts events it did not embed (shed load)
    under a sentinel cluster that belongs to no distribution.
    """
    vector = np.zeros(k, dtype=np.float64)
    for cluster, value in counts.items():
        index = int(cluster)
        if 0 <= index < k:
            vector[index] += float(value)
    return vector


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits, in ``[0, 1]``, between (rows of) ``p`` and ``q``.

    ``p`` and ``q`` are counts or shares of shape ``(..., k)``; each row is normalised to sum to
    one, and the divergence is vectorised over the leading axes (the drift detector's null
    simulation evaluates thousands at once). Returns an array of shape ``p.shape[:-1]`` (a 0-d
    array for vectors; ``float()`` it). A row with no mass is treated as all-zero shares, so
    against a non-empty row the divergence is 0.5 (half the mixture is missing) — callers that
    need another convention for empty input decide it before calling.
    Definition: Lin (1991), "Divergence measures based on the Shannon entropy", with log base 2.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), _EPS)
    q = q / np.maximum(q.sum(axis=-1, keepdims=True), _EPS)
    m = 0.5 * (p + q)
    safe_m = np.where(m > 0, m, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log2(p / safe_m), 0.0)
        right = np.where(q > 0, q * np.log2(q / safe_m), 0.0)
    out = 0.5 * (left.sum(axis=-1) + right.sum(axis=-1))
    return np.clip(out, 0.0, 1.0)
