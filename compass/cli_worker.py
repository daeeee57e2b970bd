"""``compass worker``: consume drift-events and turn them into adapter versions."""

from __future__ import annotations

from pathlib import Path

import typer


def worker(
    sampler: str = typer.Option("compass", help="Sampler that picks the auxiliary data."),
    budget: int = typer.Option(96, min=1, help="Auxiliary texts per update."),
    steps: int = typer.Option(24, min=1, help="Training steps per update."),
    max_events: int = typer.Option(0, min=0, help="Stop after this many drift events (0: run)."),
    pool: str = typer.Option("default", help="Auxiliary pool (folder under <data_dir>/pools)."),
) -> None:
    """Run an adapter worker until SIGTERM/Ctrl-C (GPU when present, CPU otherwise)."""
    import signal
    import threading

    from compass.config import load_settings
    from compass.data.pool import pools_dir
    from compass.infra.embedded import with_services
    from compass.infra.vectorstore import open_vector_store
    from compass.storage.sql import open_store
    from compass.training.config import AdapterTrainingConfig
    from workers.adapter_worker import AdapterWorker, WorkerSettings
    from workers.kafka_io import KafkaMessageProducer
    from workers.runner import DriftConsumer, load_pool
    from workers.usage_texts import VectorStoreUsageTexts

    settings = with_services(load_settings())
    assert settings.database_url and settings.broker_bootstrap_servers
    store = open_store(settings.database_url)
    events = open_vector_store(settings, dim=384)

    def make_worker() -> AdapterWorker:
        with store() as uow:
            record = uow.semantic_maps.active_semantic_map()
        if record is None:
            from compass.errors import DataError

            raise DataError("no active semantic map: run 'compass pool build' first")
        return AdapterWorker(
            store,
            load_pool(pools_dir(settings.data_dir) / pool, record.semantic_map),
            VectorStoreUsageTexts(events),
            WorkerSettings(
                base_model_id=settings.base_model_id,
                artifacts_dir=settings.artifacts_dir or Path(settings.data_dir) / "adapters",
                data_dir=Path(settings.data_dir),
                topic_adapter_updated=settings.topic_adapter_updated,
                sampler=sampler,
                budget=budget,
                training=AdapterTrainingConfig(steps=steps, batch_size=8, max_length=64),
            ),
        )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer = KafkaMessageProducer(settings.broker_bootstrap_servers)
    consumer = DriftConsumer(settings, make_worker, store, producer)
    try:
        outcomes = consumer.run(stop, max_events=max_events or None)
    except KeyboardInterrupt:
        outcomes = []
    finally:
        producer.close()
        events.close()
        store.dispose()
    for outcome in outcomes:
        typer.echo(f"{outcome.drift_id} {outcome.status} v{outcome.version} {outcome.reason}")


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
