"""``compass infra up|down|status``: the embedded services as one stack."""

from __future__ import annotations

import typer

infra_app = typer.Typer(help="Start, stop and inspect the broker, database and vector store.")


@infra_app.command("up")
def infra_up() -> None:
    """Start the embedded services that are not configured, create the topics."""
    from compass.config import load_settings
    from compass.infra.stack import up

    state = up(load_settings())
    typer.echo(f"broker        {state.broker_bootstrap}")
    typer.echo(f"database      {state.database_url}")
    typer.echo(f"vector store  {state.vector_store}")


@infra_app.command("down")
def infra_down() -> None:
    """Stop the embedded services started from this data dir."""
    from compass.config import load_settings
    from compass.infra.stack import down

    stopped = down(load_settings())
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@infra_app.command("status")
def infra_status() -> None:
    """Say what each service is and whether it answers."""
    from compass.config import load_settings
    from compass.infra.stack import status

    for name, line in status(load_settings()).items():
        typer.echo(f"{name:<13} {line}")


@infra_app.command("topics")
def infra_topics() -> None:
    """Create the COMPASS topics on COMPASS_BROKER_BOOTSTRAP_SERVERS (partitions, replication
    factor, min.insync.replicas, adapter-updated compacted); existing ones are checked."""
    from compass.config import load_settings
    from compass.core.errors import ConfigError
    from compass.kafka.broker import ensure_topics, topic_specs

    settings = load_settings()
    if not settings.broker_bootstrap_servers:
        raise ConfigError("`compass infra topics` needs COMPASS_BROKER_BOOTSTRAP_SERVERS")
    specs = topic_specs(settings)
    created = ensure_topics(settings.broker_bootstrap_servers, specs)
    for spec in specs:
        state = "created" if spec.name in created else "exists"
        typer.echo(
            f"{spec.name:<20} {state:<8} partitions={spec.partitions} "
            f"replicas={spec.replication_factor} {spec.config or {}}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(infra_app, name="infra")
