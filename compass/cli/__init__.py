"""The ``compass`` command line.

Commands live in ``compass/cli/<area>.py`` modules that each expose ``register(app)``; heavy
imports (torch, transformers, faust) happen inside the commands so ``compass --help`` stays fast.
A :class:`CompassError` becomes one red line and exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import typer

from compass import __version__
from compass.core.errors import CompassError

app = typer.Typer(
    name="compass",
    help="COMPASS: continual multilingual adapters driven by semantic usage drift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_COMMAND_MODULES = (
    "compass.cli.infra",
    "compass.cli.method",
    "compass.cli.db",
    "compass.cli.train",
    "compass.cli.streams",
    "compass.cli.worker",
    "compass.cli.demo",
    "compass.cli.schemas",  # issue 12
    "compass.cli.produce",  # issue 12
    "compass.cli.relay",  # issue 13
    "compass.cli.serving",  # issue 11: serve-sync, routes
    "compass.cli.adapters",  # issue 11: adapters list|show|rollback|pin|unpin|retire
    "compass.cli.report",  # issue 16: report (HTML + PNGs)
    "compass.cli.experiment",  # issue 15: experiment (v1), experiment prepare|analyse (v2)
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"compass {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the COMPASS version (the installed distribution's) and exit.",
    ),
) -> None:
    """COMPASS: continual multilingual adapters driven by semantic usage drift."""
    from compass.config import load_settings
    from compass.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)


@app.command()
def version() -> None:
    """Print the COMPASS version."""
    typer.echo(f"compass {__version__}")


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    try:
        app()
    except CompassError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
