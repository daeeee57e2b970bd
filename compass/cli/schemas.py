"""``compass schemas``: regenerate (or check) the published JSON Schemas and AsyncAPI document."""

from __future__ import annotations

from pathlib import Path

import typer


def schemas(
    root: Path = typer.Option(
        Path("."), "--root", file_okay=False, help="Repository root the docs/ paths are under."
    ),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if a file differs from the event models."
    ),
) -> None:
    """Write docs/schemas/*.schema.json and docs/asyncapi.yaml from compass/core/events.py."""
    from compass.contracts import check_files, write_files

    if check:
        stale = check_files(root)
        for path in stale:
            typer.echo(f"stale: {path} (run `compass schemas`)", err=True)
        if stale:
            raise typer.Exit(1)
        typer.echo("schemas: up to date")
        return
    changed = write_files(root)
    for path in changed:
        typer.echo(f"wrote {path}")
    if not changed:
        typer.echo("schemas: up to date")


def register(app: typer.Typer) -> None:
    app.command("schemas")(schemas)
