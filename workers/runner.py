"""The worker process: consume ``drift-events``, handle each, publish the outbox, commit.

The offset of a drift event is committed only after its job finished (promoted, rejected or
failed and recorded) and the outbox was drained, so a crash re-delivers the event; the job claim
(one per drift event) turns that re-delivery into a no-op.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from compass.bootstrap import Services, bootstrap, outbox_relay, sampler_for
from compass.config import Settings
from compass.core.errors import DataError, InvalidEventError
from compass.core.events import DeadLetter, DriftEvent, dead_letter_for, decode
from compass.core.samplers.base import Pool
from compass.core.semantic_map import SemanticMap
from compass.ports.publisher import MessageProducer
from compass.ports.storage import UnitOfWork
from workers.adapter_worker import AdapterWorker, WorkerOutcome, WorkerSettings
from workers.usage_texts import VectorStoreUsageTexts

log = structlog.get_logger(__name__)

CONSUMER_GROUP = "compass-adapter-workers"


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
                            drift = decode(message.value, DriftEvent)
                        except InvalidEventError as exc:
                            self._dead_letter(message.value, exc, message.partition, message.offset)
                        else:
                            worker = worker or self.worker_factory()
                            outcomes.append(worker.handle(drift))
                        relay.drain()
                        consumer.commit()
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
        log.warning("worker.drift_event_dead_lettered", reason=error.reason, offset=offset)


def build_worker(services: Services, pool_name: str, **worker_options: Any) -> AdapterWorker:
    """An :class:`AdapterWorker` on ``services``: the pool ``pool_name`` re-assigned to the
    active semantic map, usage texts from the event vector store. ``worker_options`` are
    :class:`WorkerSettings` fields (budget, training, eval_texts, gate …)."""
    from compass.corpora.pool import pools_dir

    settings = services.settings
    record = services.maps.current()
    return AdapterWorker(
        services.uow_factory,
        load_pool(pools_dir(settings.data_dir) / pool_name, record.semantic_map),
        VectorStoreUsageTexts(services.vector_store),
        WorkerSettings(
            base_model_id=settings.base_model_id,
            data_dir=Path(settings.data_dir),
            topic_adapter_updated=settings.topic_adapter_updated,
            **worker_options,
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
        return consumer.run(stop, max_events=max_events, until=until)
    finally:
        services.close()
