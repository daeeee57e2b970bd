"""Resident memory of the embedded vector store (Qdrant Edge, in the stream process) per stored
point, against the raw size of the vectors measured in the same run.

Why: the soak (tests/reliability/soak.py) sees the stream process's RSS grow with the events it
has stored. This measures how much of that the embedded store explains, and how much of it is
anonymous memory (the process's own heap) rather than pages of the store's mapped files: points
with 384-d float32 vectors and a payload like the stream's (language, cluster, times, map version, a
prompt text of ~100 characters), upserted in batches of 64 as the stream does.

    .venv/bin/python benchmarks/bench_vector_store_memory.py | tee \\
        benchmarks/results/vector_store_memory.txt
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np

from compass.ports.vector_store import VectorPoint
from compass.qdrant.store import QdrantEdgeStore

DIM = 384


def memory_mb() -> tuple[float, float]:
    """This process's ``VmRSS`` and its anonymous part ``RssAnon`` (MiB; proc(5)): the rest is
    mostly ``RssFile``, pages of mapped files (the store's memory-mapped segments: page cache the
    kernel can reclaim and read back)."""
    found = {}
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon"):
            found[key] = int(line.split()[1]) / 1024.0
    return found["VmRSS"], found["RssAnon"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=6000)
    parser.add_argument("--step", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    text = "Comment configurer le pare-feu sur ce système, et pourquoi refuse-t-il la connexion ?"
    with tempfile.TemporaryDirectory() as tmp:
        store = QdrantEdgeStore(Path(tmp) / "points", dim=DIM)
        start, start_anon = memory_mb()
        print("points  rss_growth_mb  anon_growth_mb  raw_vectors_mb  ratio")
        for done in range(args.step, args.points + 1, args.step):
            batch = [
                VectorPoint(uuid.uuid4(), rng.standard_normal(DIM).astype("float32"),
                            {"language": "fr", "cluster": int(rng.integers(8)),
                             "occurred_at": "2026-01-05T09:00:00+00:00",
                             "occurred_at_ts": 1767603600, "semantic_map_version": 1,
                             "text": text})
                for _ in range(args.step)
            ]  # fmt: skip
            for i in range(0, len(batch), 64):
                store.upsert(batch[i : i + 64])
            rss, anon = memory_mb()
            growth, anon_growth = rss - start, anon - start_anon
            raw = done * DIM * 4 / 2**20
            print(f"{done:6d}  {growth:13.1f}  {anon_growth:14.1f}  {raw:14.1f}  "
                  f"{growth / raw:5.2f}")  # fmt: skip
        store.close()
    per_1000 = growth / (args.points / 1000)
    anon_per_1000 = anon_growth / (args.points / 1000)
    print(f"resident growth per 1,000 points: {per_1000:.2f} MB, of which anonymous "
          f"{anon_per_1000:.2f} MB (the rest mapped files); raw vectors "
          f"{DIM * 4 * 1000 / 2**20:.2f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
