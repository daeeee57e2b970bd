"""The demo stops every process it started — on Ctrl-C, on SIGTERM and on errors (issue 16,
part 1) — and reads their state from their /metrics endpoints. A real ``compass relay``
process against the test broker and database."""

from __future__ import annotations

import os
import signal
import time

import pytest

from compass.config import Settings
from compass.lab.demo_processes import ProcessGroup, sigterm_as_interrupt
from compass.lab.demo_state import scrape
from compass.sql.migrate import upgrade


def _wait_for_metrics(url: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape(url, timeout_s=2)
        if samples:
            return samples
        time.sleep(0.5)
    raise AssertionError(f"no metrics at {url}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["sigterm", "error"])
def test_children_are_stopped_on_interrupt_and_error(settings: Settings, how: str) -> None:
    assert settings.database_url is not None
    upgrade(settings.database_url)
    group = ProcessGroup(settings, settings.data_dir / "logs")
    raised: type[BaseException] = KeyboardInterrupt if how == "sigterm" else RuntimeError
    with pytest.raises(raised), sigterm_as_interrupt(), group:
        child = group.start("relay", "relay")
        samples = _wait_for_metrics(child.metrics_url)
        assert any(name.startswith("compass_outbox") for name, _ in samples)
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises KeyboardInterrupt before this ends
        raise RuntimeError("a step of the demo failed")
    assert child.process.returncode is not None
    assert _gone(child.process.pid)
    assert not group.running("relay")
    assert (settings.data_dir / "logs" / "relay.log").stat().st_size > 0


def test_reset_leaves_nothing_of_an_earlier_run(settings: Settings) -> None:
    """A second demo on the same data directory starts from a clean slate (issue 16, part 8):
    the earlier run's rows, vector collection, adapters and logs are gone. On a database named
    by COMPASS_DATABASE_URL this needs --reset; without it, one clear error and nothing cleared."""
    from sqlalchemy import text

    from compass.core.errors import ConfigError
    from compass.lab.demo import demo_dir, demo_settings, reset_demo
    from compass.sql.server import make_db_engine

    assert settings.database_url is not None
    demo = demo_settings(settings, "leftover")
    upgrade(settings.database_url)
    engine = make_db_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dead_letters (source, stage, reason, raw, received_at) "
                "VALUES ('prompt-events', 'decode', 'invalid_json', '\\x00', now())"
            )
        )
        conn.execute(text("INSERT INTO outbox (topic, key, payload) VALUES ('t', 'fr', '{}')"))
    leftovers = [
        demo.embedded_dir / "qdrant" / demo.qdrant_collection / "segment",
        demo_dir(demo) / "adapters" / "fr" / "adapter_model.safetensors",
        demo_dir(demo) / "logs" / "streams.log",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("from the previous run")

    def rows() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM dead_letters) + (SELECT count(*) FROM outbox)"
                    )
                ).scalar_one()
            )

    with pytest.raises(ConfigError, match="--reset"):
        reset_demo(demo, configured_database=True, reset=False)
    assert rows() == 2 and all(path.exists() for path in leftovers)
    reset_demo(demo, configured_database=True, reset=True)
    assert rows() == 0
    assert not any(path.exists() for path in leftovers)
    engine.dispose()
