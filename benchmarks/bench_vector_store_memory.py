"""Resident memory of the embedded vector store (Qdrant Edge, in the stream process) per stored
point, against the raw size of the vectors measured in the same run.

Why: the soak (tests/reliability/soak.py) sees the stream process's RSS grow with the events it
has stored. This measures how much of that the embedded store explains: points with 384-d
float32 vectors and a payload like the stream's (language, cluster, times, map version, a
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


def rss_mb() -> float:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=6000)
    parser.add_argument("--step", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    text = "Comment configurer le pare-feu sur ce système, et pourquoi refuse-t-il la connexion ?"
    with tempfile.TemporaryDirectory() as tmp:
        store = QdrantEdgeStore(Path(tmp) / "points", dim=DIM)
        start = rss_mb()
        print("points  rss_growth_mb  raw_vectors_mb  ratio")
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
            growth = rss_mb() - start
            raw = done * DIM * 4 / 2**20
            print(f"{done:6d}  {growth:13.1f}  {raw:14.1f}  {growth / raw:5.2f}")
        store.close()
    per_1000 = growth / (args.points / 1000)
    print(f"resident growth per 1,000 points: {per_1000:.2f} MB "
          f"(raw vectors {DIM * 4 * 1000 / 2**20:.2f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
