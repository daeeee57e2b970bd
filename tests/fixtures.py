"""pytest fixtures on real components, the same everywhere (laptop, CI).

- ``broker_bootstrap``: a session-scoped Tansu broker (or ``COMPASS_BROKER_BOOTSTRAP_SERVERS``).
- ``pg_admin_url``: the PostgreSQL server (``COMPASS_DATABASE_URL``, else a session pgserver).
- ``database_url``: a fresh, empty database per test module, dropped afterwards.
- ``vector_store``: a fresh Qdrant Edge store (384-d) per test.
- ``cache_dir``: a persistent cache (models, embeddings) so repeated runs are fast:
  ``COMPASS_TEST_CACHE_DIR``, else ``<repository>/.data/test-cache`` (where
  scripts/install-test-tools.sh fetches the gettext catalogs; ``make clean`` removes it).
- gettext catalogs: fetched once into the cache (``compass data fetch --gettext``, also run by
  scripts/install-test-tools.sh) and named by ``COMPASS_GETTEXT_DIR`` for the whole session, so
  no test reads whatever catalogs the machine happens to have installed.

Register with ``pytest_plugins = ["tests.fixtures"]`` in a conftest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from compass.config import Settings
from compass.corpora.gettext_catalogs import gettext_locale_dir
from compass.kafka.broker import EmbeddedBroker
from compass.qdrant.store import QdrantEdgeStore, VectorStore
from compass.sql.server import EmbeddedPostgres, temporary_database

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("COMPASS_TEST_CACHE_DIR", REPO_ROOT / ".data" / "test-cache"))
os.environ.setdefault("COMPASS_GETTEXT_DIR", str(gettext_locale_dir(TEST_CACHE)))


@pytest.fixture(scope="session", autouse=True)
def gettext_catalogs() -> Path:
    """The catalogs tests and scenarios read (fetched into the test cache when missing; a
    failure to fetch is a warning here and a clear DataError in the tests that need them)."""
    import warnings

    from compass.core.errors import DataError
    from compass.corpora.gettext_catalogs import fetch_gettext

    folder = Path(os.environ["COMPASS_GETTEXT_DIR"])
    if folder == gettext_locale_dir(TEST_CACHE):
        try:
            fetch_gettext(TEST_CACHE)
        except DataError as exc:
            warnings.warn(f"gettext catalogs not fetched: {exc}", stacklevel=1)
    return folder


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Survives test runs: dequantised models and embedding caches live here."""
    path = TEST_CACHE
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def broker_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("COMPASS_BROKER_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    broker = EmbeddedBroker(log_path=log_path).start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("COMPASS_DATABASE_URL")
    if configured:
        yield Settings(database_url=configured).database_url or configured
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pgserver") / "pg")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@pytest.fixture(scope="module")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh empty database for one test module."""
    with temporary_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def vector_store(tmp_path: Path) -> Iterator[VectorStore]:
    store = QdrantEdgeStore(tmp_path / "qdrant", dim=384)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def settings(tmp_path: Path, broker_bootstrap: str, database_url: str) -> Settings:
    """Settings pointing at the test services, with a private data dir."""
    return Settings(
        data_dir=tmp_path / "data",
        broker_bootstrap_servers=broker_bootstrap,
        database_url=database_url,
    )


@pytest.fixture(scope="module")
def migrated_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database for one test module, migrated to the newest schema (``compass db
    upgrade``), dropped afterwards."""
    from compass.sql.migrate import upgrade

    with temporary_database(pg_admin_url) as url:
        upgrade(url)
        yield url
