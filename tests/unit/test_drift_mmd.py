"""The MMD drift detector (``mmd``): a kernel two-sample test on the embeddings, calibrated by
the spectral (weighted chi-square) null of the reference's features, explained by the cluster
counts.

Simulated usage: 16 topics, each a direction in a 32-d embedding space; an event is its topic's
direction plus noise, L2-normalised (as the embedder's vectors are), and its cluster is its
topic. Rates are over ≥ 200 windows per cell (25 references × 8 windows).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from compass.core.detectors import (
    MMDDriftConfig,
    MMDDriftDetector,
    get_detector,
    known_detectors,
)
from compass.core.detectors.mmd import _quantile, _spectral_null, _survival

K, DIM = 16, 32
ALPHA = 0.05
REFERENCES, WINDOWS = 25, 8  # 200 windows per cell, over many references


def _world(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((K, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    return centers, rng.dirichlet(np.full(K, 0.7))


def _events(
    rng: np.random.Generator,
    centers: np.ndarray,
    p: np.ndarray,
    n: int,
    offset: float = 0.0,
    session: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` events: cluster counts ``(K,)`` and embeddings ``(n, DIM)``; ``offset`` moves every
    topic's vectors a little along one fixed direction (a shift of *how* people ask about
    the same topics, which cluster counts cannot see); ``session`` > 1: same-topic runs of
    geometric length with that mean (bursty usage)."""
    if session > 1.0:
        lengths = rng.geometric(1.0 / session, size=n)
        lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n)) + 1]
        lengths[-1] -= int(lengths.sum()) - n
        topics = np.repeat(rng.choice(K, size=lengths.size, p=p), lengths)
    else:
        topics = rng.choice(K, size=n, p=p)
    x = centers[topics] + 0.35 * rng.standard_normal((n, DIM))
    x[:, 0] += offset
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.bincount(topics, minlength=K).astype(float), x.astype(np.float32)


def _bound(rate: float, trials: int) -> float:
    return rate + 2.0 * math.sqrt(rate * (1 - rate) / trials)


def _rate(
    n_ref: int, n: int, *, offset: float = 0.0, detector: str = "mmd", session: float = 1.0
) -> float:
    rng = np.random.default_rng(n_ref * 5 + n + int(100 * offset) + int(10 * session))
    centers, p = _world()
    hits = trials = 0
    for r in range(REFERENCES):
        parts = [_events(rng, centers, p, n_ref // 5, session=session) for _ in range(5)]
        blocks = np.array([c for c, _ in parts]) if session > 1.0 else None
        counts = np.sum([c for c, _ in parts], axis=0)
        x = np.concatenate([e for _, e in parts])
        det = get_detector(detector, n_clusters=K, false_alarm_rate=ALPHA, min_events=10, seed=r)
        if detector == "mmd":
            det.fit(counts, embeddings=x, blocks=blocks)  # type: ignore[call-arg]
        else:
            det.fit(counts, blocks=blocks)
        for _ in range(WINDOWS):
            counts, y = _events(rng, centers, p, n, offset, session)
            result = (
                det.score(counts, embeddings=y)  # type: ignore[call-arg]
                if detector == "mmd"
                else det.score(counts)
            )
            hits += result.is_drift
            trials += 1
    return hits / trials


@pytest.mark.parametrize(
    ("n_ref", "n", "session"),
    [(50, 50, 1.0), (200, 50, 1.0), (200, 200, 1.0), (50, 200, 1.0), (200, 50, 3.0)],
)
def test_mmd_false_alarm_rate_at_or_below_target(n_ref: int, n: int, session: float) -> None:
    """Independent events, references smaller and larger than the window, and sessions of
    mean length 3 (the dispersion from 5 reference blocks): ≤ α + 2 binomial SE."""
    rate = _rate(n_ref, n, session=session)
    assert rate <= _bound(ALPHA, REFERENCES * WINDOWS), rate


def test_spectral_null_matches_a_known_chi_square_and_extrapolates_its_tail() -> None:
    """Features with covariance I₄ (and zero elsewhere): the null is χ²₄, whose quantiles
    are known; beyond the top 50 draws the exponential tail stays within 10 %, and the
    survival function inverts the quantile."""
    rng = np.random.default_rng(4)
    features = np.zeros((20_000, 40))
    features[:, :4] = rng.standard_normal((20_000, 4))
    null = _spectral_null(features, 20_000, seed=0)
    for level in (0.05, 0.01, 1e-3, 1e-4):
        exact = stats.chi2.isf(level, 4)
        assert abs(_quantile(null, level) - exact) < 0.1 * exact, level
        assert _survival(null, _quantile(null, level)) == pytest.approx(level, rel=0.05)


def test_mmd_sees_a_shift_the_cluster_counts_cannot() -> None:
    """The same topics in the same shares, asked differently: JS on the counts stays at its
    false-alarm rate, MMD on the embeddings catches most windows of 50 events."""
    mmd = _rate(200, 50, offset=0.5)
    js = _rate(200, 50, offset=0.5, detector="js")
    assert mmd > 0.9, mmd
    assert js <= _bound(ALPHA, REFERENCES * WINDOWS), js


def test_mmd_is_registered_needs_embeddings_and_explains_with_counts() -> None:
    assert "mmd" in known_detectors()
    det = get_detector("mmd", n_clusters=K, false_alarm_rate=0.01, n_tests=3, min_events=10)
    assert isinstance(det, MMDDriftDetector) and det.needs_embeddings
    assert not getattr(get_detector("js", n_clusters=K), "needs_embeddings", False)
    rng = np.random.default_rng(0)
    centers, p = _world()
    counts, x = _events(rng, centers, p, 200)
    det.fit(counts, embeddings=x)
    moved = np.zeros(K)
    moved[int(np.argmin(p))] = 1.0
    counts, y = _events(rng, centers, moved, 60)
    result = det.score(counts, embeddings=y)
    assert result.is_drift and result.p_value < 0.01 / 3
    assert result.top_changes[0].cluster == int(np.argmin(p))  # from the counts, as JS says
    assert result.threshold > 0 and result.statistic > result.threshold


def test_mmd_without_enough_embeddings_gives_no_verdict_and_checks_inputs() -> None:
    rng = np.random.default_rng(1)
    centers, p = _world()
    counts, x = _events(rng, centers, p, 100)
    det = MMDDriftDetector(MMDDriftConfig(min_events=20), n_clusters=K)
    with pytest.raises(RuntimeError):
        det.score(counts, embeddings=x)
    with pytest.raises(ValueError, match="needs the reference's embeddings"):
        det.fit(counts)
    det.fit(counts, embeddings=x)
    few_counts, few = _events(rng, centers, p, 10)
    assert det.score(few_counts, embeddings=few).reason == "insufficient_events"
    assert det.score(counts).reason == "insufficient_events"
    with pytest.raises(ValueError, match="width"):
        det.score(counts, embeddings=np.ones((100, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        det.score(counts, embeddings=np.full((100, DIM), np.nan, dtype=np.float32))


def test_mmd_burstiness_raises_the_threshold() -> None:
    rng = np.random.default_rng(2)
    centers, p = _world()
    counts, x = _events(rng, centers, p, 120)
    blocks = np.array([_events(rng, centers, p, 20)[0] * 4 for _ in range(6)])  # clumped
    plain = MMDDriftDetector(n_clusters=K, min_events=10).fit(counts, embeddings=x)
    bursty = MMDDriftDetector(n_clusters=K, min_events=10).fit(counts, embeddings=x, blocks=blocks)
    assert bursty.dispersion > 1.5
    window, y = _events(rng, centers, p, 60)
    assert (
        bursty.score(window, embeddings=y).threshold > plain.score(window, embeddings=y).threshold
    )
