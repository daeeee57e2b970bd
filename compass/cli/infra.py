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


def register(app: typer.Typer) -> None:
    app.add_typer(infra_app, name="infra")
