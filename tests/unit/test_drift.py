"""Drift detectors: the JS detector's calibration on simulated stationary streams and its power,
the multiple-testing corrections, and the registry.

False-alarm rates are measured over ≥ 200 simulated windows per window size. Each simulated
"deployment" draws its own finite reference (as the stream does with its first stable window)
and then scores 25 windows against it, so the measured rate averages over references the way
the guarantee is stated. The bound checked is the target plus two binomial standard errors of
the measurement (a rate exactly at target still passes; a detector that ignored sample size or
dependence fails by a wide margin, which the naive-baseline assertions show).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from compass.config import load_settings
from compass.core.detectors import (
    DriftConfig,
    DriftResult,
    JSDriftConfig,
    JSDriftDetector,
    estimate_dispersion,
    get_detector,
    known_detectors,
    per_test_level,
    register_detector,
    reject,
    thinned_dispersion,
)
from compass.core.detectors import base as detector_base
from compass.core.distributions import js_divergence
from compass.core.errors import ConfigError

K = 16
ALPHA = 0.05
WINDOWS_PER_REFERENCE = 25
N_REFERENCES = 10  # 250 windows per setting


def _shares(seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(K, 0.7))


def _sessions(rng: np.random.Generator, p: np.ndarray, n: int, mean_length: float) -> np.ndarray:
    """``n`` events arriving in same-cluster sessions of geometric length (bursty usage)."""
    if mean_length <= 1.0:
        return rng.multinomial(n, p).astype(float)
    lengths = rng.geometric(1.0 / mean_length, size=n)
    ends = np.cumsum(lengths)
    lengths = lengths[: int(np.searchsorted(ends, n)) + 1]
    lengths[-1] -= int(lengths.sum()) - n  # the last session is cut at the window's end
    out = np.zeros(len(p))
    np.add.at(out, rng.choice(len(p), size=lengths.size, p=p), lengths)
    return out


def _config(**kw: object) -> JSDriftConfig:
    base: dict[str, object] = dict(false_alarm_rate=ALPHA, min_events=10, n_simulations=2000)
    base.update(kw)
    return JSDriftConfig(**base)  # type: ignore[arg-type]


def _bound(rate: float, trials: int) -> float:
    return rate + 2.0 * math.sqrt(rate * (1 - rate) / trials)


def _false_alarm_rate(
    n: int, *, mean_session: float = 1.0, sample_rate: float = 1.0, naive: bool = False
) -> float:
    rng = np.random.default_rng(1000 + n + int(10 * mean_session) + int(100 * sample_rate))
    p = _shares()
    alarms = trials = 0
    for r in range(N_REFERENCES):
        blocks = np.array([_sessions(rng, p, n // 2, mean_session) for _ in range(6)])
        detector = JSDriftDetector(_config(seed=r), n_clusters=K)
        if naive:
            detector.fit(blocks.sum(axis=0))
        else:
            detector.fit(blocks.sum(axis=0), blocks=blocks)
        for _ in range(WINDOWS_PER_REFERENCE):
            full = _sessions(rng, p, n, mean_session)
            if sample_rate < 1.0:  # each event kept independently: binomial thinning per cluster
                window = rng.binomial(full.astype(np.int64), sample_rate).astype(float)
            else:
                window = full
            result = detector.score(window, n_events=n, sample_rate=sample_rate)
            alarms += int(result.is_drift)
            trials += 1
    return alarms / trials


def test_js_divergence_is_a_bounded_symmetric_divergence() -> None:
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.0, 0.0, 1.0])
    assert js_divergence(p, p) == pytest.approx(0.0)
    assert js_divergence(p, q) == pytest.approx(1.0)
    r = np.array([0.2, 0.3, 0.5])
    assert js_divergence(p, r) == pytest.approx(js_divergence(r, p))
    rows = js_divergence(np.tile(r, (4, 1)), np.array([p, q, r, r * 3]))
    assert rows.shape == (4,)
    assert rows[2] == pytest.approx(0.0) and rows[3] == pytest.approx(0.0)  # scale-free


@pytest.mark.parametrize("n", [60, 250, 1000])
def test_false_alarm_rate_at_or_below_target_for_every_window_size(n: int) -> None:
    rate = _false_alarm_rate(n)
    assert rate <= _bound(ALPHA, N_REFERENCES * WINDOWS_PER_REFERENCE), rate


def test_threshold_shrinks_with_window_size_like_one_over_n() -> None:
    detector = JSDriftDetector(_config(), n_clusters=K).fit(_shares(), exact=True)
    small, large = detector.threshold_for(100), detector.threshold_for(1600)
    assert 8 < small / large < 24  # ≈ 16 for JS ~ χ² / n


@pytest.mark.parametrize("n", [250, 1000])
def test_bursty_sessions_are_calibrated_through_the_dispersion(n: int) -> None:
    calibrated = _false_alarm_rate(n, mean_session=3.0)
    naive = _false_alarm_rate(n, mean_session=3.0, naive=True)
    trials = N_REFERENCES * WINDOWS_PER_REFERENCE
    assert calibrated <= _bound(ALPHA, trials), calibrated
    assert naive > 0.3, naive  # treating sessions as independent events alarms constantly


def test_sampled_windows_use_the_sample_size() -> None:
    rate = _false_alarm_rate(1000, sample_rate=0.25)
    assert rate <= _bound(ALPHA, N_REFERENCES * WINDOWS_PER_REFERENCE), rate


def test_bonferroni_keeps_family_wise_rate_across_languages() -> None:
    languages, rounds, n = 12, 250, 200
    rng = np.random.default_rng(5)
    config = _config(n_tests=languages)
    detectors = []
    for lang in range(languages):
        p = _shares(100 + lang)
        detectors.append((p, JSDriftDetector(config, n_clusters=K).fit(rng.multinomial(2 * n, p))))
    family_alarms = 0
    for _ in range(rounds):
        family_alarms += int(any(det.predict(rng.multinomial(n, p)) for p, det in detectors))
    assert family_alarms / rounds <= _bound(ALPHA, rounds)


def _power(n: int, shift: float, trials: int = 200) -> float:
    """Share of windows flagged when ``shift`` of the mass moved to clusters that were rare."""
    rng = np.random.default_rng(int(n * 100 + shift * 1000))
    p = _shares()
    q = np.zeros(K)
    rare = np.argsort(p)[:4]
    q[rare] = 0.25
    shifted = (1 - shift) * p + shift * q
    detector = JSDriftDetector(_config(), n_clusters=K).fit(rng.multinomial(2 * n, p))
    return float(np.mean([detector.predict(rng.multinomial(n, shifted)) for _ in range(trials)]))


def test_power_grows_with_shift_and_window_size() -> None:
    table = {(n, s): _power(n, s) for n in (100, 400) for s in (0.05, 0.1, 0.2, 0.4)}
    print("power", {f"n={n} shift={s}": round(v, 3) for (n, s), v in table.items()})
    assert table[(100, 0.4)] >= 0.95 and table[(400, 0.2)] >= 0.95
    assert table[(400, 0.1)] > table[(100, 0.1)]
    assert table[(100, 0.2)] > table[(100, 0.05)]


def test_too_few_events_give_no_verdict_and_top_changes_name_the_shift() -> None:
    p = np.array([0.4, 0.4, 0.1, 0.1])
    detector = JSDriftDetector(_config(min_events=30), n_clusters=4).fit(p * 400)
    quiet = detector.score(np.array([5, 5, 1, 1]))
    assert quiet.reason == "insufficient_events" and not quiet.is_drift
    moved = detector.score({0: 10, 1: 10, 2: 5, 3: 75}, n_events=400, sample_rate=0.25)
    assert moved.is_drift and moved.reason == "drift"
    assert moved.n_events == 400 and moved.n_sampled == 100
    assert moved.top_changes[0].cluster == 3 and moved.top_changes[0].delta > 0.5
    assert moved.p_value < 0.01 < moved.threshold + 1


def test_dispersion_estimates() -> None:
    rng = np.random.default_rng(3)
    p = _shares()
    iid = np.array([rng.multinomial(400, p) for _ in range(12)])
    bursty = np.array([_sessions(rng, p, 400, 4.0) for _ in range(12)])
    assert estimate_dispersion(iid, None) == pytest.approx(1.0, abs=0.3)
    assert 4.0 < estimate_dispersion(bursty, None) < 10.0
    assert estimate_dispersion(bursty) > estimate_dispersion(bursty, None)  # upper bound
    assert thinned_dispersion(5.0, 0.25) == pytest.approx(2.0)
    assert estimate_dispersion(iid[:1]) == 1.0


def test_config_validation_and_expected_run_time() -> None:
    with pytest.raises(ValueError):
        DriftConfig(false_alarm_rate=0.0)
    with pytest.raises(ValueError):
        JSDriftConfig(n_simulations=10)
    with pytest.raises(ValueError):
        DriftConfig(correction="holm")  # type: ignore[arg-type]
    config = JSDriftConfig.from_expected_run_time(200, n_tests=4)
    assert isinstance(config, JSDriftConfig)
    assert config.false_alarm_rate == pytest.approx(0.005)
    assert config.test_level == pytest.approx(0.00125)


# ------------------------------------------------------------------------------ corrections
P_VALUES = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]


def test_bonferroni_and_none_levels_and_decisions() -> None:
    assert per_test_level("bonferroni", 0.05, 10) == pytest.approx(0.005)
    assert per_test_level("none", 0.05, 10) == pytest.approx(0.05)
    assert reject(P_VALUES, 0.05, "bonferroni") == [True] + [False] * 9  # p ≤ 0.005
    assert reject(P_VALUES, 0.05, "none") == [True] * 5 + [False] * 5  # p ≤ 0.05
    assert reject([], 0.05, "bonferroni") == []


def test_benjamini_hochberg_step_up_matches_scipy_and_the_worked_example() -> None:
    # step-up: the largest rank i with p_(i) ≤ i/m · q is i = 2 (0.008 ≤ 0.01; 0.039 > 0.015 …)
    assert reject(P_VALUES, 0.05, "bh") == [True, True] + [False] * 8
    shuffled = [P_VALUES[i] for i in (7, 0, 4, 1, 9, 2, 3, 5, 8, 6)]
    adjusted = stats.false_discovery_control(shuffled, method="bh")
    assert reject(shuffled, 0.05, "bh") == (adjusted <= 0.05).tolist()
    # all below their step: every test rejected, where Bonferroni keeps only the first
    assert reject([0.01, 0.02, 0.03, 0.04], 0.05, "bh") == [True] * 4
    assert reject([0.01, 0.02, 0.03, 0.04], 0.05, "bonferroni") == [True, False, False, False]
    assert reject([0.001, 0.04, 0.03, 0.5], 0.05, "bh") == [True, False, False, False]


def test_tests_without_a_p_value_count_as_p_one_and_a_lone_bh_verdict_is_bonferroni() -> None:
    assert reject([0.01, 0.02], 0.05, "bh", n_tests=2) == [True, True]
    assert reject([0.01, 0.02], 0.05, "bh", n_tests=10) == [False, False]  # 0.01 > 0.005
    assert reject([0.004], 0.05, "bh", n_tests=10) == [True]
    assert per_test_level("bh", 0.05, 10) == per_test_level("bonferroni", 0.05, 10)
    with pytest.raises(ValueError):
        reject([0.01, 0.02], 0.05, "bh", n_tests=1)


def test_the_detector_applies_the_correction_for_n_tests() -> None:
    p = np.array([0.4, 0.3, 0.2, 0.1])
    levels = {}
    for correction in ("bonferroni", "bh", "none"):
        detector = JSDriftDetector(_config(n_tests=12, correction=correction), n_clusters=4)
        detector.fit(p, exact=True)
        levels[correction] = detector.threshold_for(200)
    assert levels["bonferroni"] == levels["bh"] > levels["none"]
    one = JSDriftDetector(_config(n_tests=1), n_clusters=4).fit(p, exact=True)
    assert one.threshold_for(200) == levels["none"]


# ------------------------------------------------------------------------------ registry
class ToyDetector:
    """Flags a window whose shares are more than ``limit`` (L1) from the reference's."""

    def __init__(self, n_clusters: int | None = None, limit: float = 0.5, **common: object) -> None:
        self.config = DriftConfig(**common)  # type: ignore[arg-type]
        self.limit = limit
        self.reference = np.zeros(0)

    def fit(self, reference: object, **_: object) -> ToyDetector:
        values = np.asarray(reference, dtype=float)
        self.reference = values / values.sum()
        return self

    def score(
        self, window: object, *, n_events: int | None = None, sample_rate: float = 1.0
    ) -> DriftResult:
        values = np.asarray(window, dtype=float)
        distance = float(np.abs(values / values.sum() - self.reference).sum())
        n = int(values.sum())
        return DriftResult(
            statistic=distance, threshold=self.limit, p_value=math.nan, n_events=n_events or n,
            n_sampled=n, n_effective=float(n), sample_rate=sample_rate, dispersion=1.0,
            is_drift=distance > self.limit, reason="drift" if distance > self.limit else "no_drift",
        )  # fmt: skip


def test_a_registered_detector_is_built_by_name_with_the_streams_arguments() -> None:
    try:

        @register_detector("toy-l1")
        class Toy(ToyDetector):
            pass

        assert {"js", "toy-l1"} <= set(known_detectors())
        common = dict(false_alarm_rate=0.01, n_tests=3, correction="bh", min_events=5, seed=7)
        toy = get_detector("toy-l1", n_clusters=2, limit=0.3, **common)
        assert isinstance(toy, Toy) and toy.config.n_tests == 3
        assert toy.fit([5, 5]).score([9, 1]).is_drift
        assert not toy.score([5, 5]).is_drift
        js = get_detector("js", n_clusters=2, **common)
        assert isinstance(js, JSDriftDetector) and js.config.correction == "bh"
    finally:
        detector_base._DETECTORS.pop("toy-l1", None)
    assert "toy-l1" not in known_detectors()


def test_unknown_detector_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown drift detector 'nope'.*\['js'"):
        get_detector("nope")
    with pytest.raises(ConfigError, match="bad parameters"):
        get_detector("js", n_clusters=4, windows=3)


def test_settings_select_the_detector_and_correction_by_name() -> None:
    settings = load_settings(drift_detector="js", drift_correction="bh")
    assert (settings.drift_detector, settings.drift_correction) == ("js", "bh")
    assert load_settings().drift_correction == "bonferroni"
    with pytest.raises(ConfigError, match=r"COMPASS_DRIFT_DETECTOR: .*unknown drift detector"):
        load_settings(drift_detector="nope")
    with pytest.raises(ConfigError, match="COMPASS_DRIFT_CORRECTION"):
        load_settings(drift_correction="holm")
