"""``compass streams``: run the stream worker (Faust) against configured or embedded services."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer


def streams(
    sample_rate: float | None = typer.Option(
        None, "--sample-rate", min=0.0001, max=1.0, help="Force the load-shedding sample rate."
    ),
    log_level: str | None = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING…"),
    semantic_map: Path | None = typer.Option(
        None, "--semantic-map", exists=True, dir_okay=False, help="Store and activate this map."
    ),
) -> None:
    """Consume prompt-events: embed, count, detect drift, emit drift-events (Ctrl-C stops)."""
    import faust

    from compass.bootstrap import ensure_semantic_map, prepare_services
    from compass.config import load_settings
    from compass.logs import configure_logging
    from streams.app import create_app
    from streams.runtime import arm_shutdown_watchdog

    overrides: dict[str, Any] = {}
    if sample_rate is not None:
        overrides["stream_sample_rate"] = sample_rate
    if log_level is not None:
        overrides["log_level"] = log_level.upper()
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    settings = prepare_services(settings)
    version = ensure_semantic_map(settings, semantic_map)
    typer.echo(
        f"streams: broker {settings.broker_bootstrap_servers}, topic "
        f"{settings.topic_prompt_events}, group {settings.stream_app_id}, semantic map v{version}",
        err=True,
    )
    app = create_app(settings)

    class _Worker(faust.Worker):
        """Faust's worker, plus a deadline on shutdown (it can hang on the broker)."""

        def _on_sigterm(self) -> None:
            arm_shutdown_watchdog()
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            arm_shutdown_watchdog()
            super()._on_sigint()

    level = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error"}
    # redirect_stdouts=False: our structured log lines go to stderr as they are, not re-logged
    # by mode under [WARNING] whatever their level (issue 16)
    worker = _Worker(
        app, loglevel=level.get(settings.log_level, "info"), quiet=True, redirect_stdouts=False
    )
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    worker.execute_from_commandline()


def register(app: typer.Typer) -> None:
    app.command("streams")(streams)
