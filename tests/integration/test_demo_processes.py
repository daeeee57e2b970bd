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
