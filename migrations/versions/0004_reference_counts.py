"""adapter_versions.reference_counts: the drift reference of a version kept as a sample.

A version's ``reference_distribution`` holds the shares of the window that triggered it; the
drift detector needs that window's *counts* (and its block counts, for the burstiness estimate)
to account for the reference's own sampling noise. The column is a nullable ``jsonb``
``{"counts": {cluster: n}, "n_sampled", "n_events", "sample_rate", "blocks": [[...]],
"dispersion"}``; versions written before this migration keep ``NULL`` (the stream then falls
back as docs/sql.md says). The immutability trigger is replaced so the new column is frozen like
the others; the downgrade restores the previous trigger and drops the column.

Revision ID: 0004
Revises: 0003
Create Date: 2026-02-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GUARD = """
CREATE OR REPLACE FUNCTION compass_guard_adapter_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'adapter versions are immutable: cannot delete %/%',
            OLD.adapter_id, OLD.number USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.id, NEW.adapter_id, NEW.number, NEW.artifact_uri, NEW.artifact_sha256,
        NEW.sampler, NEW.sampler_params, NEW.reference_distribution, NEW.metrics,
        NEW.drift_id, NEW.parent_version, NEW.base_model_revision, NEW.manifest,
        NEW.peft_config, NEW.training_seconds, NEW.evaluation_seconds, NEW.created_at{new})
       IS DISTINCT FROM
       (OLD.id, OLD.adapter_id, OLD.number, OLD.artifact_uri, OLD.artifact_sha256,
        OLD.sampler, OLD.sampler_params, OLD.reference_distribution, OLD.metrics,
        OLD.drift_id, OLD.parent_version, OLD.base_model_revision, OLD.manifest,
        OLD.peft_config, OLD.training_seconds, OLD.evaluation_seconds, OLD.created_at{old})
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


def upgrade() -> None:
    op.add_column("adapter_versions", sa.Column("reference_counts", pg.JSONB(), nullable=True))
    op.execute(_GUARD.format(new=", NEW.reference_counts", old=", OLD.reference_counts"))


def downgrade() -> None:
    op.execute(_GUARD.format(new="", old=""))
    op.drop_column("adapter_versions", "reference_counts")
