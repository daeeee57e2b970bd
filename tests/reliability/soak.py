"""The soak (issue 14, part 6): the stream and the relay under a steady rate for a bounded time,
a fault every few minutes, memory and lag watched throughout, and the exact ledger at the end.

Processes: ``compass streams`` (through a TCP proxy to PostgreSQL), ``compass relay``, and the
Tansu broker of this run. Faults, in turn, every ``--fault-every`` seconds: the broker paused
(SIGSTOP) for 30 s, PostgreSQL cut for 30 s (connections reset, port refused), the stream
SIGKILLed and restarted. Sampled every ``--sample-every`` seconds: each process's resident memory
(``VmRSS`` of the process and its children, and its anonymous part ``RssAnon``: heap and stacks,
without the pages of mapped files) and the stream's lag (valid events the broker has
acknowledged minus events counted in PostgreSQL).

Reported (``benchmarks/results/soak.json`` and the soak block of ``docs/reliability.md``):

- memory slopes per process in MB/hour and MB per 1,000 events counted, of RSS and of its
  anonymous part: least-squares lines (:func:`scipy.stats.linregress`) over the samples after
  the first ``--warmup`` seconds, per process lifetime (a restarted stream starts a new one);
  the longest lifetime's slopes are the ones reported;
- per fault, the seconds from its end until the stream counts again and its lag is back to at
  most one batch plus two seconds of traffic (the steady state's own lag), and the largest lag
  it caused;
- the ledger: sent = counted + dead-lettered, duplicates = 0, a point per valid event.

    COMPASS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m tests.reliability.soak --minutes 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

from tests.reliability.helpers import (
    COMPASS,
    REPO,
    Ledger,
    ManagedProcess,
    SteadyProducer,
    TcpProxy,
    build_scenario_data,
    count_points,
    create_topics,
    memory_kib,
    paused,
    store_semantic_map,
    stream_env,
    wait_until,
)

RESULTS = REPO / "benchmarks" / "results" / "soak.json"
DOC = REPO / "docs" / "reliability.md"
BATCH = 64


@dataclass
class FaultRecord:
    kind: str
    at_s: float
    duration_s: float
    recovery_s: float | None = None
    max_lag: int = 0


@dataclass
class Sample:
    t_s: float
    lag: int
    counted: int
    rss_mb: dict[str, float] = field(default_factory=dict)
    anon_mb: dict[str, float] = field(default_factory=dict)
    """The anonymous part of ``rss_mb`` (``RssAnon``: heap and stacks, not mapped files)."""


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="Traffic duration.")
    parser.add_argument("--rate", type=float, default=20.0, help="Messages per second.")
    parser.add_argument("--fault-every", type=float, default=180.0, help="Seconds between faults.")
    parser.add_argument("--outage", type=float, default=30.0, help="Seconds of each outage.")
    parser.add_argument("--sample-every", type=float, default=5.0, help="Sampling period (s).")
    parser.add_argument("--warmup", type=float, default=60.0, help="Left out of the slopes (s).")
    parser.add_argument(
        "--faults",
        default="broker paused,postgres cut,stream SIGKILL",
        help="The faults' cycle, comma-separated (e.g. the SIGKILL last, so that the stream's "
        "memory slope spans most of the run).",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-doc", action="store_true", help="Leave docs/reliability.md as is.")
    return parser.parse_args()


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path, database_url: str) -> None:
        from compass.kafka.broker import EmbeddedBroker

        self.args = args
        self.workdir = workdir
        self.database_url = database_url
        cache = Path(os.environ.get("COMPASS_TEST_CACHE_DIR", REPO / ".data" / "test-cache"))
        n = int(args.minutes * 60 * args.rate)
        per_language = max(1, int(n * 0.98) // 3)
        self.data = build_scenario_data(
            cache, per_language=per_language, n_bad=n - 3 * per_language
        )
        self.messages = self.data.messages
        self.valid_prefix = [0]
        for m in self.messages:
            self.valid_prefix.append(self.valid_prefix[-1] + (m.event is not None))
        self.broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
        url = make_url(database_url)
        self.proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
        prefix = f"soak-{uuid.uuid4().hex[:6]}"
        from compass.infra.net import free_port

        self.env = stream_env(prefix, self.broker.bootstrap_servers,
                              self.proxy.url(database_url), self.data.cache,
                              workdir / "data", free_port())  # fmt: skip
        self.settings = create_topics(self.broker.bootstrap_servers, self.env)
        store_semantic_map(database_url, self.data.semantic_map)
        relay_env = {**self.env, "COMPASS_METRICS_PORT": str(free_port()),
                     "COMPASS_DATA_DIR": str(workdir / "relay")}  # fmt: skip
        self.relay = ManagedProcess([*COMPASS, "relay"], relay_env, workdir / "relay.log").start()
        self.streams: list[ManagedProcess] = []
        self.engine = create_engine(database_url, pool_pre_ping=True)
        self.samples: list[Sample] = []
        self.faults: list[FaultRecord] = []
        self.lifetimes: list[tuple[str, float]] = []  # (process label, start second)
        self.started = time.monotonic()

    # ----------------------------------------------------------------- observation
    def now(self) -> float:
        return time.monotonic() - self.started

    def processed(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(text("SELECT count(*) FROM processed_events")).scalar_one()
            )

    def lag(self, producer: SteadyProducer) -> int:
        return self.valid_prefix[min(producer.attempted, len(self.messages))] - self.processed()

    def start_stream(self) -> None:
        label = f"stream#{len(self.streams)}"
        log_path = self.workdir / f"{label}.log"
        self.streams.append(ManagedProcess([*COMPASS, "streams"], self.env, log_path).start())
        self.lifetimes.append((label, self.now()))

    def sample(self, producer: SteadyProducer) -> Sample:
        memory: dict[str, dict[str, float]] = {}
        if (value := self.streams[-1].memory_mb()) is not None:
            memory[f"stream#{len(self.streams) - 1}"] = value
        if (value := self.relay.memory_mb()) is not None:
            memory["relay"] = value
        if self.broker.pid is not None and (kib := memory_kib(self.broker.pid)) is not None:
            memory["broker"] = {key: v / 1024.0 for key, v in kib.items()}
        counted = self.processed()
        lag = self.valid_prefix[min(producer.attempted, len(self.messages))] - counted
        sample = Sample(
            round(self.now(), 1), lag, counted,
            {label: m["rss"] for label, m in memory.items()},
            {label: m["anon"] for label, m in memory.items()},
        )  # fmt: skip
        self.samples.append(sample)
        return sample

    def settled(self) -> int:
        """The steady state's lag: one batch plus two seconds of traffic."""
        return BATCH + int(2 * self.args.rate)

    def wait_recovered(self, producer: SteadyProducer, fault: FaultRecord) -> None:
        """Until the stream has counted new events since the fault's end (a restarted process
        is back at work) and its lag is down to the steady state's."""
        ended = time.monotonic()
        counted_at_end = self.processed()
        deadline = ended + 600
        while time.monotonic() < deadline:
            sample = self.sample(producer)
            fault.max_lag = max(fault.max_lag, sample.lag)
            if sample.lag <= self.settled() and self.processed() > counted_at_end:
                fault.recovery_s = round(time.monotonic() - ended, 1)
                return
            assert self.streams[-1].alive(), self.streams[-1].log_tail()
            time.sleep(1.0)

    # ----------------------------------------------------------------- faults
    def fault(self, kind: str, producer: SteadyProducer) -> FaultRecord:
        record = FaultRecord(kind, round(self.now(), 1), 0.0)
        began = time.monotonic()
        if kind == "broker paused":
            assert self.broker.pid is not None
            with paused(self.broker.pid):
                self._outage(producer, record)
        elif kind == "postgres cut":
            self.proxy.cut()
            try:
                self._outage(producer, record)
            finally:
                self.proxy.restore()
        else:  # stream SIGKILL
            self.streams[-1].kill()
            self.start_stream()
        record.duration_s = round(time.monotonic() - began, 1)
        self.wait_recovered(producer, record)
        self.faults.append(record)
        print(f"[{self.now():7.1f}s] {kind}: recovered in {record.recovery_s} s, "
              f"max lag {record.max_lag}", flush=True)  # fmt: skip
        return record

    def _outage(self, producer: SteadyProducer, record: FaultRecord) -> None:
        end = time.monotonic() + self.args.outage
        while time.monotonic() < end:
            time.sleep(min(self.args.sample_every, max(0.0, end - time.monotonic())))
            with suppress(Exception):  # a read may fail mid-outage; that sample is skipped
                record.max_lag = max(record.max_lag, self.sample(producer).lag)

    # ----------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        args = self.args
        self.start_stream()
        wait_until(lambda: self.processed() >= 0 and _ready(self.env), 300, "the stream ready")
        producer = SteadyProducer(
            self.broker.bootstrap_servers,
            self.settings.topic_prompt_events,
            self.messages,
            args.rate,
        )
        producer.start()  # fmt: skip
        kinds = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
        unknown = set(kinds) - {"broker paused", "postgres cut", "stream SIGKILL"}
        if unknown or not kinds:
            raise SystemExit(f"unknown faults {sorted(unknown)} (or none) in --faults")
        next_fault = args.fault_every
        while not producer.finished.is_set():
            if self.now() >= next_fault and self.now() < args.minutes * 60 - 60:
                self.fault(kinds[len(self.faults) % len(kinds)], producer)
                next_fault = self.now() + args.fault_every
            self.sample(producer)
            time.sleep(args.sample_every)
        assert not producer.failed, producer.failed[:3]
        drained = wait_until(lambda: self.lag(producer) <= 0, 600, "the lag back to zero")
        time.sleep(3.0)
        ledger = Ledger("soak", sent=producer.acked, valid=len(self.data.valid),
                        malformed=len(self.data.bad))  # fmt: skip
        wait_until(lambda: _count(self.engine, "dead_letters") >= ledger.malformed, 120,
                   "the dead letters")  # fmt: skip
        self.sample(producer)
        self.streams[-1].stop()
        from compass.core.events import event_point_id

        ids = {m.event.event_id for m in self.data.valid if m.event is not None}
        ledger.read(self.database_url, ids)
        ledger.points = count_points(self.workdir / "data", [event_point_id(i) for i in ids])
        ledger.recovery_s = [-1.0 if f.recovery_s is None else f.recovery_s for f in self.faults]
        return {
            "minutes": args.minutes, "rate_per_s": args.rate, "fault_every_s": args.fault_every,
            "outage_s": args.outage, "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "faults": [asdict(f) for f in self.faults],
            "drain_after_traffic_s": round(drained, 1),
            "memory_slope_mb_per_hour": self.slopes(),
            "ledger": asdict(ledger), "exact": _exact(ledger),
            "samples": [asdict(s) for s in self.samples],
        }  # fmt: skip

    def slopes(self) -> dict[str, dict[str, Any]]:
        return memory_slopes(self.samples, self.args.warmup)

    def close(self) -> None:
        for process in [*self.streams, self.relay]:
            if process.alive():
                process.stop()
        self.proxy.close()
        self.broker.stop()
        self.engine.dispose()


def memory_slopes(samples: list[Sample], warmup: float) -> dict[str, dict[str, Any]]:
    """Per process, its longest lifetime's least-squares slopes over the samples after the first
    ``warmup`` seconds: of RSS and of its anonymous part (MB/hour, and MB per 1,000 events
    counted), the same over the lifetime's second half only (MB/hour: without one-off steps
    such as error paths loaded at the first outage), with the first and last values and the
    lifetime's length."""
    from scipy.stats import linregress

    series: dict[str, list[tuple[float, float, float]]] = {}
    counted_at: dict[float, int] = {}
    for s in samples:
        counted_at[s.t_s] = s.counted
        for label, mb in s.rss_mb.items():
            series.setdefault(label, []).append((s.t_s, mb, s.anon_mb.get(label, 0.0)))
    out: dict[str, dict[str, Any]] = {}
    for label, points in series.items():
        start = points[0][0]
        kept = [p for p in points if p[0] - start >= warmup]
        if len(kept) < 5:
            continue
        name = re.sub(r"#\d+$", "", label)
        span = kept[-1][0] - kept[0][0]
        if name in out and out[name]["span_s"] >= span:
            continue
        hours = [t / 3600.0 for t, _, _ in kept]
        xs = [counted_at[t] / 1000.0 for t, _, _ in kept]
        row: dict[str, Any] = {"span_s": round(span), "lifetime": label}
        half = len(kept) // 2
        for part, column in (("rss", 1), ("anon", 2)):
            ys = [p[column] for p in kept]
            row[f"{part}_slope_mb_per_hour"] = round(float(linregress(hours, ys).slope), 2)
            row[f"{part}_second_half_slope_mb_per_hour"] = round(
                float(linregress(hours[half:], ys[half:]).slope), 2
            )
            row[f"{part}_mb_per_1000_events"] = (
                round(float(linregress(xs, ys).slope), 2) if len(set(xs)) > 1 else None
            )
            row[f"{part}_first_mb"] = round(ys[0], 1)
            row[f"{part}_last_mb"] = round(ys[-1], 1)
        out[name] = row
    return out


def _ready(env: dict[str, str]) -> bool:
    from tests.reliability.helpers import ready

    return ready(int(env["COMPASS_METRICS_PORT"]))


def _count(engine: Any, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _exact(ledger: Ledger) -> bool:
    try:
        ledger.assert_exact()
    except AssertionError:
        return False
    return True


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def write_doc(result: dict[str, Any], doc: Path = DOC) -> None:
    """Replace the block between ``<!-- soak:begin -->`` and ``<!-- soak:end -->``."""
    ledger = result["ledger"]
    lines = [
        "<!-- soak:begin -->",
        f"Last run: {result['minutes']:g} min at {result['rate_per_s']:g} msg/s, a fault every "
        f"{result['fault_every_s']:g} s ({result['outage_s']:g} s outages), on "
        f"{result['machine']}. Ledger: sent {ledger['sent']} = counted {ledger['counted']} + "
        f"dead-lettered {ledger['dead_lettered']}; duplicates {ledger['duplicates']}; points "
        f"{ledger['points']}; exact: **{result['exact']}**. Lag back to zero "
        f"{result['drain_after_traffic_s']} s after the traffic stopped.",
        "",
        "| process | RSS slope (MB/hour) | anon slope (MB/hour) | second half: RSS, anon "
        "(MB/hour) | RSS MB per 1,000 events | anon MB per 1,000 events | RSS first → last (MB) "
        "| anon first → last (MB) | over (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sorted(result["memory_slope_mb_per_hour"].items()):
        lines.append(
            f"| {name} | {s['rss_slope_mb_per_hour']:+.1f} | {s['anon_slope_mb_per_hour']:+.1f} "
            f"| {s['rss_second_half_slope_mb_per_hour']:+.1f}, "
            f"{s['anon_second_half_slope_mb_per_hour']:+.1f} "
            f"| {_signed(s['rss_mb_per_1000_events'])} | {_signed(s['anon_mb_per_1000_events'])} "
            f"| {s['rss_first_mb']} → {s['rss_last_mb']} | {s['anon_first_mb']} → "
            f"{s['anon_last_mb']} | {s['span_s']} |"
        )
    lines += ["", "| fault | at (s) | lasted (s) | lag back to steady (s) | max lag (events) |",
              "|---|---|---|---|---|"]  # fmt: skip
    for f in result["faults"]:
        lines.append(f"| {f['kind']} | {f['at_s']} | {f['duration_s']} | {f['recovery_s']} | "
                     f"{f['max_lag']} |")  # fmt: skip
    lines.append("<!-- soak:end -->")
    body = doc.read_text()
    block = re.compile(r"<!-- soak:begin -->.*?<!-- soak:end -->", re.S)
    doc.write_text(block.sub(lambda _: "\n".join(lines), body))


def main() -> dict[str, Any]:
    from compass.sql.migrate import upgrade
    from compass.sql.server import temporary_database

    args = _parse()
    admin = os.environ.get("COMPASS_DATABASE_URL")
    if not admin or not make_url(admin).host:
        raise SystemExit("the soak needs COMPASS_DATABASE_URL on a TCP PostgreSQL server")
    with (
        tempfile.TemporaryDirectory(prefix="compass-soak-") as tmp,
        temporary_database(admin) as url,
    ):
        upgrade(url)
        soak = Soak(args, Path(tmp), url)
        try:
            result = soak.run()
        finally:
            soak.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_doc:
        write_doc(result)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    main()
