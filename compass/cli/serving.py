"""``compass serve-sync`` (keep a serving engine in step with the live adapters) and
``compass routes`` (which adapter serves each language). See docs/serving.md."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from compass.core.errors import ConfigError


def serve_sync(
    engine: str | None = typer.Option(
        None, "--engine", help="peft | vllm | sglang (default: COMPASS_SERVING_ENGINE, peft)."
    ),
    engine_url: str | None = typer.Option(
        None, "--engine-url", help="vllm/sglang server URL (default: COMPASS_SERVING_ENGINE_URL)."
    ),
    max_rank: int | None = typer.Option(
        None, "--max-rank", min=1, help="The engine's largest LoRA rank (its --max-lora-rank)."
    ),
    grace: float | None = typer.Option(
        None, "--grace", min=0, help="Seconds before a replaced adapter is unloaded."
    ),
    port: int | None = typer.Option(
        None, "--port", min=0, help="Port of GET /routes (default: COMPASS_SERVING_PORT)."
    ),
    max_messages: int = typer.Option(0, min=0, help="Stop after this many messages (0: run)."),
    restore: bool = typer.Option(
        True, "--restore/--no-restore", help="Load the live adapters from the database first."
    ),
) -> None:
    """Subscribe to adapter-updated and hot-load each new adapter into the engine."""
    import signal
    import threading

    from compass.config import load_settings
    from compass.health import Heartbeat
    from compass.kafka.subscribe import subscribe_adapter_updated
    from compass.serving import EngineUnavailable, ServeSync, build_engine
    from compass.serving.live import read_live_adapters
    from compass.serving.routes_http import RoutesServer
    from compass.sql.server import database_url

    settings = load_settings()
    name = engine or settings.serving_engine
    url = engine_url or settings.serving_engine_url
    rank = max_rank or settings.serving_max_rank
    options: dict[str, object] = {"base_model": settings.base_model_id}
    if name == "peft":
        options["data_dir"] = Path(settings.data_dir)
    else:
        if not url:
            raise ConfigError(f"engine {name!r} needs --engine-url (or COMPASS_SERVING_ENGINE_URL)")
        options["engine_url"] = url
        options["base_model_revision"] = settings.serving_base_model_revision
        if not settings.serving_base_model_revision:
            typer.echo(
                "serve-sync: base model revision not set: revisions are not checked", err=True
            )
    if rank is not None:
        options["max_rank"] = rank
    if not settings.broker_bootstrap_servers:
        raise ConfigError("serve-sync needs COMPASS_BROKER_BOOTSTRAP_SERVERS")
    served = build_engine(name, **options)
    cache = settings.serving_cache_dir or Path(settings.data_dir) / "serving"
    sync = ServeSync(served, cache, grace_s=settings.serving_grace_s if grace is None else grace)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    heartbeat = Heartbeat(max_silence_s=60.0)
    ready = threading.Event()
    listen = settings.serving_port if port is None else port
    routes_server = None
    if listen:
        routes_server = RoutesServer(
            settings.serving_host, listen, sync.routes, alive=heartbeat, ready=ready.is_set
        ).start()
        typer.echo(f"serve-sync: GET http://{settings.serving_host}:{routes_server.port}/routes")
    try:
        if restore:
            sync.restore(read_live_adapters(database_url(settings), settings.base_model_id))
        ready.set()

        with subscribe_adapter_updated(
            settings.broker_bootstrap_servers,
            settings.serving_group_id,
            topic=settings.topic_adapter_updated,
        ) as subscription:
            for received in subscription.messages(stop=stop, max_messages=max_messages or None):
                heartbeat.beat()
                while True:  # an unreachable engine is retried, never refused
                    try:
                        sync.handle(received.event)
                        break
                    except EngineUnavailable as exc:
                        typer.echo(f"serve-sync: {exc}; retrying in 5 s", err=True)
                        if stop.wait(5.0):
                            raise KeyboardInterrupt from exc  # leave it uncommitted
    except KeyboardInterrupt:
        pass
    finally:
        if routes_server is not None:
            routes_server.stop()
        sync.close()
    typer.echo(json.dumps({"routes": sync.routes(), "applied": sync.stats.applied,
                           "refused": dict(sync.stats.refused)}))  # fmt: skip


def routes(
    base_model: str | None = typer.Option(
        None, help="Only this base model's adapters (default: COMPASS_BASE_MODEL_ID)."
    ),
) -> None:
    """Print the live adapter of each language as JSON: {language: adapter_name}."""
    from compass.config import load_settings
    from compass.serving.live import read_live_adapters
    from compass.sql.server import database_url

    settings = load_settings()
    live = read_live_adapters(database_url(settings), base_model or settings.base_model_id)
    typer.echo(json.dumps({m.language: m.adapter_name for m in live}, sort_keys=True))


def register(app: typer.Typer) -> None:
    app.command("serve-sync")(serve_sync)
    app.command("routes")(routes)
