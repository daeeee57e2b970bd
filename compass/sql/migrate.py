"""Run the Alembic migrations from Python: ``upgrade(url)``, ``downgrade(url, rev)``,
``current(url)``; the ``compass db`` commands and the test fixtures call these.

The migration scripts live in ``migrations/`` at the repository root (next to ``alembic.ini``),
so plain ``alembic upgrade head`` with ``COMPASS_DATABASE_URL`` set works too. An unreachable
database becomes one :class:`~compass.core.errors.InfraError` line, checked before Alembic starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from compass.core.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

log = structlog.get_logger(__name__)
# Alembic narrates every plugin it loads and every step at INFO; callers print their own summary.
logging.getLogger("alembic").setLevel(logging.WARNING)

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "migrations"
ALEMBIC_INI = REPO_ROOT / "alembic.ini"


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` bound to ``url``."""
    from alembic.config import Config

    if not MIGRATIONS_DIR.is_dir():
        raise ConfigError(f"migration scripts not found at {MIGRATIONS_DIR}")
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    config.attributes["skip_logging"] = True
    return config


def head() -> str:
    """The newest revision of the migration scripts."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://unused/"))
    revision = script.get_current_head()
    if revision is None:
        raise ConfigError("no migration scripts found")
    return revision


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate ``url`` up to ``revision``; returns the revision it is at afterwards."""
    from alembic import command

    return _migrate(url, revision, command.upgrade, "db.upgraded")


def downgrade(url: str, revision: str) -> str | None:
    """Migrate ``url`` down to ``revision`` (``base`` removes every COMPASS table)."""
    from alembic import command

    return _migrate(url, revision, command.downgrade, "db.downgraded")


def _migrate(
    url: str, revision: str, step: Callable[[Config, str], None], event: str
) -> str | None:
    from compass.sql.server import check_connection

    check_connection(url)
    step(alembic_config(url), revision)
    now = current(url)
    log.debug(event, revision=now)
    return now


def current(url: str) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    from compass.sql.server import check_connection, make_db_engine

    check_connection(url)
    engine = make_db_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
