"""Migrations on a real PostgreSQL: up, down, up again; the models match what they build; the
``compass db`` commands on empty, up-to-date and unreachable databases; concurrent runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from compass.cli import app
from compass.sql import migrate
from compass.sql.server import make_db_engine, temporary_database
from compass.sql.tables import metadata

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "semantic_maps",
    "usage_counts",
    "processed_events",
    "drift_events",
    "adapters",
    "adapter_versions",
    "training_jobs",
    "outbox",
    "dead_letters",
}
HEAD_TABLES = TABLES | {"adapter_events"}  # migration 0005 (issue 11)
VIEWS = {"adapter_history", "drift_history", "language_distribution", "live_adapters"}
HEAD_VIEWS = VIEWS | {  # migration 0007 (issue 14)
    "semantic_map_versions", "training_job_status", "dead_letter_log", "outbox_status",
    "adapter_lifecycle",
}  # fmt: skip


def objects(url: str) -> tuple[set[str], set[str]]:
    engine = make_db_engine(url)
    try:
        inspector = inspect(engine)
        return set(inspector.get_table_names()) - {"alembic_version"}, set(
            inspector.get_view_names()
        )
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    assert migrate.current(database_url) is None
    assert migrate.upgrade(database_url) == migrate.head()
    assert objects(database_url) == (HEAD_TABLES, HEAD_VIEWS)
    for revision, (tables, views) in [
        ("0005", (HEAD_TABLES, VIEWS)),
        ("0002", (TABLES, VIEWS)),
        ("0001", (TABLES, set())),
        ("base", (set(), set())),
    ]:
        now = migrate.downgrade(database_url, revision)
        assert now == (None if revision == "base" else revision)
        assert objects(database_url) == (tables, views)
    engine = make_db_engine(database_url)
    try:
        with engine.connect() as conn:
            functions = conn.execute(
                text("SELECT count(*) FROM pg_proc WHERE proname LIKE 'compass\\_%'")
            ).scalar_one()
        assert functions == 0  # the downgrade took the trigger functions too
    finally:
        engine.dispose()
    assert migrate.upgrade(database_url, "0001") == "0001"
    assert migrate.upgrade(database_url) == migrate.head()
    assert objects(database_url) == (HEAD_TABLES, HEAD_VIEWS)


def _reader_may_select(url: str) -> dict[str, bool]:
    engine = make_db_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.relname, has_table_privilege('compass_reader', c.oid, 'SELECT') "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v')"
                )
            ).all()
        return {str(name): bool(may) for name, may in rows}
    finally:
        engine.dispose()


def test_the_reader_role_reads_views_only_from_0007_and_everything_before(
    database_url: str,
) -> None:
    """0007 takes ``SELECT`` on every table from ``compass_reader`` and grants it on the views;
    its downgrade gives the 0003 grants back (every table and view readable)."""
    migrate.upgrade(database_url)
    head = _reader_may_select(database_url)
    assert {n for n, may in head.items() if may} == HEAD_VIEWS
    migrate.downgrade(database_url, "0006")
    assert all(_reader_may_select(database_url).values())
    migrate.upgrade(database_url)
    assert _reader_may_select(database_url) == head


def test_models_match_the_migrations(migrated_database_url: str) -> None:
    engine = make_db_engine(migrated_database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == []


@pytest.fixture
def empty_database(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url) as url:
        yield url


def test_cli_upgrade_on_empty_and_up_to_date_database(empty_database: str) -> None:
    database_url = empty_database
    runner = CliRunner()
    first = runner.invoke(app, ["db", "upgrade", "--database-url", database_url])
    assert first.exit_code == 0, first.output
    assert f"empty -> {migrate.head()}" in first.output
    second = runner.invoke(app, ["db", "upgrade", "--database-url", database_url])
    assert second.exit_code == 0, second.output
    assert f"already at {migrate.head()}" in second.output
    status = runner.invoke(app, ["db", "current", "--database-url", database_url])
    assert status.exit_code == 0 and "up to date" in status.output
    purge = runner.invoke(
        app, ["db", "purge", "--older-than-days", "30", "--dry-run", "--database-url", database_url]
    )
    assert purge.exit_code == 0 and "usage_counts      would delete 0" in purge.output


def _compass(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compass.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "current"]])
def test_cli_on_unreachable_database_prints_one_line(command: list[str]) -> None:
    result = _compass(
        *command, env={"COMPASS_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/compass"}
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach PostgreSQL at") and "127.0.0.1:9" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def fresh_databases(pg_admin_url: str) -> Iterator[list[str]]:
    with temporary_database(pg_admin_url) as first, temporary_database(pg_admin_url) as second:
        yield [first, second]


def test_concurrent_upgrades_of_several_databases_and_of_one(fresh_databases: list[str]) -> None:
    """The reader role is cluster-wide: databases migrating at once must not trip over it; two
    processes migrating the same database queue on the advisory lock."""
    targets = [*fresh_databases, fresh_databases[0]]
    code = "import sys; from compass.sql.migrate import upgrade; print(upgrade(sys.argv[1]))"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, url],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url in targets
    ]
    outputs = [p.communicate(timeout=180) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert out.strip().splitlines()[-1] == migrate.head()
    for url in fresh_databases:
        assert objects(url) == (HEAD_TABLES, HEAD_VIEWS)
