"""Calibration and power of the JS drift detector (compass.core.detectors.js) on simulated usage.

Usage over K = 16 clusters with Dirichlet(0.7) shares. Each simulated deployment draws its own
finite reference (6 blocks of n/2 events, as the stream builds one from live usage) and scores
25 windows of n events against it; rates are over ``--windows`` windows per setting.

* false alarms at α = 0.05 on stationary streams: independent events; sessions (same-cluster
  runs of geometric length, mean 3) with the dispersion estimated from the reference blocks;
  the same sessions treated as independent (what a plain multinomial test does); a 25 % uniform
  sample of independent events (the test uses the sampled counts);
* family-wise false alarms with Bonferroni over 12 languages at α = 0.05 per round;
* power when a share ``shift`` of usage moves to four clusters that were rare.

    .venv/bin/python benchmarks/bench_drift.py | tee benchmarks/results/drift.txt
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from compass.core.detectors import get_detector

K = 16
ALPHA = 0.05


def shares(seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(K, 0.7))


def sessions(rng: np.random.Generator, p: np.ndarray, n: int, mean_length: float) -> np.ndarray:
    if mean_length <= 1.0:
        return rng.multinomial(n, p).astype(float)
    lengths = rng.geometric(1.0 / mean_length, size=n)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n)) + 1]
    lengths[-1] -= int(lengths.sum()) - n
    out = np.zeros(len(p))
    np.add.at(out, rng.choice(len(p), size=lengths.size, p=p), lengths)
    return out


def false_alarms(
    n: int, windows: int, *, mean_session: float = 1.0, rate: float = 1.0, naive: bool = False
) -> float:
    rng = np.random.default_rng(n * 7 + int(mean_session * 10) + int(rate * 100) + naive)
    p = shares()
    alarms = 0
    for r in range(windows // 25):
        blocks = np.array([sessions(rng, p, n // 2, mean_session) for _ in range(6)])
        detector = get_detector("js", n_clusters=K, false_alarm_rate=ALPHA, min_events=10, seed=r)
        detector.fit(blocks.sum(axis=0), blocks=None if naive else blocks)
        for _ in range(25):
            full = sessions(rng, p, n, mean_session)
            window = rng.binomial(full.astype(np.int64), rate) if rate < 1 else full
            alarms += detector.score(window, n_events=n, sample_rate=rate).is_drift
    return alarms / (windows // 25 * 25)


def family_wise(languages: int, rounds: int, n: int) -> float:
    rng = np.random.default_rng(5)
    config = dict(false_alarm_rate=ALPHA, n_tests=languages, correction="bonferroni", min_events=10)
    detectors = []
    for lang in range(languages):
        p = shares(100 + lang)
        detector = get_detector("js", n_clusters=K, **config)
        detectors.append((p, detector.fit(rng.multinomial(2 * n, p))))
    hits = sum(
        any(det.score(rng.multinomial(n, p)).is_drift for p, det in detectors)
        for _ in range(rounds)
    )
    return hits / rounds


def power(n: int, shift: float, windows: int) -> float:
    rng = np.random.default_rng(int(n * 100 + shift * 1000))
    p = shares()
    q = np.zeros(K)
    q[np.argsort(p)[:4]] = 0.25
    moved = (1 - shift) * p + shift * q
    hits = 0
    for r in range(windows // 25):
        detector = get_detector("js", n_clusters=K, false_alarm_rate=ALPHA, min_events=10, seed=r)
        detector.fit(rng.multinomial(2 * n, p))
        hits += sum(detector.score(rng.multinomial(n, moved)).is_drift for _ in range(25))
    return hits / (windows // 25 * 25)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=1000)
    args = parser.parse_args()
    w = args.windows
    se = 2 * math.sqrt(ALPHA * (1 - ALPHA) / w)
    print(f"# bench_drift: K={K} clusters, α={ALPHA}, {w} windows per cell "
          f"(±{se:.3f} is two binomial standard errors at α)")  # fmt: skip
    print("\nfalse-alarm rate on stationary streams (target ≤ 0.05)")
    header = ("events/window", "independent", "sessions", "naive", "25% sample")
    print(f"{header[0]:>14} {header[1]:>12} {header[2]:>10} {header[3]:>8} {header[4]:>11}")
    for n in (50, 100, 400, 1600):
        start = time.perf_counter()
        row = (
            false_alarms(n, w),
            false_alarms(n, w, mean_session=3.0),
            false_alarms(n, w, mean_session=3.0, naive=True),
            false_alarms(4 * n, w, rate=0.25),
        )
        print(f"{n:>14} {row[0]:>12.3f} {row[1]:>10.3f} {row[2]:>8.3f} {row[3]:>11.3f}"
              f"   ({time.perf_counter() - start:.0f} s)")  # fmt: skip
    print("  sessions: same-cluster runs of mean length 3, dispersion from 6 reference blocks;")
    print("  naive: the same sessions with the dispersion ignored; 25% sample: n sampled of 4n")
    print(f"\nfamily-wise false alarms, Bonferroni over 12 languages, n=200: "
          f"{family_wise(12, w, 200):.3f} (target ≤ 0.05)")  # fmt: skip
    print("\npower (share of windows flagged) when a share of usage moves to 4 rare clusters")
    shifts = (0.05, 0.1, 0.2, 0.4)
    print(f"{'events/window':>14} " + " ".join(f"{f'shift {s}':>10}" for s in shifts))
    for n in (50, 100, 400, 1600):
        print(f"{n:>14} " + " ".join(f"{power(n, s, w // 2):>10.3f}" for s in shifts))
    detector = get_detector("js", n_clusters=50, false_alarm_rate=0.01, n_tests=12)
    detector.fit(np.random.default_rng(0).multinomial(2000, shares(1).repeat(4)[:50] / 4))
    start = time.perf_counter()
    detector.score(np.random.default_rng(1).multinomial(1000, np.full(50, 0.02)))
    cold = time.perf_counter() - start
    start = time.perf_counter()
    detector.score(np.random.default_rng(2).multinomial(1000, np.full(50, 0.02)))
    warm = time.perf_counter() - start
    print(f"\ncost of one verdict (K=50, α=0.01/12, 1000 events): {cold * 1000:.0f} ms with a "
          f"fresh null simulation, {warm * 1000:.1f} ms reusing it")  # fmt: skip


if __name__ == "__main__":
    main()
