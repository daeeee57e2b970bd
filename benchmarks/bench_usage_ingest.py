"""Usage-count ingestion: ``record_usage`` (dedup + counting, batched) vs a plain COPY.

Both sides get the same rows (with a share of redelivered duplicates) in the same batches, one
transaction per batch as the stream commits them, in the same run on the same server:

- **record_usage**: the streaming hot path — one statement that inserts the event ids into
  ``processed_events`` (``ON CONFLICT DO NOTHING RETURNING``) and upserts the counts of the new
  events only, aggregated in PostgreSQL, into ``usage_counts``;
- **COPY**: the raw rows copied into a bare table (no key, no index) — the floor of what writing
  these rows to PostgreSQL costs, with no de-duplication and no aggregation.

The ratio ``record_usage rows/s ÷ COPY rows/s`` says how much the idempotent counting costs.

    COMPASS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/bench_usage_ingest.py --events 100000 --batch 500 2000
Without ``COMPASS_DATABASE_URL`` it runs on the embedded pgserver. It creates and drops its own
database; results go to stdout (copy them to benchmarks/results/usage_ingest.txt).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import structlog
from sqlalchemy import make_url, text

from compass.bootstrap import open_unit_of_work
from compass.config import Settings
from compass.core.semantic_map import SemanticMap
from compass.ports.storage import UsageObservation
from compass.sql.migrate import upgrade
from compass.sql.server import (
    check_connection,
    create_database,
    database_url,
    drop_database,
)
from compass.sql.unit_of_work import SqlStore

LANGUAGES = ("en", "fr", "de", "es", "ja", "zh", "sw", "hi", "pt-BR", "ar")


def make_events(n: int, duplicate_share: float, seed: int) -> list[UsageObservation]:
    """``n`` observations over one hour of 60 s windows, 64 clusters, 10 languages; a share of
    them repeat an earlier event id (a redelivery after a consumer restart)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, 9, tzinfo=UTC)
    events: list[UsageObservation] = []
    for i in range(n):
        if events and rng.random() < duplicate_share:
            events.append(events[rng.randrange(len(events))])
            continue
        offset = i * 3600 // n
        events.append(
            UsageObservation(
                event_id=f"evt-{seed}-{i:09d}",
                language=LANGUAGES[rng.randrange(len(LANGUAGES))],
                cluster=min(63, int(rng.expovariate(1 / 12))),
                window_start=start + timedelta(seconds=offset - offset % 60),
                window_seconds=60,
                semantic_map_version=1,
                sampled=rng.random() > 0.1,
            )
        )
    return events


def batches(events: Sequence[UsageObservation], size: int) -> Iterator[Sequence[UsageObservation]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]


def run_record_usage(
    store: SqlStore, events: Sequence[UsageObservation], size: int, staged: bool = False
) -> float:
    start = time.perf_counter()
    new = 0
    for batch in batches(events, size):
        with store() as uow:
            usage = uow.usage
            new += usage.record_usage_staged(batch) if staged else usage.record_usage(batch)  # type: ignore[attr-defined]
            uow.commit()
    elapsed = time.perf_counter() - start
    with store.engine.begin() as conn:
        counted = conn.execute(text("SELECT sum(total_count) FROM usage_counts")).scalar_one()
        conn.execute(text("TRUNCATE usage_counts, processed_events"))
    unique = len({e.event_id for e in events})
    assert new == unique == int(counted), (new, unique, counted)
    return elapsed


def run_copy(store: SqlStore, events: Sequence[UsageObservation], size: int) -> float:
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE bare_usage (event_id text, language text, cluster integer, "
                "window_start timestamptz, window_seconds integer, semantic_map_version integer, "
                "sampled boolean, weight double precision)"
            )
        )
    raw = store.engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        start = time.perf_counter()
        for batch in batches(events, size):
            with (
                driver.cursor() as cursor,
                cursor.copy("COPY bare_usage FROM STDIN") as copy,
            ):
                for e in batch:
                    copy.write_row(
                        (
                            e.event_id,
                            e.language,
                            e.cluster,
                            e.window_start,
                            e.window_seconds,
                            e.semantic_map_version,
                            e.sampled,
                            e.weight,
                        )
                    )
            driver.commit()
        elapsed = time.perf_counter() - start
    finally:
        raw.close()
    with store.engine.connect() as conn:
        copied = conn.execute(text("SELECT count(*) FROM bare_usage")).scalar_one()
    assert copied == len(events)
    return elapsed


def measure(
    admin_url: str, events: Sequence[UsageObservation], size: int, *, copy_first: bool
) -> tuple[float, float, float]:
    """Seconds for record_usage, for its staged-COPY variant and for a bare COPY of
    ``events``, in a fresh, migrated database (the counting tables emptied in between)."""
    url = create_database(admin_url)
    store = open_unit_of_work(Settings(database_url=url), pool_size=1)
    try:
        upgrade(url)
        with store() as uow:  # usage counts refer to semantic map version 1
            centroids = np.random.default_rng(0).normal(size=(64, 8))
            uow.semantic_maps.save_semantic_map(SemanticMap(centroids=centroids))
            uow.commit()
        if copy_first:
            copy_s = run_copy(store, events, size)
            staged_s = run_record_usage(store, events, size, staged=True)
            ingest_s = run_record_usage(store, events, size)
        else:
            ingest_s = run_record_usage(store, events, size)
            staged_s = run_record_usage(store, events, size, staged=True)
            copy_s = run_copy(store, events, size)
    finally:
        store.dispose()
        name = make_url(url).database
        assert name is not None
        drop_database(admin_url, name)
    return ingest_s, staged_s, copy_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of redeliveries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    admin_url = database_url(Settings(database_url=os.environ.get("COMPASS_DATABASE_URL")))
    server = check_connection(admin_url)
    print(f"PostgreSQL {server}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs (shared); {args.events:,} events, "
          f"{args.duplicates:.0%} redelivered")  # fmt: skip
    print(f"median of {args.repeats} runs (fresh database each, order alternated)")
    print(f"{'batch':>6} {'record_usage rows/s':>20} {'staged COPY rows/s':>19} "
          f"{'COPY rows/s':>12} {'ratio':>7} {'staged ratio':>13}")  # fmt: skip
    events = make_events(args.events, args.duplicates, args.seed)
    for size in args.batch:
        ingest_rates, staged_rates, copy_rates = [], [], []
        for repeat in range(args.repeats):
            ingest_s, staged_s, copy_s = measure(
                admin_url, events, size, copy_first=repeat % 2 == 0
            )
            ingest_rates.append(len(events) / ingest_s)
            staged_rates.append(len(events) / staged_s)
            copy_rates.append(len(events) / copy_s)
        ingest_rate, copy_rate = float(np.median(ingest_rates)), float(np.median(copy_rates))
        staged_rate = float(np.median(staged_rates))
        print(f"{size:>6} {ingest_rate:>20,.0f} {staged_rate:>19,.0f} {copy_rate:>12,.0f} "
              f"{ingest_rate / copy_rate:>7.2f} {staged_rate / copy_rate:>13.2f}")  # fmt: skip
    print("ratio = record_usage rows/s ÷ COPY rows/s (same rows, same batches, same run); "
          "staged = COPY into a temp table + one INSERT … SELECT with the same dedup")  # fmt: skip


if __name__ == "__main__":
    main()
