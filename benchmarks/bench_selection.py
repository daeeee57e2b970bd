"""Selection time as the pool grows: 10,000 items from 100k / 300k / 1M precomputed 384-d unit
vectors (embedding excluded). Target: linear in N and <= 10 s at 1M on 2 cores.

The pool is random unit vectors in 20 languages; the semantic map (k = 100) is fitted on a 20k
subsample with the language neutralisation on; cluster ids are assigned once per pool (timed
separately, it is part of building a pool, not of selecting). The target usage is 285 vectors
(the paper's per-language dev-set size) concentrated around 10 centroids; coverage is 5,000
random vectors. Each sampler runs once per size after one warm-up on the smallest pool.

    .venv/bin/python benchmarks/bench_selection.py [--sizes 100000,300000,1000000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

import numpy as np

from compass.core.samplers import Pool, SelectionRequest, get_sampler
from compass.core.semantic_map import SemanticMap

LANGUAGES = ["en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "ja"]
LANGUAGES += ["zh", "ko", "ar", "hi", "id", "tr", "vi", "sv", "fi", "sw"]
SAMPLERS = ("compass", "importance", "linguistic", "random", "all")


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    out = rng.standard_normal((n, dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    dim = args.dim

    fit_vectors = unit(rng, 20_000, dim)
    fit_languages = rng.choice(LANGUAGES, size=len(fit_vectors))
    started = time.perf_counter()
    semantic_map = SemanticMap.fit(fit_vectors, languages=fit_languages, k=100, seed=0)
    fit_s = time.perf_counter() - started
    centres = semantic_map.centroids[:10]
    target = centres[rng.integers(0, 10, 285)] + 0.02 * unit(rng, 285, dim)
    target = np.linalg.norm(target, axis=1, keepdims=True) ** -1 * target
    coverage = unit(rng, 5_000, dim)

    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus; python {platform.python_version()}"
    )
    print(f"semantic map fit (20k x {dim}, k=100): {fit_s:.2f} s")
    print(f"budget {args.budget}; target 285 vectors; coverage 5,000 vectors")
    header = f"{'N':>9} {'assign s':>9} " + " ".join(f"{name:>11}" for name in SAMPLERS)
    lines = [header]
    print(header, flush=True)
    warmed = False
    rows = []
    for n in sizes:
        vectors = unit(rng, n, dim)
        languages = np.array(LANGUAGES)[rng.integers(0, len(LANGUAGES), n)]
        started = time.perf_counter()
        clusters = semantic_map.assign(vectors)
        assign_s = time.perf_counter() - started
        vocab = tuple(LANGUAGES)
        ids = np.searchsorted(np.array(sorted(vocab)), languages)
        pool = Pool(vectors, clusters, ids, tuple(sorted(vocab)))
        request = SelectionRequest(
            "sw",
            args.budget,
            pool,
            semantic_map,
            target_vectors=target,
            coverage_vectors=coverage,
            seed=1,
        )
        if not warmed:
            for name in SAMPLERS:
                get_sampler(name).select(request)
            warmed = True
        times = {}
        for name in SAMPLERS:
            started = time.perf_counter()
            selection = get_sampler(name).select(request)
            times[name] = time.perf_counter() - started
            expected = n if name == "all" else args.budget
            assert len(selection) == expected, (name, len(selection))
        rows.append((n, times))
        line = f"{n:>9} {assign_s:>9.2f} " + " ".join(f"{times[s]:>10.2f}s" for s in SAMPLERS)
        lines.append(line)
        print(line, flush=True)
        del vectors, pool, request
    print()
    print("time per pool item (microseconds; falls while fixed costs dominate):")
    for n, times in rows:
        per = " ".join(f"{name}={times[name] / n * 1e6:.2f}" for name in SAMPLERS)
        print(f"  N={n:>9}: {per}")
    print("marginal time per extra pool item between sizes (the linear term, microseconds):")
    for (n0, t0), (n1, t1) in itertools.pairwise(rows):
        per = " ".join(f"{name}={(t1[name] - t0[name]) / (n1 - n0) * 1e6:.2f}" for name in SAMPLERS)
        print(f"  {n0:>9} -> {n1:>9}: {per}")
    if rows and rows[-1][0] >= 1_000_000:
        worst = max(rows[-1][1].values())
        verdict = "PASS" if worst <= 10 else "FAIL"
        print(f"slowest sampler at N={rows[-1][0]}: {worst:.2f} s (target <= 10 s): {verdict}")


if __name__ == "__main__":
    main()
