"""Views for people: adapter_history, drift_history, language_distribution, live_adapters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-10
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    "adapter_history": """
        SELECT a.language,
               a.base_model,
               a.id AS adapter_id,
               v.number AS version,
               a.language || '-v' || v.number AS adapter_name,
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
               v.notes
          FROM adapter_versions v
          JOIN adapters a ON a.id = v.adapter_id
          LEFT JOIN drift_events d ON d.drift_id = v.drift_id
    """,
    "drift_history": """
        SELECT d.drift_id,
               d.language,
               d.window_start,
               d.window_end,
               d.statistic,
               d.threshold,
               d.p_value,
               d.n_events,
               d.n_sampled,
               d.semantic_map_version,
               d.reference_version,
               d.top_cluster_changes,
               d.detected_at,
               j.status AS job_status,
               j.attempts AS job_attempts,
               j.last_error AS job_last_error,
               j.finished_at AS job_finished_at,
               a.base_model,
               v.number AS version,
               v.status AS version_status
          FROM drift_events d
          LEFT JOIN training_jobs j ON j.drift_id = d.drift_id
          LEFT JOIN adapter_versions v ON v.drift_id = d.drift_id
          LEFT JOIN adapters a ON a.id = v.adapter_id
    """,
    # share: of the window's events that were assigned a cluster (cluster -1 = not embedded).
    "language_distribution": """
        SELECT u.language,
               u.semantic_map_version,
               u.window_start,
               u.window_start + make_interval(secs => u.window_seconds) AS window_end,
               u.window_seconds,
               u.cluster,
               u.total_count,
               u.sampled_count,
               sum(u.total_count) OVER w AS window_total,
               CASE WHEN u.cluster >= 0 THEN
                    u.total_count
                    / NULLIF(sum(u.total_count) FILTER (WHERE u.cluster >= 0) OVER w, 0)
               END AS share
          FROM usage_counts u
        WINDOW w AS (PARTITION BY u.language, u.semantic_map_version, u.window_start,
                                  u.window_seconds)
    """,
    "live_adapters": """
        SELECT a.language,
               a.base_model,
               a.id AS adapter_id,
               v.number AS version,
               a.language || '-v' || v.number AS adapter_name,
               v.artifact_uri,
               v.artifact_sha256,
               v.base_model_revision,
               v.sampler,
               v.sampler_params,
               v.metrics,
               v.drift_id,
               v.parent_version,
               v.activated_at,
               a.last_version AS latest_version
          FROM adapters a
          JOIN adapter_versions v ON v.adapter_id = a.id AND v.status = 'active'
    """,
}


def upgrade() -> None:
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
