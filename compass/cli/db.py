"""``compass db upgrade|downgrade|current|purge``: the schema and its retention.

The database is ``--database-url``, else ``COMPASS_DATABASE_URL``, else the embedded pgserver.
An unreachable database is one line on stderr and exit code 2 (a ``CompassError`` reaching
``compass.cli.main``).
"""

from __future__ import annotations

import typer

db_app = typer.Typer(help="Migrate the PostgreSQL schema and purge old rows.", no_args_is_help=True)

URL_OPTION = typer.Option(
    None,
    "--database-url",
    help="SQLAlchemy URL; default: COMPASS_DATABASE_URL, else the embedded pgserver.",
)


def _url(database_url: str | None) -> str:
    from compass.config import load_settings
    from compass.sql.server import database_url as resolve

    settings = load_settings(database_url=database_url) if database_url else load_settings()
    return resolve(settings)


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="Target revision (default: the newest)."),
    database_url: str | None = URL_OPTION,
) -> None:
    """Migrate the schema up (safe to run again: an up-to-date database is left as it is)."""
    from compass.sql.migrate import current, upgrade
    from compass.sql.server import describe_url

    url = _url(database_url)
    before = current(url)
    after = upgrade(url, revision)
    if before == after:
        typer.echo(f"{describe_url(url)}: already at {after}")
    else:
        typer.echo(f"{describe_url(url)}: {before or 'empty'} -> {after}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision ('base' removes every table)."),
    database_url: str | None = URL_OPTION,
) -> None:
    """Migrate the schema down to REVISION."""
    from compass.sql.migrate import current, downgrade
    from compass.sql.server import describe_url

    url = _url(database_url)
    before = current(url)
    after = downgrade(url, revision)
    typer.echo(f"{describe_url(url)}: {before or 'empty'} -> {after or 'base'}")


@db_app.command("current")
def db_current(database_url: str | None = URL_OPTION) -> None:
    """Print the revision the database is at and the newest one available."""
    from compass.sql.migrate import current, head

    now = current(_url(database_url))
    newest = head()
    state = "up to date" if now == newest else f"behind (newest is {newest})"
    typer.echo(f"{now or 'empty (never migrated)'}  {state}")


@db_app.command("purge")
def db_purge(
    older_than_days: float = typer.Option(
        ..., "--older-than-days", min=0.001, help="Delete rows older than this many days."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go, delete nothing."),
    database_url: str | None = URL_OPTION,
) -> None:
    """Retention: delete dedup rows (processed_events), usage_counts windows, dead_letters and
    published outbox rows older than N days, the vector-store points of events older than N
    days, and those events' texts quoted as drift sample texts (compass.retention). Keep N
    above the broker's retention, or a redelivered old event could be counted again."""
    from datetime import timedelta

    from compass.bootstrap import open_existing_vector_store, open_unit_of_work
    from compass.config import load_settings
    from compass.core.errors import ConfigError
    from compass.retention import purge_everywhere
    from compass.sql.migrate import current

    url = _url(database_url)
    if current(url) is None:
        raise ConfigError("the database has no COMPASS schema; run 'compass db upgrade' first")
    settings = load_settings(database_url=url)
    vectors = open_existing_vector_store(settings)
    try:
        with open_unit_of_work(settings, pool_size=1) as store:
            result = purge_everywhere(
                store, vectors, timedelta(days=older_than_days), dry_run=dry_run
            )
    finally:
        if vectors is not None:
            vectors.close()
    verb = "would delete" if dry_run else "deleted"
    for table in ("processed_events", "usage_counts", "dead_letters", "outbox"):
        typer.echo(f"{table:<17} {verb} {getattr(result.tables, table)}")
    typer.echo(f"{'vector points':<17} {verb} {result.vector_points}")
    typer.echo(f"{'sample texts':<17} {verb} from {result.sample_texts_scrubbed} drift rows")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
