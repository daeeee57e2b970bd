"""Start, find and stop the embedded services as one stack (``compass infra up|down|status``).

Services outlive the command that starts them: the broker runs in its own process session, and
pgserver keeps running after we exit. What is running is recorded in
``<data_dir>/embedded/state.json`` so later commands (the demo, ``compass streams``) reuse it.
Services that are configured through ``COMPASS_`` settings are used as they are, never started.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog
from sqlalchemy.engine import make_url

from compass.config import Settings
from compass.core.errors import InfraError
from compass.infra.net import wait_for_port
from compass.kafka.broker import (
    EmbeddedBroker,
    ensure_topics,
    pid_alive,
    stop_pid,
    topic_specs,
)
from compass.sql.server import EmbeddedPostgres, check_connection, describe_url, embedded_pgdata

log = structlog.get_logger(__name__)


@dataclass
class StackState:
    broker_bootstrap: str
    broker_pid: int | None
    database_url: str
    vector_store: str

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None


def state_path(settings: Settings) -> Path:
    return settings.embedded_dir / "state.json"


def _running_broker(state: StackState | None) -> str | None:
    if state is None or state.broker_pid is None or not pid_alive(state.broker_pid):
        return None
    host, port = state.broker_bootstrap.rsplit(":", 1)
    return state.broker_bootstrap if wait_for_port(host, int(port), 1.0) else None


def up(settings: Settings) -> StackState:
    """Make every service reachable (starting embedded ones as needed) and create the topics."""
    previous = StackState.load(state_path(settings))
    broker_pid: int | None = None
    if settings.broker_bootstrap_servers:
        bootstrap = settings.broker_bootstrap_servers
        # a child process handed the embedded broker's address must not forget who owns it
        if previous is not None and previous.broker_bootstrap == bootstrap:
            broker_pid = previous.broker_pid
    elif (running := _running_broker(previous)) is not None:
        bootstrap, broker_pid = running, previous.broker_pid if previous else None
    else:
        broker = EmbeddedBroker(log_path=settings.embedded_dir / "broker.log")
        broker.start(detach=True)
        bootstrap, broker_pid = broker.bootstrap_servers, broker.pid
    ensure_topics(bootstrap, topic_specs(settings))

    if settings.database_url:
        database = settings.database_url
    else:
        database = EmbeddedPostgres(embedded_pgdata(settings), persistent=True).start()
    check_connection(database)

    vector_store = settings.qdrant_url or str(
        (settings.embedded_dir / "qdrant" / settings.qdrant_collection).resolve()
    )
    # the state file and the log never hold a password: a configured URL is kept redacted (its
    # users read it from their settings again), the embedded server's has none
    shown = describe_url(database) if make_url(database).password else database
    state = StackState(bootstrap, broker_pid, shown, vector_store)
    state.save(state_path(settings))
    log.info("infra.up", broker=bootstrap, database=shown, vector_store=vector_store)
    return state


def with_services(settings: Settings) -> Settings:
    """``settings`` with every service filled in (embedded ones started when unset)."""
    state = up(settings)
    return settings.model_copy(
        update={
            "broker_bootstrap_servers": state.broker_bootstrap,
            "database_url": settings.database_url or state.database_url,
        }
    )


def status(settings: Settings) -> dict[str, str]:
    state = StackState.load(state_path(settings))
    report: dict[str, str] = {}
    if settings.broker_bootstrap_servers:
        report["broker"] = f"configured {settings.broker_bootstrap_servers}"
    else:
        running = _running_broker(state)
        report["broker"] = f"embedded, running at {running}" if running else "embedded, stopped"
    database = settings.database_url or (
        f"postgresql+psycopg://postgres:@/postgres?host={embedded_pgdata(settings)}"
    )
    kind = "configured" if settings.database_url else "embedded"
    try:
        version = check_connection(database, timeout_s=2)
        report["database"] = f"{kind}, PostgreSQL {version}"
    except InfraError:
        report["database"] = f"{kind}, not reachable"
    report["vector_store"] = (
        f"qdrant server {settings.qdrant_url}"
        if settings.qdrant_url
        else f"qdrant edge at {settings.embedded_dir / 'qdrant'}"
    )
    return report


def down(settings: Settings) -> list[str]:
    """Stop the embedded services this data dir started; configured ones are left alone."""
    stopped: list[str] = []
    state = StackState.load(state_path(settings))
    if state is not None and state.broker_pid and pid_alive(state.broker_pid):
        stop_pid(state.broker_pid, grace_s=1.0)
        stopped.append(f"broker (pid {state.broker_pid})")
    pgdata = embedded_pgdata(settings)
    if (pgdata / "postmaster.pid").exists():
        _stop_pgserver(pgdata)
        stopped.append(f"postgres ({pgdata})")
    with contextlib.suppress(FileNotFoundError):
        state_path(settings).unlink()
    return stopped


def _stop_pgserver(pgdata: Path) -> None:
    import pgserver

    user = "pgserver" if os.geteuid() == 0 else None
    try:
        stop = pgserver.pg_ctl  # type: ignore[attr-defined]
        stop(["-w", "stop"], pgdata=pgdata, **({"user": user} if user else {}))
    except Exception as exc:
        raise InfraError(f"could not stop embedded PostgreSQL in {pgdata}: {exc}") from exc
