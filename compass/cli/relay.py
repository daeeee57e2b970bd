"""``compass relay``: publish committed outbox rows (drift events, adapter updates) to Kafka.

The stream app and the worker drain the outbox themselves after each commit; this process is
the safety net that publishes what a crash left behind, and the one that exports the database
gauges (jobs by state, outbox backlog and age) to Prometheus. Several may run: rows are locked
with ``SKIP LOCKED``.
"""

from __future__ import annotations

import typer


def relay(
    interval: float = typer.Option(1.0, min=0.05, help="Seconds between polls when idle."),
) -> None:
    """Relay the outbox until SIGTERM/Ctrl-C (metrics and health on COMPASS_METRICS_PORT)."""
    import signal
    import threading

    from compass import metrics
    from compass.bootstrap import open_publisher, open_unit_of_work, outbox_relay
    from compass.config import load_settings
    from compass.health import Heartbeat, serve
    from compass.sql.monitoring import read_snapshot

    settings = load_settings()
    store = open_unit_of_work(settings, pool_size=2)
    publisher = open_publisher(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    collector = metrics.watch_database(lambda: read_snapshot(store.engine))
    heartbeat = Heartbeat(max_silence_s=max(60.0, 10 * interval))
    health = serve(settings, alive=heartbeat, ready=lambda: not stop.is_set())
    relay_ = outbox_relay(store, publisher)
    typer.echo(f"relay: outbox -> {settings.broker_bootstrap_servers}", err=True)
    try:
        relay_.run(stop, idle_seconds=interval, on_round=heartbeat.beat)
    except KeyboardInterrupt:
        pass
    finally:
        if health is not None:
            health.stop()
        metrics.REGISTRY.unregister(collector)
        publisher.close()
        store.dispose()


def register(app: typer.Typer) -> None:
    app.command("relay")(relay)
