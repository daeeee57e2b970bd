"""What the database says about the loop, read at scrape time for the Prometheus gauges
(:class:`compass.metrics.DatabaseCollector`): jobs by state, the outbox backlog and the age of
its oldest unpublished row. Two cheap queries (the backlog one uses the partial index on
unpublished rows)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine

from compass.metrics import DatabaseSnapshot


def read_snapshot(engine: Engine) -> DatabaseSnapshot:
    """Jobs by state, unpublished outbox rows and the oldest one's age in seconds (0: none)."""
    with engine.connect() as conn:
        jobs = {
            str(state): int(count)
            for state, count in conn.execute(
                text("SELECT status, count(*) FROM training_jobs GROUP BY status")
            )
        }
        backlog, age = conn.execute(
            text(
                "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) "
                "FROM outbox WHERE published_at IS NULL"
            )
        ).one()
    return DatabaseSnapshot(jobs, int(backlog), float(age))
