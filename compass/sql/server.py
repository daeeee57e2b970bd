"""PostgreSQL: the server named by ``COMPASS_DATABASE_URL``, else an embedded ``pgserver``.

pgserver bundles PostgreSQL 16 and listens on a unix socket inside its data directory. As root it
creates a ``pgserver`` system user and chowns that directory, so it always gets a dedicated
folder (``<data_dir>/embedded/pg``) and never a shared one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL, Engine

from compass.config import DatabaseTimeouts, Settings, database_timeouts
from compass.core.errors import InfraError

log = structlog.get_logger(__name__)


@dataclass
class EmbeddedPostgres:
    """A pgserver instance in ``pgdata``; ``persistent`` keeps it running after this process."""

    pgdata: Path
    persistent: bool = False
    _server: Any = None

    def start(self) -> str:
        try:
            import pgserver
        except ImportError:
            raise InfraError(
                "no COMPASS_DATABASE_URL set and the embedded 'pgserver' package is missing"
            ) from None
        self.pgdata.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pgserver.get_server(
                self.pgdata, cleanup_mode=None if self.persistent else "stop"
            )
        except Exception as exc:
            raise InfraError(
                f"embedded PostgreSQL failed to start in {self.pgdata}: {exc}"
            ) from exc
        log.info("postgres.embedded_started", pgdata=str(self.pgdata))
        return self.url

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres:@/postgres?host={self.pgdata}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def embedded_pgdata(settings: Settings) -> Path:
    return (settings.embedded_dir / "pg").resolve()


def database_url(settings: Settings, *, start_embedded: bool = True) -> str:
    """The URL to use: the configured server, else the embedded one (started if needed)."""
    if settings.database_url:
        return settings.database_url
    embedded = EmbeddedPostgres(embedded_pgdata(settings), persistent=True)
    return embedded.start() if start_embedded else embedded.url


def make_db_engine(
    url: str,
    *,
    pre_ping: bool = True,
    timeouts: DatabaseTimeouts | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine on ``url`` whose connections cannot hang forever: ``timeouts`` (default: from
    the ``COMPASS_DATABASE_*`` variables, :class:`~compass.config.DatabaseTimeouts`) become libpq
    options — connect timeout, TCP keepalives, ``tcp_user_timeout`` and the session's
    ``statement_timeout`` (:func:`connect_options`). ``connect_args`` given by the caller win
    over them. ``pre_ping`` tests each connection at checkout (a round trip per transaction:
    the stream turns it off and retries a flush that meets a dead connection)."""
    options = connect_options(timeouts or database_timeouts(), url)
    options.update(kwargs.pop("connect_args", {}))
    return create_engine(url, pool_pre_ping=pre_ping, future=True, connect_args=options, **kwargs)


def connect_options(timeouts: DatabaseTimeouts, url: str) -> dict[str, Any]:
    """libpq connection parameters for ``timeouts`` (a value of 0 leaves its option out); the
    statement timeout goes into ``options`` after any ``options`` the URL already has."""
    out: dict[str, Any] = {}
    if timeouts.connect_timeout_s > 0:
        out["connect_timeout"] = max(2, timeouts.connect_timeout_s)  # libpq's minimum is 2
    if timeouts.keepalive_idle_s > 0:
        idle = timeouts.keepalive_idle_s
        out |= {
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": max(1, idle // 3),
            "keepalives_count": 3,
        }
    if timeouts.tcp_user_timeout_s > 0:
        out["tcp_user_timeout"] = max(1, round(timeouts.tcp_user_timeout_s * 1000))  # ms
    if timeouts.statement_timeout_s > 0:
        ms = max(1, round(timeouts.statement_timeout_s * 1000))
        given = make_url(url).query.get("options")
        given = given[-1] if isinstance(given, tuple) else given
        out["options"] = (
            f"{given} -c statement_timeout={ms}" if given else (f"-c statement_timeout={ms}")
        )
    return out


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def check_connection(url: str, timeout_s: int = 5) -> str:
    """Run a trivial query; return the server version or raise one clear :class:`InfraError`."""
    engine = make_db_engine(url, connect_args={"connect_timeout": max(2, timeout_s)})
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InfraError(f"cannot reach PostgreSQL at {describe_url(url)}: {first_line}") from None
    finally:
        engine.dispose()


_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def with_database(url: str, name: str) -> str:
    parsed: URL = make_url(url).set(database=name)
    return parsed.render_as_string(hide_password=False)


def _server_command(url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE refuse to run in one)."""
    engine = make_db_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def _checked_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise InfraError(f"invalid database name {name!r}")
    return name


def create_database(url: str, name: str | None = None) -> str:
    """Create a fresh database on the server of ``url``; return its URL (for tests, demos)."""
    name = _checked_name(name or f"compass_{uuid.uuid4().hex[:12]}")
    _server_command(url, f'CREATE DATABASE "{name}"')
    return with_database(url, name)


def drop_database(url: str, name: str) -> None:
    _server_command(url, f'DROP DATABASE IF EXISTS "{_checked_name(name)}" WITH (FORCE)')


@contextmanager
def temporary_database(url: str) -> Iterator[str]:
    """A fresh database on the server of ``url`` for the ``with`` block, dropped afterwards."""
    database = create_database(url)
    try:
        yield database
    finally:
        name = make_url(database).database
        assert name is not None
        drop_database(url, name)
