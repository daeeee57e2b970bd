"""Read-only role ``compass_reader`` for analysts: SELECT on every table and view, nothing else.

Roles are cluster-wide while grants are per database, so the role is created only if missing
(and a concurrent creation by another database's migration is tolerated); it is NOLOGIN, and
people get it with ``GRANT compass_reader TO analyst``. Default privileges extend the grant to
tables that later migrations create. The downgrade revokes this database's grants but keeps the
role, which other databases may use. A migrating user without CREATEROLE gets a notice instead
of a failure (an administrator then creates the role and reruns the grants, see docs/sql.md).

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-10
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "compass_reader"


def upgrade() -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
                BEGIN
                    CREATE ROLE {ROLE} NOLOGIN;
                EXCEPTION
                    WHEN duplicate_object OR unique_violation THEN NULL;  -- created meanwhile
                    WHEN insufficient_privilege THEN
                        RAISE NOTICE 'no privilege to create role {ROLE}; skipped';
                END;
            END IF;
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
                EXECUTE format('GRANT USAGE ON SCHEMA %I TO {ROLE}', current_schema());
                EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {ROLE}',
                               current_schema());
                EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES '
                               'TO {ROLE}', current_schema());
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
                EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES '
                               'FROM {ROLE}', current_schema());
                EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {ROLE}',
                               current_schema());
                EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {ROLE}', current_schema());
            END IF;
        END $$;
        """
    )
