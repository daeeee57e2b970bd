"""Fixtures shared by the reliability suite (issue 14).

Every test collected under ``tests/reliability/`` gets the ``reliability`` and ``integration``
markers, so the default run (``-m 'not slow and not gpu and not reliability'``) skips them and
``make test-reliability`` runs them.

- ``private_broker``: a Tansu broker of the test module alone, with its PID, so a test may pause it
  (SIGSTOP/SIGCONT) without disturbing any other test; never restarted (it keeps data in memory);
- ``pg_proxy``: a TCP proxy in front of the PostgreSQL server of ``pg_admin_url`` that a test can
  cut and restore — the machine's server itself is never stopped;
- ``fresh_database``: a new, migrated database per test, dropped afterwards;
- ``scenario_data``: gettext texts of three languages whose keys land on partitions 0, 1 and 2,
  their embeddings cached, and a semantic map fitted on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from compass.kafka.broker import EmbeddedBroker
from compass.sql.server import temporary_database
from tests.reliability.helpers import ScenarioData, TcpProxy, build_scenario_data

_HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def pg_proxy(pg_admin_url: str) -> Iterator[TcpProxy]:
    url = make_url(pg_admin_url)
    if not url.host or url.host.startswith("/"):
        pytest.skip("the PostgreSQL outage test needs a TCP server (COMPASS_DATABASE_URL)")
    proxy = TcpProxy(url.host, url.port or 5432).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def fresh_database(pg_admin_url: str) -> Iterator[str]:
    from compass.sql.migrate import upgrade

    with temporary_database(pg_admin_url) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def scenario_data(cache_dir: Path) -> ScenarioData:
    return build_scenario_data(cache_dir)
