"""Run the Alembic migrations from Python: ``upgrade(url)``, ``downgrade(url, rev)``,
``current(url)``; the ``compass db`` commands and the test fixtures call these.

The migration scripts live in ``migrations/`` at the repository root; the wheel ships the same
folder as ``compass/_migrations`` (``[tool.setuptools] package-dir`` in pyproject.toml), so an
installed COMPASS migrates without a checkout. The Alembic configuration is built here, in code:
``alembic.ini`` is only for developers running plain ``alembic`` commands in the checkout. An
unreachable database becomes one :class:`~compass.core.errors.InfraError` line, checked before
Alembic starts.
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

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Where the scripts are, in order: inside an installed wheel, then in the checkout (a plain
# checkout on sys.path or an editable install, whose ``compass/`` is the checkout's).
MIGRATION_DIRS = (_PACKAGE_DIR / "_migrations", _PACKAGE_DIR.parent / "migrations")


def migrations_dir() -> Path:
    """The folder holding ``env.py`` and ``versions/`` (installed wheel first, else checkout).

    Raises:
        ConfigError: neither place has the scripts (a broken install).
    """
    for candidate in MIGRATION_DIRS:
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    places = ", ".join(str(p) for p in MIGRATION_DIRS)
    raise ConfigError(f"migration scripts not found (looked in {places})")


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` bound to ``url``, built without an ini file."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
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
