"""Issue 14: no PostgreSQL connection can hang a worker forever. Every engine gets a connect
timeout, TCP keepalives, ``tcp_user_timeout`` and a ``statement_timeout``
(``COMPASS_DATABASE_*``, :class:`compass.config.DatabaseTimeouts`); a statement over the limit
is cancelled by the server with a transient error, which the stream retries (never a dead
letter). On the real server."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text

from compass.config import DatabaseTimeouts, load_settings
from compass.core.errors import ConfigError, is_transient
from compass.sql.server import connect_options, make_db_engine
from compass.sql.unit_of_work import open_store
from streams.stages import decode_messages
from tests.integration.test_poison import (
    Services,
    _dead,
    _event,
    _messages,
    _processor,
    _wrapped_uow,
    embedder,  # noqa: F401 (a fixture)
    s,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.integration


def test_connect_options_from_the_timeouts() -> None:
    timeouts = DatabaseTimeouts(
        connect_timeout_s=1, statement_timeout_s=2.5, tcp_user_timeout_s=20, keepalive_idle_s=30
    )
    url = "postgresql+psycopg://u@h:5432/d"
    assert connect_options(timeouts, url) == {
        "connect_timeout": 2,  # libpq's minimum
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
        "tcp_user_timeout": 20_000,
        "options": "-c statement_timeout=2500",
    }  # fmt: skip
    given = connect_options(timeouts, url + "?options=-c%20search_path%3Dx")["options"]
    assert given == "-c search_path=x -c statement_timeout=2500"  # the URL's options kept
    off = DatabaseTimeouts(
        connect_timeout_s=0, statement_timeout_s=0, tcp_user_timeout_s=0, keepalive_idle_s=0
    )
    assert connect_options(off, url) == {}


@pytest.mark.parametrize("value", ["-1", "soon", "1e9"])
def test_a_bad_timeout_is_one_clear_error_at_start(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPASS_DATABASE_STATEMENT_TIMEOUT_S", value)
    with pytest.raises(ConfigError, match="COMPASS_DATABASE_STATEMENT_TIMEOUT_S"):
        load_settings()


def test_every_connection_carries_the_options_and_a_long_statement_is_cancelled(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPASS_DATABASE_STATEMENT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("COMPASS_DATABASE_TCP_USER_TIMEOUT_S", "15")
    monkeypatch.setenv("COMPASS_DATABASE_KEEPALIVE_IDLE_S", "9")
    engine = make_db_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "500ms"
            driver = conn.connection.driver_connection
            assert driver is not None
            params = driver.info.get_parameters()
            assert (params["keepalives_idle"], params["keepalives_interval"]) == ("9", "3")
            assert params["tcp_user_timeout"] == "15000"
            assert conn.execute(text("SELECT pg_sleep(0.1)")).all()  # under the limit: fine
        started = time.monotonic()
        with engine.connect() as conn, pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            conn.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 3
        assert getattr(caught.value.orig, "sqlstate", None) == "57014"
        assert "statement timeout" in str(caught.value)
        assert is_transient(caught.value)
    finally:
        engine.dispose()


def test_a_statement_over_the_limit_is_retried_by_the_stream_never_dead_lettered(
    s: Services,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The count step's transaction meets the timeout (a real ``pg_sleep`` on its connection):
    the batch raises a transient error (the runtime retries it with back-off), no event is
    dead-lettered, and the retry, once the database answers in time, counts every event."""
    monkeypatch.setenv("COMPASS_DATABASE_STATEMENT_TIMEOUT_S", "0.5")
    slow = [True]

    def usage(real: Any) -> dict[str, Callable[..., Any]]:
        def record_usage_checked(observations: Sequence[Any]) -> Any:
            if slow[0]:
                real._conn.execute(text("SELECT pg_sleep(3)"))
            return real.record_usage_checked(observations)

        return {"record_usage_checked": record_usage_checked}

    with open_store(s.store.url) as store:
        processor = _processor(s, uow_factory=_wrapped_uow(store, usage=usage))
        decoded = decode_messages(
            _messages([_event(i) for i in range(6)]), max_text_chars=8000, max_event_bytes=64_000
        )
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            processor.process(decoded)
        assert is_transient(caught.value)
        assert _dead(s) == []
        slow[0] = False
        assert processor.process(decoded).n_counted == 6
