"""Drift after a promotion (issue 10, case 8): the live adapter's reference is a *sample* — the
window that triggered it — and the false-alarm rate stays at or below its target on every path.

Each cell simulates ≥ 200 stationary windows: 10 "promotions", each with its own triggering
window (the reference: its counts and its 6 block rows, as the worker stores them), then 25
later windows of the same usage judged against it through the stream's own code
(:func:`streams.drift_check._adapter_sample` and :func:`streams.drift_check.fit_reference`).
The bound is the target plus two binomial standard errors of the measurement; the same windows
judged against the reference taken as exact shares (the old behaviour) alarm far more often.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import cast

import numpy as np
import pytest

from compass.core.detectors import DriftDetector, JSDriftConfig, JSDriftDetector
from compass.ports.storage import AdapterVersionRecord, ReferenceCounts
from streams.drift_check import _adapter_sample, fit_reference

K = 16
ALPHA = 0.05
PROMOTIONS = 10
WINDOWS = 25  # per promotion: 250 windows per cell
T = datetime(2026, 5, 1, tzinfo=UTC)


def _shares(seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(K, 0.7))


def _sessions(rng: np.random.Generator, p: np.ndarray, n: int, mean_length: float) -> np.ndarray:
    if mean_length <= 1.0:
        return rng.multinomial(n, p).astype(float)
    lengths = rng.geometric(1.0 / mean_length, size=n)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n)) + 1]
    lengths[-1] -= int(lengths.sum()) - n
    out = np.zeros(len(p))
    np.add.at(out, rng.choice(len(p), size=lengths.size, p=p), lengths)
    return out


def _version(
    stored: ReferenceCounts | None, shares: dict[int, float], n: int | None
) -> AdapterVersionRecord:
    return AdapterVersionRecord(
        version_id=1, adapter_id=1, language="fr", base_model="m", number=3, status="active",
        artifact_uri="file:///x", artifact_sha256="0" * 64, sampler="compass", sampler_params={},
        reference_distribution=shares, metrics={}, drift_id=uuid.uuid4(), parent_version=2,
        base_model_revision="r", manifest={}, peft_config={}, training_seconds=None,
        evaluation_seconds=None, notes="", created_at=T, activated_at=T, retired_at=None,
        reference_counts=stored, trigger_n_sampled=n,
    )  # fmt: skip


def _bound(rate: float, trials: int) -> float:
    return rate + 2.0 * math.sqrt(rate * (1 - rate) / trials)


def _live_adapter_rate(
    n_ref: int,
    n: int,
    *,
    mean_session: float = 1.0,
    sample_rate: float = 1.0,
    exact: bool = False,
    alpha: float = ALPHA,
) -> float:
    """False-alarm rate of stationary windows judged against a live adapter's reference."""
    rng = np.random.default_rng(7 * n_ref + n + int(10 * mean_session) + int(100 * sample_rate))
    p = _shares()
    alarms = trials = 0
    for r in range(PROMOTIONS):
        # the triggering window, as the worker stores it: sampled counts and 6 block rows
        full_blocks = np.array(
            [_sessions(rng, p, n_ref // 6, mean_session) for _ in range(6)], dtype=np.int64
        )
        blocks = rng.binomial(full_blocks, sample_rate) if sample_rate < 1 else full_blocks
        counts = blocks.sum(axis=0)
        stored = ReferenceCounts(
            counts={c: float(v) for c, v in enumerate(counts) if v > 0},
            n_sampled=int(counts.sum()), n_events=int(full_blocks.sum()),
            sample_rate=sample_rate, blocks=blocks.tolist(),
        )  # fmt: skip
        shares = {c: v / counts.sum() for c, v in stored.counts.items()}
        reference = _adapter_sample(_version(stored, shares, int(counts.sum())))
        assert reference is not None and reference.adapter_version == 3
        detector = JSDriftDetector(
            JSDriftConfig(false_alarm_rate=alpha, min_events=10, n_simulations=2000, seed=r),
            n_clusters=K,
        )
        if exact:
            detector.fit(shares, exact=True)
        else:
            fit_reference(cast(DriftDetector, detector), reference)
        for _ in range(WINDOWS):
            full = _sessions(rng, p, n, mean_session)
            window = rng.binomial(full.astype(np.int64), sample_rate) if sample_rate < 1 else full
            alarms += detector.score(window, n_events=n, sample_rate=sample_rate).is_drift
            trials += 1
    assert trials >= 200
    return alarms / trials


@pytest.mark.parametrize(("n_ref", "n"), [(60, 60), (60, 240), (240, 60), (240, 240)])
def test_live_adapter_reference_is_calibrated_for_independent_events(n_ref: int, n: int) -> None:
    rate = _live_adapter_rate(n_ref, n)
    assert rate <= _bound(ALPHA, PROMOTIONS * WINDOWS), rate


def test_live_adapter_reference_taken_as_exact_alarms_on_noise() -> None:
    """The old behaviour (shares treated as the truth) on the same windows: a retrain loop."""
    assert _live_adapter_rate(60, 240, exact=True) > 0.3
    assert _live_adapter_rate(60, 240) <= _bound(ALPHA, PROMOTIONS * WINDOWS)


@pytest.mark.parametrize("n", [120, 480])
def test_live_adapter_reference_with_sessions_uses_its_block_dispersion(n: int) -> None:
    rate = _live_adapter_rate(240, n, mean_session=3.0)
    assert rate <= _bound(ALPHA, PROMOTIONS * WINDOWS), rate


def test_live_adapter_reference_under_sampling() -> None:
    rate = _live_adapter_rate(960, 960, sample_rate=0.25)
    assert rate <= _bound(ALPHA, PROMOTIONS * WINDOWS), rate


def test_live_adapter_reference_at_the_streams_default_level() -> None:
    """α = 0.01, the stream's default: ≥ 200 windows, at most the target plus two SEs."""
    rate = _live_adapter_rate(60, 240, alpha=0.01)
    assert rate <= _bound(0.01, PROMOTIONS * WINDOWS), rate


def test_old_versions_fall_back_safely() -> None:
    """No stored counts: the shares times the triggering window's sampled size (a sample, no
    blocks); with that size unknown too, no adapter reference (the stream builds one from live
    usage, as before any adapter)."""
    shares = {0: 0.5, 3: 0.25, 7: 0.25}
    legacy = _adapter_sample(_version(None, shares, 80))
    assert legacy is not None and not legacy.exact and legacy.blocks is None
    assert legacy.counts == {0: 40.0, 3: 20.0, 7: 20.0}
    assert _adapter_sample(_version(None, shares, None)) is None
    assert _adapter_sample(_version(None, {}, 80)) is None


def test_reference_counts_round_trip_through_json() -> None:
    stored = ReferenceCounts(
        counts={2: 5.0, 9: 7.0}, n_sampled=12, n_events=20, sample_rate=0.6,
        blocks=[[1.0, 2.0], [3.0, 4.0]], dispersion=1.3, window_start=T, window_end=T,
    )  # fmt: skip
    assert ReferenceCounts.from_json(stored.to_json()) == stored
    reference = _adapter_sample(_version(stored, {2: 5 / 12, 9: 7 / 12}, 12))
    assert reference is not None and reference.period == (T, T)
    assert reference.blocks is not None and reference.blocks.shape == (2, 2)
