"""Alembic environment for COMPASS.

The URL comes from ``config.attributes["url"]`` (set by :mod:`compass.sql.migrate`, i.e.
``compass db ...``), else ``sqlalchemy.url``, else ``COMPASS_DATABASE_URL``, else the embedded
pgserver. All migrations of one run share a transaction guarded by an advisory lock, so two
processes upgrading the same database at once run one after the other.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool, text

from compass.config import database_timeouts
from compass.sql.server import make_db_engine
from compass.sql.tables import metadata

MIGRATION_LOCK_KEY = 7_302_211_409  # arbitrary, constant: "compass migrations"

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from compass.config import load_settings
    from compass.sql.server import database_url

    return database_url(load_settings())


def run_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # no statement timeout: a migration may wait on the migration lock or build an index
    timeouts = database_timeouts().model_copy(update={"statement_timeout_s": 0.0})
    engine = make_db_engine(_url(), poolclass=pool.NullPool, timeouts=timeouts)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=metadata)  # type: ignore[arg-type]
    with context.begin_transaction():
        context.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
