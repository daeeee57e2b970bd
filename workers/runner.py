"""The worker process: consume ``drift-events``, handle each, publish the outbox, commit.

The offset of a drift event is committed only after its job finished (promoted, rejected or
failed and recorded) and the outbox was drained, so a crash re-delivers the event; the job claim
(one per drift event) turns that re-delivery into a no-op.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from compass import metrics
from compass.bootstrap import Services, bootstrap, outbox_relay, sampler_for
from compass.config import Settings
from compass.contracts import read_event
from compass.core.errors import DataError, InvalidEventError
from compass.core.events import DeadLetter, DriftEvent, dead_letter_for
from compass.core.gate import PromotionGate
from compass.core.samplers.base import Pool
from compass.core.semantic_map import SemanticMap
from compass.health import Heartbeat, serve
from compass.lm.training.config import AdapterTrainingConfig
from compass.ports.publisher import MessageProducer
from compass.ports.storage import UnitOfWork
from workers.adapter_worker import AdapterWorker, WorkerOutcome, WorkerSettings
from workers.leases import held_elsewhere
from workers.usage_texts import VectorStoreUsageTexts

log = structlog.get_logger(__name__)

CONSUMER_GROUP = "compass-adapter-workers"
MAX_DRIFT_EVENT_BYTES = 1_000_000
"""Larger ``drift-events`` values are dead-lettered (``oversized_payload``)."""


def load_pool(pool_dir: Path, semantic_map: SemanticMap) -> Pool:
    """The auxiliary pool ``compass pool build`` wrote, with clusters of ``semantic_map`` (the
    map the usage counts use; re-assigning is cheap and keeps the two consistent)."""
    from compass.corpora.pool import load_snapshot

    snapshot = load_snapshot(pool_dir)
    return Pool.from_records(snapshot.records, snapshot.vectors, semantic_map)


@dataclass
class DriftConsumer:
    """Glue between Kafka and :class:`AdapterWorker` (one event at a time, in order)."""

    settings: Settings
    worker_factory: Callable[[], AdapterWorker]
    uow_factory: Callable[[], UnitOfWork]
    producer: MessageProducer
    group_id: str = CONSUMER_GROUP
    session_timeout_ms: int = 10_000
    wait_s: float = 1.0  # polling of a job another worker holds
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    busy: bool = False

    def alive(self) -> bool:
        """/healthz: the poll loop turned recently, or a job is running (training is long)."""
        return self.busy or self.heartbeat()

    def _handle(
        self, worker: AdapterWorker, drift: DriftEvent, stop: threading.Event
    ) -> WorkerOutcome | None:
        """Handle one drift event. While another worker holds its job (this is a redelivery
        after a rebalance), wait: that worker finishes it, or dies and its lease expires and
        the job is claimed here. ``None`` when ``stop`` is set meanwhile, or when it stopped
        the job between training steps (given back unwritten: :mod:`workers.stopping`)."""
        while True:
            self.busy = True
            try:
                with metrics.running_job() as timer:
                    outcome = worker.handle(drift, stop)
            finally:
                self.busy = False
            if outcome.status != "skipped":
                metrics.record_job(outcome.status, timer.seconds)
                return None if outcome.status == "stopped" else outcome
            if not held_elsewhere(self.uow_factory, drift.drift_id):
                metrics.record_job("skipped")
                return outcome
            log.info("worker.waiting_for_lease", drift_id=str(drift.drift_id))
            self.heartbeat.beat()
            if stop.wait(self.wait_s):
                return None

    def run(
        self,
        stop: threading.Event,
        max_events: int | None = None,
        until: Callable[[WorkerOutcome], bool] | None = None,
    ) -> list[WorkerOutcome]:
        """Handle drift events until ``stop`` is set, ``max_events`` were handled, or an outcome
        satisfies ``until`` (each after the outbox is drained and the offset committed)."""
        from compass.kafka.io import open_consumer

        assert self.settings.broker_bootstrap_servers is not None
        consumer = open_consumer(
            self.settings.broker_bootstrap_servers,
            self.settings.topic_drift_events,
            self.group_id,
            session_timeout_ms=self.session_timeout_ms,
        )
        relay = outbox_relay(self.uow_factory, self.producer)
        outcomes: list[WorkerOutcome] = []
        worker: AdapterWorker | None = None
        try:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=500)
                for records in batch.values():
                    for message in records:
                        try:
                            drift = decode_drift_event(message.value)
                        except InvalidEventError as exc:
                            self._dead_letter(message.value, exc, message.partition, message.offset)
                        else:
                            worker = worker or self.worker_factory()
                            outcome = self._handle(worker, drift, stop)
                            if outcome is None:  # stopped: the job was not done here
                                return outcomes  # not committed: the event is redelivered
                            outcomes.append(outcome)
                        relay.drain()
                        consumer.commit()
                self.heartbeat.beat()
                if relay.drain() == 0 and self._done(outcomes, max_events, until):
                    break
        finally:
            consumer.close()
        return outcomes

    @staticmethod
    def _done(
        outcomes: list[WorkerOutcome],
        max_events: int | None,
        until: Callable[[WorkerOutcome], bool] | None,
    ) -> bool:
        if max_events is not None and len(outcomes) >= max_events:
            return True
        return until is not None and any(until(outcome) for outcome in outcomes)

    def _dead_letter(
        self, raw: bytes, error: InvalidEventError, partition: int, offset: int
    ) -> None:
        letter: DeadLetter = dead_letter_for(
            raw,
            error,
            source_topic=self.settings.topic_drift_events,
            partition=partition,
            offset=offset,
        )
        with self.uow_factory() as uow:
            uow.dead_letters.record_dead_letter(letter)
            uow.commit()
        metrics.record_dead_letters("worker", [error.reason])
        log.warning("worker.drift_event_dead_lettered", reason=error.reason, offset=offset)


def decode_drift_event(raw: bytes | None) -> DriftEvent:
    """A ``drift-events`` value read as its contract promises (:func:`compass.contracts.read_event`:
    the edge policy, unknown fields ignored, accepted earlier versions upgraded);
    raises :class:`InvalidEventError` and nothing else, so no message can kill the worker (an
    unexpected failure is reason ``internal_error``)."""
    try:
        return read_event(raw, DriftEvent, "drift-events", max_bytes=MAX_DRIFT_EVENT_BYTES)
    except InvalidEventError:
        raise
    except Exception as exc:  # a bug in decoding must not crash-loop the worker on one message
        raise InvalidEventError("internal_error", repr(exc)[:500], stage="decode") from None


def servable_training(
    training: AdapterTrainingConfig, serving_target: str
) -> AdapterTrainingConfig:
    """``training`` bound to ``serving_target`` (``COMPASS_SERVING_TARGET``) unless it names a
    target itself. Raises :class:`~compass.core.errors.ConfigError` when that engine could not
    serve what the config trains (DoRA, a rank above its default maximum), so a worker fails at
    start rather than announcing adapters serving would refuse."""
    if serving_target == "any" or training.serving_target != "any":
        return training
    return dataclasses.replace(training, serving_target=serving_target)  # type: ignore[arg-type]


def build_worker(services: Services, pool_name: str, **worker_options: Any) -> AdapterWorker:
    """An :class:`AdapterWorker` on ``services``: the pool ``pool_name`` re-assigned to the
    active semantic map, usage texts from the event vector store. ``worker_options`` are
    :class:`WorkerSettings` fields (budget, training, eval_texts, gate …)."""
    from compass.corpora.pool import pools_dir

    settings = services.settings
    record = services.maps.current()
    default_training = dataclasses.replace(
        WorkerSettings(settings.base_model_id, Path(settings.data_dir)).training,
        replay_weight=settings.replay_weight,
    )
    training = servable_training(
        worker_options.pop("training", None) or default_training, settings.serving_target
    )
    return AdapterWorker(
        services.uow_factory,
        load_pool(pools_dir(settings.data_dir) / pool_name, record.semantic_map),
        VectorStoreUsageTexts(services.vector_store),
        WorkerSettings(
            base_model_id=settings.base_model_id,
            data_dir=Path(settings.data_dir),
            topic_adapter_updated=settings.topic_adapter_updated,
            **{
                "lease": timedelta(seconds=settings.worker_lease_s),
                "max_attempts": settings.worker_max_attempts,
                "eval_texts": settings.gate_eval_texts,
                "gate": PromotionGate(
                    min_gain=settings.gate_margin,
                    max_forgetting=settings.gate_max_forgetting,
                    confidence=settings.gate_confidence,
                    n_resamples=settings.gate_resamples,
                ),
                "training": training,
                **worker_options,
            },
        ),
        sampler=services.sampler,
        artifacts=services.artifacts,
    )


def run_worker(
    settings: Settings,
    *,
    pool_name: str,
    stop: threading.Event,
    max_events: int | None = None,
    until: Callable[[WorkerOutcome], bool] | None = None,
    group_id: str = CONSUMER_GROUP,
    sampler: str | None = None,
    **worker_options: Any,
) -> list[WorkerOutcome]:
    """Open the services (:func:`compass.bootstrap.bootstrap`), consume drift events until told
    to stop, and close everything. ``sampler`` overrides ``COMPASS_SAMPLER``;
    ``worker_options`` are :class:`WorkerSettings` fields (budget, training, eval_texts …)."""
    if not settings.database_url or not settings.broker_bootstrap_servers:
        raise DataError("the worker needs a database and a broker (see `compass infra up`)")
    services = bootstrap(settings, sampler=sampler_for(settings, sampler) if sampler else None)
    try:
        consumer = DriftConsumer(
            settings,
            lambda: build_worker(services, pool_name, **worker_options),
            services.uow_factory,
            services.publisher,
            group_id=group_id,
        )
        health = serve(settings, alive=consumer.alive, ready=lambda: not stop.is_set())
        try:
            return consumer.run(stop, max_events=max_events, until=until)
        finally:
            if health is not None:
                health.stop()
    finally:
        services.close()
