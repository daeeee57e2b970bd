"""Core tables: semantic maps, usage counts, event dedup, drift events, adapters and their
versions, training jobs, outbox, dead letters; plus the triggers that number adapter versions
and keep them immutable.

Revision ID: 0001
Revises:
Create Date: 2026-01-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def _jsonb(name: str, default: str = "'{}'::jsonb") -> sa.Column:
    return sa.Column(name, pg.JSONB(), nullable=False, server_default=sa.text(default))


def upgrade() -> None:
    op.create_table(
        "semantic_maps",
        sa.Column("version", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("embedder_id", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("centroids", sa.LargeBinary(), nullable=False),
        _jsonb("metadata"),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("activated_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("version", name="pk_semantic_maps"),
        sa.UniqueConstraint("content_hash", name="uq_semantic_maps_content_hash"),
        sa.CheckConstraint("k > 0 AND dim > 0", name="ck_semantic_maps_shape"),
        sa.CheckConstraint(
            "octet_length(centroids) = k * dim * 4", name="ck_semantic_maps_centroid_bytes"
        ),
    )
    op.create_index(
        "ix_semantic_maps_one_active",
        "semantic_maps",
        ["active"],
        unique=True,
        postgresql_where=sa.text("active"),
    )

    op.create_table(
        "usage_counts",
        sa.Column("language", sa.Text(), nullable=False),
        sa.Column("window_start", TZ, nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("semantic_map_version", sa.Integer(), nullable=False),
        sa.Column("cluster", sa.Integer(), nullable=False),
        sa.Column("total_count", sa.Numeric(), nullable=False, server_default=sa.text("0")),
        sa.Column("sampled_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint(
            "language",
            "window_start",
            "window_seconds",
            "semantic_map_version",
            "cluster",
            name="pk_usage_counts",
        ),
        sa.ForeignKeyConstraint(
            ["semantic_map_version"],
            ["semantic_maps.version"],
            name="fk_usage_counts_semantic_map_version_semantic_maps",
        ),
        sa.CheckConstraint("cluster >= -1", name="ck_usage_counts_cluster"),
        sa.CheckConstraint("window_seconds > 0", name="ck_usage_counts_window_seconds"),
        sa.CheckConstraint(
            "total_count >= 0 AND sampled_count >= 0", name="ck_usage_counts_counts"
        ),
    )
    op.create_index(
        "ix_usage_counts_window_start_brin",
        "usage_counts",
        ["window_start"],
        postgresql_using="brin",
    )

    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("processed_at", TZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("event_id", name="pk_processed_events"),
    )
    op.create_index(
        "ix_processed_events_processed_at_brin",
        "processed_events",
        ["processed_at"],
        postgresql_using="brin",
    )

    op.create_table(
        "drift_events",
        sa.Column("drift_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("language", sa.Text(), nullable=False),
        sa.Column("window_start", TZ, nullable=False),
        sa.Column("window_end", TZ, nullable=False),
        sa.Column("statistic", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("p_value", sa.Double(), nullable=True),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.Column("n_sampled", sa.Integer(), nullable=False),
        sa.Column("semantic_map_version", sa.Integer(), nullable=True),
        sa.Column("reference_version", sa.Integer(), nullable=True),
        _jsonb("top_cluster_changes", "'[]'::jsonb"),
        sa.Column("detected_at", TZ, nullable=False),
        sa.Column("recorded_at", TZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("drift_id", name="pk_drift_events"),
        sa.UniqueConstraint(
            "language", "window_start", name="uq_drift_events_language_window_start"
        ),
        sa.ForeignKeyConstraint(
            ["semantic_map_version"],
            ["semantic_maps.version"],
            name="fk_drift_events_semantic_map_version_semantic_maps",
        ),
        sa.CheckConstraint("window_end > window_start", name="ck_drift_events_window"),
        sa.CheckConstraint("statistic >= 0 AND threshold >= 0", name="ck_drift_events_statistic"),
        sa.CheckConstraint("n_events >= 0 AND n_sampled >= 0", name="ck_drift_events_n_events"),
    )
    op.create_index(
        "ix_drift_events_language_detected_at", "drift_events", ["language", "detected_at"]
    )

    op.create_table(
        "adapters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("language", sa.Text(), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_adapters"),
        sa.UniqueConstraint("language", "base_model", name="uq_adapters_language_base_model"),
        sa.CheckConstraint("last_version >= 0", name="ck_adapters_last_version"),
    )

    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("adapter_id", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'candidate'")),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("artifact_sha256", sa.Text(), nullable=False),
        sa.Column("sampler", sa.Text(), nullable=False),
        _jsonb("sampler_params"),
        _jsonb("reference_distribution"),
        _jsonb("metrics"),
        sa.Column("drift_id", pg.UUID(as_uuid=True), nullable=True),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("base_model_revision", sa.Text(), nullable=False, server_default=sa.text("''")),
        _jsonb("manifest"),
        _jsonb("peft_config"),
        sa.Column("training_seconds", sa.Numeric(12, 3), nullable=True),
        sa.Column("evaluation_seconds", sa.Numeric(12, 3), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("activated_at", TZ, nullable=True),
        sa.Column("retired_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_adapter_versions"),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name="fk_adapter_versions_adapter_id_adapters"
        ),
        sa.ForeignKeyConstraint(
            ["drift_id"],
            ["drift_events.drift_id"],
            name="fk_adapter_versions_drift_id_drift_events",
        ),
        sa.UniqueConstraint("adapter_id", "number", name="uq_adapter_versions_adapter_id_number"),
        sa.UniqueConstraint("drift_id", name="uq_adapter_versions_drift_id"),
        sa.ForeignKeyConstraint(
            ["adapter_id", "parent_version"],
            ["adapter_versions.adapter_id", "adapter_versions.number"],
            name="fk_adapter_versions_parent",
        ),
        sa.CheckConstraint("number > 0", name="ck_adapter_versions_number"),
        sa.CheckConstraint(
            "status IN ('candidate', 'active', 'rejected', 'retired')",
            name="ck_adapter_versions_status",
        ),
        sa.CheckConstraint("artifact_sha256 ~ '^[0-9a-f]{64}$'", name="ck_adapter_versions_sha256"),
        sa.CheckConstraint(
            "parent_version IS NULL OR parent_version < number", name="ck_adapter_versions_parent"
        ),
        sa.CheckConstraint(
            "status <> 'active' OR activated_at IS NOT NULL", name="ck_adapter_versions_activated"
        ),
    )
    op.create_index(
        "ix_adapter_versions_one_active",
        "adapter_versions",
        ["adapter_id"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
    )

    op.create_table(
        "training_jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("drift_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("language", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'queued'")),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("lease_until", TZ, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("version_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_training_jobs"),
        sa.UniqueConstraint("drift_id", name="uq_training_jobs_drift_id"),
        sa.ForeignKeyConstraint(
            ["drift_id"], ["drift_events.drift_id"], name="fk_training_jobs_drift_id_drift_events"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name="fk_training_jobs_version_id_adapter_versions",
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name="ck_training_jobs_status",
        ),
        sa.CheckConstraint(
            "status <> 'running' OR (worker IS NOT NULL AND lease_until IS NOT NULL)",
            name="ck_training_jobs_lease",
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_training_jobs_attempts"),
    )
    op.create_index(
        "ix_training_jobs_claimable",
        "training_jobs",
        ["created_at"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("payload", pg.JSONB(), nullable=False),
        sa.Column("created_at", TZ, nullable=False, server_default=NOW),
        sa.Column("published_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.create_index(
        "ix_outbox_published_at",
        "outbox",
        ["published_at"],
        postgresql_where=sa.text("published_at IS NOT NULL"),
    )

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("recorded_at", TZ, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
    )
    op.create_index(
        "ix_dead_letters_source_position",
        "dead_letters",
        ["source", "partition", "offset"],
        unique=True,
        postgresql_where=sa.text('partition IS NOT NULL AND "offset" IS NOT NULL'),
    )
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"])
    op.create_index("ix_dead_letters_reason", "dead_letters", ["reason"])

    # Version numbers come from the adapter's counter, in the inserting transaction: the UPDATE
    # locks the adapter row until commit (concurrent writers queue) and a rollback undoes it,
    # so numbers are consecutive whoever writes the row.
    op.execute(
        """
        CREATE FUNCTION compass_number_adapter_version() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE next_number integer;
        BEGIN
            UPDATE adapters SET last_version = last_version + 1
             WHERE id = NEW.adapter_id
            RETURNING last_version INTO next_number;
            IF next_number IS NULL THEN
                RAISE EXCEPTION 'adapter % does not exist', NEW.adapter_id
                    USING ERRCODE = 'foreign_key_violation';
            END IF;
            IF NEW.number IS NOT NULL AND NEW.number <> next_number THEN
                RAISE EXCEPTION 'adapter % version must be % (got %)',
                    NEW.adapter_id, next_number, NEW.number
                    USING ERRCODE = 'check_violation';
            END IF;
            NEW.number := next_number;
            RETURN NEW;
        END $$;
        """
    )
    op.execute(
        """
        CREATE TRIGGER adapter_versions_number BEFORE INSERT ON adapter_versions
        FOR EACH ROW EXECUTE FUNCTION compass_number_adapter_version();
        """
    )
    # A stored version is immutable except for its lifecycle (status and its timestamps), and
    # its status moves only forward: candidate -> active | rejected, active -> retired,
    # retired -> active (a rollback to an earlier version).
    op.execute(
        """
        CREATE FUNCTION compass_guard_adapter_version() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                RAISE EXCEPTION 'adapter versions are immutable: cannot delete %/%',
                    OLD.adapter_id, OLD.number USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            IF (NEW.id, NEW.adapter_id, NEW.number, NEW.artifact_uri, NEW.artifact_sha256,
                NEW.sampler, NEW.sampler_params, NEW.reference_distribution, NEW.metrics,
                NEW.drift_id, NEW.parent_version, NEW.base_model_revision, NEW.manifest,
                NEW.peft_config, NEW.training_seconds, NEW.evaluation_seconds, NEW.created_at)
               IS DISTINCT FROM
               (OLD.id, OLD.adapter_id, OLD.number, OLD.artifact_uri, OLD.artifact_sha256,
                OLD.sampler, OLD.sampler_params, OLD.reference_distribution, OLD.metrics,
                OLD.drift_id, OLD.parent_version, OLD.base_model_revision, OLD.manifest,
                OLD.peft_config, OLD.training_seconds, OLD.evaluation_seconds, OLD.created_at)
            THEN
                RAISE EXCEPTION 'adapter versions are immutable: only status may change'
                    USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
                   (OLD.status = 'candidate' AND NEW.status IN ('active', 'rejected'))
                OR (OLD.status = 'active' AND NEW.status = 'retired')
                OR (OLD.status = 'retired' AND NEW.status = 'active'))
            THEN
                RAISE EXCEPTION 'adapter version status cannot go from % to %',
                    OLD.status, NEW.status USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$;
        """
    )
    op.execute(
        """
        CREATE TRIGGER adapter_versions_immutable BEFORE UPDATE OR DELETE ON adapter_versions
        FOR EACH ROW EXECUTE FUNCTION compass_guard_adapter_version();
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS adapter_versions_immutable ON adapter_versions")
    op.execute("DROP TRIGGER IF EXISTS adapter_versions_number ON adapter_versions")
    op.execute("DROP FUNCTION IF EXISTS compass_guard_adapter_version()")
    op.execute("DROP FUNCTION IF EXISTS compass_number_adapter_version()")
    for table in (
        "dead_letters",
        "outbox",
        "training_jobs",
        "adapter_versions",
        "adapters",
        "drift_events",
        "processed_events",
        "usage_counts",
        "semantic_maps",
    ):
        op.drop_table(table)
