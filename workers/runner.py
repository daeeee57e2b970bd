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

from compass.config import Settings
from compass.core.errors import InvalidEventError
from compass.core.events import DeadLetter, DriftEvent, dead_letter_for, decode
from compass.core.samplers.base import Pool
from compass.core.semantic_map import SemanticMap
from compass.kafka.io import MessageProducer
from compass.kafka.relay import OutboxRelay
from compass.ports.storage import UnitOfWork
from workers.adapter_worker import AdapterWorker, WorkerOutcome

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
        from kafka import KafkaConsumer

        assert self.settings.broker_bootstrap_servers is not None
        consumer = KafkaConsumer(
            self.settings.topic_drift_events,
            bootstrap_servers=self.settings.broker_bootstrap_servers,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.session_timeout_ms // 3),
            max_poll_records=1,
            max_poll_interval_ms=3_600_000,  # training a version can take many minutes
        )
        relay = OutboxRelay(self.uow_factory, self.producer)
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


def run_worker(
    settings: Settings,
    *,
    pool_name: str,
    stop: threading.Event,
    max_events: int | None = None,
    until: Callable[[WorkerOutcome], bool] | None = None,
    group_id: str = CONSUMER_GROUP,
    **worker_options: Any,
) -> list[WorkerOutcome]:
    """Open what a worker needs (database, event vector store, producer), consume drift events
    until told to stop, and close everything. ``worker_options`` are :class:`WorkerSettings`
    fields (sampler, budget, training, eval_texts …)."""
    from compass.core.errors import DataError
    from compass.corpora.pool import pools_dir
    from compass.kafka.io import KafkaMessageProducer
    from compass.qdrant.store import open_vector_store
    from compass.sql.unit_of_work import open_store
    from workers.adapter_worker import WorkerSettings
    from workers.usage_texts import VectorStoreUsageTexts

    if not settings.database_url or not settings.broker_bootstrap_servers:
        raise DataError("the worker needs a database and a broker (see `compass infra up`)")
    store = open_store(settings.database_url)
    events = open_vector_store(settings, dim=384)
    producer = KafkaMessageProducer(settings.broker_bootstrap_servers)

    def make_worker() -> AdapterWorker:
        with store() as uow:
            record = uow.semantic_maps.active_semantic_map()
        if record is None:
            raise DataError("no active semantic map: run 'compass pool build' first")
        return AdapterWorker(
            store,
            load_pool(pools_dir(settings.data_dir) / pool_name, record.semantic_map),
            VectorStoreUsageTexts(events),
            WorkerSettings(
                base_model_id=settings.base_model_id,
                artifacts_dir=settings.artifacts_dir or Path(settings.data_dir) / "adapters",
                data_dir=Path(settings.data_dir),
                topic_adapter_updated=settings.topic_adapter_updated,
                **worker_options,
            ),
        )

    consumer = DriftConsumer(settings, make_worker, store, producer, group_id=group_id)
    try:
        return consumer.run(stop, max_events=max_events, until=until)
    finally:
        producer.close()
        events.close()
        store.dispose()
