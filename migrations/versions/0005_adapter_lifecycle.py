"""Adapter lifecycle (issue 11): pins, the ``adapter_events`` log, unique serving names.

- ``adapters.pinned_at`` / ``adapters.pin_reason``: a pinned adapter's new candidates are
  recorded but not promoted (``compass adapters pin|unpin``).
- ``adapter_events``: every lifecycle change — ``promote`` (the worker), ``rollback``, ``pin``,
  ``unpin``, ``retire`` (``compass adapters``) — with its version, reason, actor and time;
  append-only by convention (nothing in COMPASS updates or deletes a row).
- the version guard also allows ``candidate → retired`` (``compass adapters retire`` of a
  candidate that was never promoted).
- the views ``adapter_history`` and ``live_adapters`` give the unique serving name
  ``language-vN-<first 8 hex of artifact_sha256>`` (the manifest hash,
  :mod:`compass.core.naming`) and gain columns at the end: ``pinned`` everywhere, and in
  ``adapter_history`` the version's latest lifecycle event (``last_action``,
  ``last_action_reason``, ``last_action_at``).

The downgrade restores the 0002 views and the 0004 guard and drops the new table and columns.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)

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
        NEW.peft_config, NEW.training_seconds, NEW.evaluation_seconds, NEW.created_at,
        NEW.reference_counts)
       IS DISTINCT FROM
       (OLD.id, OLD.adapter_id, OLD.number, OLD.artifact_uri, OLD.artifact_sha256,
        OLD.sampler, OLD.sampler_params, OLD.reference_distribution, OLD.metrics,
        OLD.drift_id, OLD.parent_version, OLD.base_model_revision, OLD.manifest,
        OLD.peft_config, OLD.training_seconds, OLD.evaluation_seconds, OLD.created_at,
        OLD.reference_counts)
    THEN
        RAISE EXCEPTION 'adapter versions are immutable: only status may change'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'candidate' AND NEW.status IN ('active', 'rejected'{extra}))
        OR (OLD.status = 'active' AND NEW.status = 'retired')
        OR (OLD.status = 'retired' AND NEW.status = 'active'))
    THEN
        RAISE EXCEPTION 'adapter version status cannot go from % to %',
            OLD.status, NEW.status USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""

_OLD_NAME = "a.language || '-v' || v.number"
_NEW_NAME = "a.language || '-v' || v.number || '-' || left(v.artifact_sha256, 8)"

_HISTORY = """
        SELECT a.language,
               a.base_model,
               a.id AS adapter_id,
               v.number AS version,
               {name} AS adapter_name,
               v.status,
               v.sampler,
               v.sampler_params,
               v.metrics,
               v.parent_version,
               v.drift_id,
               d.statistic AS drift_statistic,
               d.window_start AS drift_window_start,
               v.artifact_uri,
               v.artifact_sha256,
               v.base_model_revision,
               v.training_seconds,
               v.evaluation_seconds,
               v.created_at,
               v.activated_at,
               v.retired_at,
               v.notes{extra}
          FROM adapter_versions v
          JOIN adapters a ON a.id = v.adapter_id
          LEFT JOIN drift_events d ON d.drift_id = v.drift_id{join}
"""
_HISTORY_EXTRA = """,
               a.pinned_at IS NOT NULL AS pinned,
               e.action AS last_action,
               e.reason AS last_action_reason,
               e.created_at AS last_action_at"""
_HISTORY_JOIN = """
          LEFT JOIN LATERAL (
                SELECT x.action, x.reason, x.created_at
                  FROM adapter_events x
                 WHERE x.adapter_id = v.adapter_id AND x.version = v.number
                 ORDER BY x.created_at DESC, x.id DESC
                 LIMIT 1) e ON true"""

_LIVE = """
        SELECT a.language,
               a.base_model,
               a.id AS adapter_id,
               v.number AS version,
               {name} AS adapter_name,
               v.artifact_uri,
               v.artifact_sha256,
               v.base_model_revision,
               v.sampler,
               v.sampler_params,
               v.metrics,
               v.drift_id,
               v.parent_version,
               v.activated_at,
               a.last_version AS latest_version{extra}
          FROM adapters a
          JOIN adapter_versions v ON v.adapter_id = a.id AND v.status = 'active'
"""
_LIVE_EXTRA = """,
               a.pinned_at IS NOT NULL AS pinned,
               a.pin_reason"""


def upgrade() -> None:
    op.add_column("adapters", sa.Column("pinned_at", TZ, nullable=True))
    op.add_column(
        "adapters",
        sa.Column("pin_reason", sa.Text(), nullable=False, server_default=sa.text("''")),
    )
    op.create_table(
        "adapter_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("adapter_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("actor", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name="pk_adapter_events"),
        sa.ForeignKeyConstraint(
            ["adapter_id"], ["adapters.id"], name="fk_adapter_events_adapter_id_adapters"
        ),
        sa.CheckConstraint(
            "action IN ('promote', 'rollback', 'pin', 'unpin', 'retire')",
            name="ck_adapter_events_action",
        ),
    )
    op.create_index(
        "ix_adapter_events_adapter_id_created_at", "adapter_events", ["adapter_id", "created_at"]
    )
    op.execute(_GUARD.format(extra=", 'retired'"))
    history = _HISTORY.format(name=_NEW_NAME, extra=_HISTORY_EXTRA, join=_HISTORY_JOIN)
    op.execute(f"CREATE OR REPLACE VIEW adapter_history AS {history}")
    op.execute(
        f"CREATE OR REPLACE VIEW live_adapters AS {_LIVE.format(name=_NEW_NAME, extra=_LIVE_EXTRA)}"
    )


def downgrade() -> None:
    # CREATE OR REPLACE cannot drop columns: drop and recreate the 0002 views
    op.execute("DROP VIEW IF EXISTS live_adapters")
    op.execute("DROP VIEW IF EXISTS adapter_history")
    op.execute(
        f"CREATE VIEW adapter_history AS {_HISTORY.format(name=_OLD_NAME, extra='', join='')}"
    )
    op.execute(f"CREATE VIEW live_adapters AS {_LIVE.format(name=_OLD_NAME, extra='')}")
    op.execute(_GUARD.format(extra=""))
    op.drop_index("ix_adapter_events_adapter_id_created_at", table_name="adapter_events")
    op.drop_table("adapter_events")
    op.drop_column("adapters", "pin_reason")
    op.drop_column("adapters", "pinned_at")
