"""The swap points end to end: a toy embedder (48-d) and a toy drift detector, registered by a
plugin module (:mod:`tests.toy_parts`) and selected by settings alone, on the real broker,
PostgreSQL and Qdrant Edge.

* (a) Ingest: an auxiliary pool is built with the toy embedder and its semantic map fitted on it
  (``compass pool build``'s code); a ``compass streams`` worker process, told only
  ``COMPASS_PLUGINS``, ``COMPASS_EMBEDDER_ID`` and ``COMPASS_DRIFT_DETECTOR``, activates that
  map, embeds every event into 48-d points in Qdrant Edge, counts them in PostgreSQL, and the
  toy detector's verdicts decide the drift events: French usage switches vocabulary halfway and
  gets exactly one, computed by the toy's L1 rule from the stored counts; German does not change
  and gets none, although its windows were judged.
* (b) The worker's sampling: the adapter worker, built by the composition root with the same
  settings, selects from the toy-embedded pool for that French drift event (no training).

Texts are synthetic on purpose: three small vocabularies whose hashed trigrams fall in different
clusters, so the toy detector (a fixed threshold, no calibration) sees a clean shift.
"""

from __future__ import annotations

import os
import random
import re
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from compass.bootstrap import bootstrap
from compass.config import Settings
from compass.core.events import DriftEvent, PromptEvent, decode, encode
from compass.core.records import TextRecord
from compass.corpora.pool import build_pool, load_snapshot, pools_dir
from compass.kafka.broker import ensure_topics, topic_specs
from compass.kafka.io import KafkaMessageProducer
from compass.sql.unit_of_work import SqlStore, open_store
from tests.integration.test_streams import REPO, _read_topic, _run_worker
from tests.toy_parts import TOY_DETECTOR, TOY_DIM, TOY_EMBEDDER, TOY_LIMIT, TrigramEmbedder
from workers.runner import build_worker

pytestmark = pytest.mark.integration

VOCABULARIES = {
    "stable": ("commit", "branch", "merge", "rebase", "stash", "remote", "checkout", "tag"),
    "shifted": ("franc", "peso", "krona", "dinar", "rupee", "zloty", "forint", "baht"),
    "other": ("kernel", "driver", "module", "socket", "thread", "buffer", "signal", "mutex"),
}
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DURATION = timedelta(minutes=10)
EVENTS = {"fr": 600, "de": 300}  # French switches to the "shifted" words at half time
SHIFT_AT = START + DURATION / 2


def _text(rng: random.Random, vocabulary: str) -> str:
    return " ".join(rng.sample(VOCABULARIES[vocabulary], 3))


def _events() -> list[PromptEvent]:
    rng = random.Random(5)
    events = []
    for language, count in EVENTS.items():
        step = DURATION / count
        for i in range(count):
            at = START + step * i
            vocabulary = "shifted" if language == "fr" and at >= SHIFT_AT else "stable"
            events.append(
                PromptEvent(
                    event_id=f"{language}-{i:05d}",
                    occurred_at=at,
                    language=language,
                    text=_text(rng, vocabulary),
                    source="toy",
                )
            )
    return sorted(events, key=lambda e: (e.occurred_at, e.event_id))


def _pool_records() -> list[TextRecord]:
    rng = random.Random(11)
    return [
        TextRecord(
            id=f"{language}-{vocabulary}-{i}",
            language=language,
            text=_text(rng, vocabulary),
            source="toy",
            topic=vocabulary,
        )
        for language in ("en", "es", "it")
        for vocabulary in VOCABULARIES
        for i in range(30)
    ]


def _env(prefix: str, bootstrap_servers: str, database_url: str) -> dict[str, str]:
    """The worker's settings: the swap points by name, the rest as the streams test has it."""
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "COMPASS_PLUGINS": "tests.toy_parts",
        "COMPASS_EMBEDDER_ID": TOY_EMBEDDER,
        "COMPASS_DRIFT_DETECTOR": TOY_DETECTOR,
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": bootstrap_servers,
        "COMPASS_DATABASE_URL": database_url,
        "COMPASS_STREAM_APP_ID": f"{prefix}-app",
        "COMPASS_TOPIC_PROMPT_EVENTS": f"{prefix}-prompt-events",
        "COMPASS_TOPIC_PROMPT_EVENTS_DLQ": f"{prefix}-prompt-events.dlq",
        "COMPASS_TOPIC_DRIFT_EVENTS": f"{prefix}-drift-events",
        "COMPASS_TOPIC_ADAPTER_UPDATED": f"{prefix}-adapter-updated",
        "COMPASS_STREAM_SESSION_TIMEOUT_S": "6",
        "COMPASS_STREAM_SAMPLE_RATE": "1.0",
        "COMPASS_STREAM_WINDOW_SECONDS": "60",
        "COMPASS_STREAM_BLOCKS_PER_WINDOW": "6",
        "COMPASS_STREAM_ALLOWED_LATENESS_S": "5",
        "COMPASS_DRIFT_MIN_EVENTS": "50",
        "COMPASS_DRIFT_REFERENCE_MIN_EVENTS": "100",
        "COMPASS_DRIFT_MAX_SPAN_WINDOWS": "8",
        "COMPASS_DRIFT_COOLDOWN_WINDOWS": "1",
        "COMPASS_LOG_LEVEL": "INFO",
        "COMPASS_LOG_FORMAT": "console",
    }


def _settings(env: dict[str, str], data_dir: Path) -> Settings:
    """The same settings in this process (importing the plugin here too)."""
    values = {k.removeprefix("COMPASS_").lower(): v for k, v in env.items() if k != "PYTHONPATH"}
    return Settings(**values, data_dir=data_dir)  # type: ignore[arg-type]


def _totals(store: SqlStore, version: int) -> dict[str, float]:
    with store() as uow:
        return {
            language: sum(
                c.total
                for c in uow.usage.usage_distribution(
                    language, START - timedelta(hours=1), START + timedelta(hours=1), version
                ).values()
            )
            for language in EVENTS
        }


def _all_counted(store: SqlStore) -> Callable[[], bool]:
    def done() -> bool:
        with store() as uow:
            record = uow.semantic_maps.active_semantic_map()
        if record is None:
            return False
        totals = _totals(store, record.version)
        return all(totals[language] >= n for language, n in EVENTS.items())

    return done


def test_toy_embedder_and_detector_run_the_ingest_and_the_worker_selection(
    broker_bootstrap: str, migrated_database_url: str, tmp_path: Path
) -> None:
    prefix = f"swap-{uuid.uuid4().hex[:8]}"
    env = _env(prefix, broker_bootstrap, migrated_database_url)
    data_dir = tmp_path / "data"
    settings = _settings(env, data_dir)
    assert (settings.embedder_id, settings.drift_detector) == (TOY_EMBEDDER, TOY_DETECTOR)

    # the auxiliary pool and its semantic map, embedded with the toy (``compass pool build``)
    records = _pool_records()
    pool_dir = pools_dir(data_dir) / "default"
    build_pool(records, TrigramEmbedder(), pool_dir, k=6, seed=0)
    pool_map = load_snapshot(pool_dir).semantic_map
    assert pool_map.dim == TOY_DIM
    ensure_topics(broker_bootstrap, topic_specs(settings))
    producer = KafkaMessageProducer(broker_bootstrap)
    events = _events()
    for event in events:
        producer.send(settings.topic_prompt_events, event.language.encode(), encode(event))
    producer.flush()
    producer.close()

    # (a) the ingest: a real ``compass streams`` process, the parts chosen by settings alone
    with open_store(migrated_database_url) as store:
        run = _run_worker(
            [sys.executable, "-m", "compass.cli", "streams"], env, data_dir,
            _all_counted(store),
        )  # fmt: skip
        assert run.returncode is not None, run.log[-3000:]
        assert "Traceback" not in run.log, run.log[-3000:]
        with store() as uow:
            record = uow.semantic_maps.active_semantic_map()
            assert record is not None
            french = uow.drift.last_drift_event("fr")
            german = uow.drift.last_drift_event("de")
        assert record.semantic_map.k == 6  # the pool's map, activated by the stream
        assert record.semantic_map.version == pool_map.version
        assert _totals(store, record.version) == {k: float(v) for k, v in EVENTS.items()}

        # the vector store holds one 48-d point per event
        with bootstrap(settings, uow_factory=store) as services:
            assert services.embedder.dim == TOY_DIM and services.vector_store.dim == TOY_DIM
            assert services.vector_store.count() == len(events)
            points = services.vector_store.retrieve([events[7].point_id], with_vectors=True)
            assert points[0].vector is not None and points[0].vector.shape == (TOY_DIM,)
            assert points[0].payload["semantic_map_version"] == record.version

            # the toy's verdicts made the drift events: one for French, at the shift …
            assert french is not None and german is None
            assert french.window_start == SHIFT_AT
            assert french.window_end == SHIFT_AT + timedelta(minutes=1)
            assert french.threshold == TOY_LIMIT and french.p_value == 0.0
            assert french.statistic > TOY_LIMIT
            changes = french.top_cluster_changes
            assert sum(abs(c["delta"]) for c in changes) == pytest.approx(french.statistic)
            with store() as uow:
                window = uow.usage.usage_distribution(
                    "fr", french.window_start, french.window_end, record.version
                )
            n_window = sum(c.sampled for c in window.values())
            assert n_window == french.n_sampled == 60
            for change in changes:
                counted = window.get(change["cluster"])
                share = (counted.sampled if counted else 0) / n_window
                assert change["window_share"] == pytest.approx(share)
            published = [
                decode(value, DriftEvent)
                for _, value in _read_topic(broker_bootstrap, settings.topic_drift_events)
            ]
            assert [e.drift_id for e in published] == [french.drift_id]

            # … and none for German, whose windows the toy judged and let pass
            checks = [line for line in run.log.splitlines()
                      if "drift.check" in line and "language=de" in line]  # fmt: skip
            assert checks, run.log[-3000:]
            assert all("drift=False" in line for line in checks)
            assert all(re.search(rf"threshold={TOY_LIMIT}\b", line) for line in checks)

            # (b) the worker's sampling: the pool re-assigned to the active map, then selection
            worker = build_worker(services, "default", budget=24, seed=3)
            selected = worker.select(published[0])
            again = worker.select(published[0])

    assert selected.target.shape == (6,) and selected.target.sum() == 60
    assert len(selected.texts) == 24 and selected.texts == again.texts
    topic_of = {r.text: r.topic for r in records}
    chosen = [topic_of[t] for t in selected.texts]
    assert chosen.count("shifted") > len(chosen) / 2, chosen  # what French drifted to
    # the pool's 48-d vectors and the active map agree: the chosen texts, embedded again, fall
    # in the clusters the sampler says it filled, all of them clusters of the drift window
    clusters = record.semantic_map.assign(TrigramEmbedder().embed(selected.texts)).tolist()
    filled = {int(c): n for c, n in selected.report["per_cluster"].items()}
    assert dict(Counter(clusters)) == filled
    assert all(selected.target[c] > 0 for c in filled)
