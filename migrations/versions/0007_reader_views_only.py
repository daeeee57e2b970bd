"""The analysts' role reads the documented views only (issue 14): no raw table.

Until now ``compass_reader`` (migration 0003) could ``SELECT`` every table, so an analyst could
read what the views leave out on purpose: the original bytes and details of dead letters, outbox
payloads, dedup rows, semantic map centroids, lease holders. This migration revokes its ``SELECT``
on every table and view of the schema and the default privilege that extended it to new tables,
adds five views for what analysts need that only a raw table held — ``semantic_map_versions``,
``training_job_status``, ``dead_letter_log`` (no ``raw``, no ``detail``), ``outbox_status`` (no
payload) and ``adapter_lifecycle`` — and grants ``SELECT`` on the views listed in
:data:`READER_VIEWS` (all documented in docs/sql.md) and nothing else. A later migration that
adds a view for people grants it explicitly.

The views run with their owner's rights (PostgreSQL's default), so reading one needs no right on
its tables. Without the role (a migrating user without CREATEROLE, see 0003) the grants are
skipped with a notice, as in 0003. The downgrade drops the new views and restores 0003's grants.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "compass_reader"

NEW_VIEWS = {
    "semantic_map_versions": """
        SELECT version, content_hash, embedder_id, method, k, dim, metadata, active,
               created_at, activated_at
          FROM semantic_maps
    """,
    "training_job_status": """
        SELECT j.id AS job_id, j.drift_id, j.language, j.status, j.attempts, j.last_error,
               j.lease_until, j.lease_until < now() AS lease_expired, j.created_at,
               j.started_at, j.finished_at, a.base_model, v.number AS version
          FROM training_jobs j
          LEFT JOIN adapter_versions v ON v.id = j.version_id
          LEFT JOIN adapters a ON a.id = v.adapter_id
    """,
    "dead_letter_log": """
        SELECT id, source, partition, "offset", stage, reason, received_at, recorded_at
          FROM dead_letters
    """,
    "outbox_status": """
        SELECT id, topic, key, created_at, published_at
          FROM outbox
    """,
    "adapter_lifecycle": """
        SELECT e.id, a.language, a.base_model, e.adapter_id, e.version, e.action, e.reason,
               e.actor, e.created_at
          FROM adapter_events e
          JOIN adapters a ON a.id = e.adapter_id
    """,
}

READER_VIEWS = (
    "adapter_history",
    "drift_history",
    "language_distribution",
    "live_adapters",
    *NEW_VIEWS,
)
"""Every relation ``compass_reader`` may read: the documented views, nothing else."""


def _if_role(body: str) -> str:
    return f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
                {body}
            ELSE
                RAISE NOTICE 'role {ROLE} does not exist; grants skipped';
            END IF;
        END $$;
        """


def upgrade() -> None:
    for name, query in NEW_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")
    grants = " ".join(
        f"EXECUTE format('GRANT SELECT ON %I.{view} TO {ROLE}', current_schema());"
        for view in READER_VIEWS
    )
    op.execute(
        _if_role(
            f"""
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES '
                           'FROM {ROLE}', current_schema());
            EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {ROLE}',
                           current_schema());
            {grants}
            """
        )
    )


def downgrade() -> None:
    for name in reversed(list(NEW_VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute(
        _if_role(
            f"""
            EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {ROLE}', current_schema());
            EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES '
                           'TO {ROLE}', current_schema());
            """
        )
    )
