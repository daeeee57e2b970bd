"""Producer client throughput vs a bare kafka-python producer, same messages, same run.

Both sides send the same usage events (dicts of ``text``, ``language``, ``event_id``,
``occurred_at``) to a 3-partition topic of the embedded Tansu broker, with the same producer
settings (acks=all, linger 10 ms, 256 KiB batches), and wait for every acknowledgement:

- **bare**: what a team would write with kafka-python directly — ``json.dumps`` each dict and
  ``send`` it keyed by its language (no validation, no defaults, no bounds, no failure report);
- **client**: :class:`compass.client.UsageEventProducer.send_event` — fills the missing fields,
  validates with the stream's own decoder, canonicalises the language, keys, bounds the buffer
  and tracks each delivery.

The ratio ``client events/s ÷ bare events/s`` is the price of the client (target ≥ 0.8).
Rounds alternate which side goes first; the medians of the rounds and each round's own ratio
are reported (on a shared machine a single round can be disturbed by other jobs).

    .venv/bin/python benchmarks/bench_producer.py --events 20000 --rounds 5
Results go to stdout and to benchmarks/results/producer.txt (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from compass.client import UsageEventProducer
from compass.kafka.broker import EmbeddedBroker, TopicSpec, ensure_topics

REPO = Path(__file__).resolve().parents[1]
TEXTS = {
    "fr": "Comment changer la disposition du clavier sur mon ordinateur portable ?",
    "de": "Wie ändere ich die Tastaturbelegung auf meinem Laptop?",
    "es": "¿Cómo cambio la distribución del teclado en mi portátil?",
    "pt-BR": "Como mudo o layout do teclado no meu notebook?",
    "ja": "ノートパソコンのキーボード配列を変更するにはどうすればよいですか？",
}
SETTINGS: dict[str, Any] = {"acks": "all", "linger_ms": 10, "batch_size": 256 * 1024}


def make_events(n: int) -> list[dict[str, Any]]:
    """``n`` events over the last hour, languages in turn, each text made unique."""
    start = datetime.now(UTC) - timedelta(hours=1)
    languages = list(TEXTS)
    out = []
    for i in range(n):
        language = languages[i % len(languages)]
        out.append(
            {
                "schema_version": 1,
                "event_id": str(uuid.uuid4()),
                "occurred_at": (start + timedelta(milliseconds=i * 10)).isoformat(),
                "language": language,
                "text": f"{TEXTS[language]} ({i})",
                "source": "bench",
            }
        )
    return out


def run_bare(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, **SETTINGS)
    producer.partitions_for(topic)
    start = time.perf_counter()
    futures = [
        producer.send(
            topic, key=event["language"].encode(), value=json.dumps(event).encode("utf-8")
        )
        for event in events
    ]
    producer.flush(timeout=120)
    elapsed = time.perf_counter() - start
    assert all(f.succeeded() for f in futures)
    producer.close(timeout=5)
    return len(events) / elapsed


def run_client(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    producer = UsageEventProducer(bootstrap, topic=topic, max_in_flight=len(events), **SETTINGS)
    start = time.perf_counter()
    results = [producer.send_event(event) for event in events]
    stats = producer.flush(120)
    elapsed = time.perf_counter() - start
    assert all(r.accepted for r in results), [r for r in results if not r.accepted][:3]
    assert stats.delivered == len(events) and stats.failed == 0, stats
    producer.close()
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/producer.txt")
    args = parser.parse_args()
    logging.getLogger("kafka").setLevel(logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    rates: dict[str, list[float]] = {"bare": [], "client": []}
    sides: dict[str, Callable[[str, str, list[dict[str, Any]]], float]] = {
        "bare": run_bare,
        "client": run_client,
    }
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topic = f"bench-producer-{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, [TopicSpec(topic, 3)])
        run_client(bootstrap, topic, make_events(500))  # warm-up: imports, connections
        run_bare(bootstrap, topic, make_events(500))
        for round_ in range(args.rounds):
            order = ["bare", "client"] if round_ % 2 == 0 else ["client", "bare"]
            for side in order:
                rates[side].append(sides[side](bootstrap, topic, make_events(args.events)))
    bare = statistics.median(rates["bare"])
    client = statistics.median(rates["client"])
    load = os.getloadavg()[0]
    lines = [
        f"$ .venv/bin/python benchmarks/bench_producer.py --events {args.events} "
        f"--rounds {args.rounds}",
        f"# {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} CPUs (shared; "
        f"load average {load:.2f} at the end); embedded Tansu broker, 3 partitions",
        f"# {args.events:,} events per side and round; acks=all, linger 10 ms, 256 KiB batches; "
        f"median of {args.rounds} rounds, order alternated",
        "side      events/s  (rounds)",
        f"bare      {bare:8,.0f}  ({', '.join(f'{r:,.0f}' for r in rates['bare'])})",
        f"client    {client:8,.0f}  ({', '.join(f'{r:,.0f}' for r in rates['client'])})",
        f"ratio client/bare = {client / bare:.2f} (target >= 0.8; medians)",
        "per-round ratios (same round, adjacent runs): "
        + ", ".join(f"{c / b:.2f}" for b, c in zip(rates["bare"], rates["client"], strict=True)),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
