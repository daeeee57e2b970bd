"""SQL repositories for adapters, their versions and the training jobs.

The database carries the guarantees (see :mod:`compass.sql.tables`): a trigger numbers each
new version from the adapter's counter, so this code never computes ``max(number) + 1``;
activation locks the adapter row, retires the live version and activates the new one in the
same transaction; a job is claimed with ``FOR UPDATE SKIP LOCKED`` and a lease.
"""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, RowMapping

from compass.core.errors import DataError
from compass.ports.storage import (
    AdapterAction,
    AdapterEventRecord,
    AdapterRecord,
    AdapterRepository,
    AdapterVersionRecord,
    JobRepository,
    JobStatus,
    NewAdapterVersion,
    ReferenceCounts,
    TrainingJob,
    VersionStatus,
)
from compass.sql.common import float_or_none, json_safe, utc, utc_or_none

_ADAPTER_COLUMNS = "id, language, base_model, last_version, created_at, pinned_at, pin_reason"
_EVENT_COLUMNS = "id, adapter_id, version, action, reason, actor, created_at"
_VERSION_SELECT = """
    SELECT v.id, v.adapter_id, a.language, a.base_model, v.number, v.status, v.artifact_uri,
           v.artifact_sha256, v.sampler, v.sampler_params, v.reference_distribution, v.metrics,
           v.drift_id, v.parent_version, v.base_model_revision, v.manifest, v.peft_config,
           v.training_seconds, v.evaluation_seconds, v.notes, v.created_at, v.activated_at,
           v.retired_at, v.reference_counts, d.n_sampled AS trigger_n_sampled
      FROM adapter_versions v JOIN adapters a ON a.id = v.adapter_id
      LEFT JOIN drift_events d ON d.drift_id = v.drift_id
"""
_JOB_COLUMNS = (
    "id, drift_id, language, status, worker, lease_until, attempts, last_error, version_id, "
    "created_at, started_at, finished_at"
)


def _adapter(row: RowMapping) -> AdapterRecord:
    return AdapterRecord(
        adapter_id=int(row["id"]),
        language=row["language"],
        base_model=row["base_model"],
        last_version=int(row["last_version"]),
        created_at=utc(row["created_at"]),
        pinned_at=utc_or_none(row["pinned_at"]),
        pin_reason=row["pin_reason"],
    )


def _event(row: RowMapping) -> AdapterEventRecord:
    return AdapterEventRecord(
        event_id=int(row["id"]),
        adapter_id=int(row["adapter_id"]),
        version=None if row["version"] is None else int(row["version"]),
        action=cast(AdapterAction, row["action"]),
        reason=row["reason"],
        actor=row["actor"],
        created_at=utc(row["created_at"]),
    )


def _version(row: RowMapping) -> AdapterVersionRecord:
    return AdapterVersionRecord(
        version_id=int(row["id"]),
        adapter_id=int(row["adapter_id"]),
        language=row["language"],
        base_model=row["base_model"],
        number=int(row["number"]),
        status=cast(VersionStatus, row["status"]),
        artifact_uri=row["artifact_uri"],
        artifact_sha256=row["artifact_sha256"],
        sampler=row["sampler"],
        sampler_params=dict(row["sampler_params"]),
        reference_distribution={int(k): float(v) for k, v in row["reference_distribution"].items()},
        metrics={str(k): float(v) for k, v in row["metrics"].items()},
        drift_id=row["drift_id"],
        parent_version=row["parent_version"],
        base_model_revision=row["base_model_revision"],
        manifest={str(k): str(v) for k, v in row["manifest"].items()},
        peft_config=dict(row["peft_config"]),
        training_seconds=float_or_none(row["training_seconds"]),
        evaluation_seconds=float_or_none(row["evaluation_seconds"]),
        notes=row["notes"],
        created_at=utc(row["created_at"]),
        activated_at=utc_or_none(row["activated_at"]),
        retired_at=utc_or_none(row["retired_at"]),
        reference_counts=_reference_counts(row["reference_counts"]),
        trigger_n_sampled=None
        if row["trigger_n_sampled"] is None
        else int(row["trigger_n_sampled"]),
    )


def _reference_counts(doc: Any) -> ReferenceCounts | None:
    """The stored reference sample; ``None`` when absent (versions before migration 0004) or
    unreadable (then the stream falls back as for an old version, never fails)."""
    if not isinstance(doc, dict):
        return None
    try:
        return ReferenceCounts.from_json(doc)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics as floats; :class:`DataError` for NaN or ±∞, which ``jsonb`` cannot hold (the
    worker drops them before this, :func:`compass.core.gate.finite_metrics`)."""
    out = {str(k): float(v) for k, v in metrics.items()}
    bad = sorted(k for k, v in out.items() if not math.isfinite(v))
    if bad:
        raise DataError(f"non-finite metrics cannot be stored: {bad}")
    return out


def _job(row: RowMapping) -> TrainingJob:
    return TrainingJob(
        job_id=int(row["id"]),
        drift_id=row["drift_id"],
        language=row["language"],
        status=cast(JobStatus, row["status"]),
        worker=row["worker"],
        lease_until=utc_or_none(row["lease_until"]),
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
        version_id=row["version_id"],
        created_at=utc(row["created_at"]),
        started_at=utc_or_none(row["started_at"]),
        finished_at=utc_or_none(row["finished_at"]),
    )


class SqlAdapterRepository(AdapterRepository):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get_or_create_adapter(self, language: str, base_model: str) -> AdapterRecord:
        if not base_model:
            raise DataError("base model is empty")
        row = (
            self._conn.execute(
                text(
                    f"""
                    INSERT INTO adapters (language, base_model) VALUES (:language, :base_model)
                    ON CONFLICT (language, base_model) DO NOTHING
                    RETURNING {_ADAPTER_COLUMNS}
                    """
                ),
                {"language": language, "base_model": base_model},
            )
            .mappings()
            .one_or_none()
        )
        if row is not None:
            return _adapter(row)
        found = self._get_adapter(language, base_model)
        assert found is not None
        return found

    def _get_adapter(self, language: str, base_model: str) -> AdapterRecord | None:
        row = (
            self._conn.execute(
                text(
                    f"SELECT {_ADAPTER_COLUMNS} FROM adapters "
                    "WHERE language = :language AND base_model = :base_model"
                ),
                {"language": language, "base_model": base_model},
            )
            .mappings()
            .one_or_none()
        )
        return None if row is None else _adapter(row)

    def create_version(self, adapter_id: int, version: NewAdapterVersion) -> AdapterVersionRecord:
        if version.status not in ("candidate", "rejected"):
            raise DataError(f"a new version is a candidate or rejected, not {version.status!r}")
        params: dict[str, Any] = {
            "adapter_id": adapter_id,
            "status": version.status,
            "artifact_uri": version.artifact_uri,
            "artifact_sha256": version.artifact_sha256.lower(),
            "sampler": version.sampler,
            "sampler_params": json_safe(version.sampler_params),
            "reference_distribution": {
                str(k): float(v) for k, v in version.reference_distribution.items()
            },
            "metrics": _finite_metrics(version.metrics),
            "drift_id": version.drift_id,
            "parent_version": version.parent_version,
            "base_model_revision": version.base_model_revision,
            "manifest": dict(version.manifest),
            "peft_config": json_safe(version.peft_config),
            "training_seconds": version.training_seconds,
            "evaluation_seconds": version.evaluation_seconds,
            "notes": version.notes,
        }
        json_params = [
            "sampler_params",
            "reference_distribution",
            "metrics",
            "manifest",
            "peft_config",
        ]
        if version.reference_counts is not None:  # absent: SQL NULL (not JSON null)
            params["reference_counts"] = version.reference_counts.to_json()
            json_params.append("reference_counts")
        columns = ", ".join(params)
        values = ", ".join(f":{name}" for name in params)
        # ``number`` is left out on purpose: the trigger assigns the adapter's next number.
        version_id = self._conn.execute(
            text(
                f"INSERT INTO adapter_versions ({columns}) VALUES ({values}) RETURNING id"
            ).bindparams(*[bindparam(name, type_=JSONB) for name in json_params]),
            params,
        ).scalar_one()
        return self._version_by_id(int(version_id))

    def _version_by_id(self, version_id: int) -> AdapterVersionRecord:
        row = self._conn.execute(text(_VERSION_SELECT + " WHERE v.id = :id"), {"id": version_id})
        return _version(row.mappings().one())

    def _lock_adapter(self, adapter_id: int) -> None:
        found = self._conn.execute(
            text("SELECT id FROM adapters WHERE id = :id FOR UPDATE"), {"id": adapter_id}
        ).scalar_one_or_none()
        if found is None:
            raise DataError(f"adapter {adapter_id} does not exist")

    def activate_version(self, adapter_id: int, number: int) -> AdapterVersionRecord:
        self._lock_adapter(adapter_id)  # serialises activations of one adapter
        target = self._get_version(adapter_id, number)
        if target is None:
            raise DataError(f"adapter {adapter_id} has no version {number}")
        if target.status == "active":
            return target
        if target.status not in ("candidate", "retired"):
            raise DataError(
                f"version {number} of adapter {adapter_id} is {target.status}; "
                "only a candidate or a retired version can be activated"
            )
        self._conn.execute(
            text(
                "UPDATE adapter_versions SET status = 'retired', retired_at = now() "
                "WHERE adapter_id = :a AND status = 'active'"
            ),
            {"a": adapter_id},
        )
        self._conn.execute(
            text(
                "UPDATE adapter_versions SET status = 'active', activated_at = now(), "
                "retired_at = NULL WHERE adapter_id = :a AND number = :n"
            ),
            {"a": adapter_id, "n": number},
        )
        return self._version_by_id(target.version_id)

    def _get_version(self, adapter_id: int, number: int) -> AdapterVersionRecord | None:
        row = self._conn.execute(
            text(_VERSION_SELECT + " WHERE v.adapter_id = :a AND v.number = :n"),
            {"a": adapter_id, "n": number},
        )
        found = row.mappings().one_or_none()
        return None if found is None else _version(found)

    def active_version(self, language: str, base_model: str) -> AdapterVersionRecord | None:
        row = self._conn.execute(
            text(
                _VERSION_SELECT + " WHERE a.language = :language AND a.base_model = :base_model"
                " AND v.status = 'active'"
            ),
            {"language": language, "base_model": base_model},
        )
        found = row.mappings().one_or_none()
        return None if found is None else _version(found)

    # ------------------------------------------------------------------ lifecycle
    def list_adapters(self) -> list[AdapterRecord]:
        rows = self._conn.execute(
            text(f"SELECT {_ADAPTER_COLUMNS} FROM adapters ORDER BY language, base_model")
        )
        return [_adapter(row) for row in rows.mappings()]

    def get_adapter(self, language: str, base_model: str) -> AdapterRecord | None:
        return self._get_adapter(language, base_model)

    def list_versions(self, adapter_id: int) -> list[AdapterVersionRecord]:
        rows = self._conn.execute(
            text(_VERSION_SELECT + " WHERE v.adapter_id = :a ORDER BY v.number"), {"a": adapter_id}
        )
        return [_version(row) for row in rows.mappings()]

    def get_version(self, adapter_id: int, number: int) -> AdapterVersionRecord | None:
        return self._get_version(adapter_id, number)

    def retire_version(self, adapter_id: int, number: int) -> AdapterVersionRecord:
        self._lock_adapter(adapter_id)
        target = self._get_version(adapter_id, number)
        if target is None:
            raise DataError(f"adapter {adapter_id} has no version {number}")
        if target.status == "retired":
            return target
        if target.status != "candidate":
            hint = " (activate another version first)" if target.status == "active" else ""
            raise DataError(
                f"version {number} of adapter {adapter_id} is {target.status}; "
                f"only a candidate can be retired{hint}"
            )
        self._conn.execute(
            text(
                "UPDATE adapter_versions SET status = 'retired', retired_at = now() "
                "WHERE adapter_id = :a AND number = :n"
            ),
            {"a": adapter_id, "n": number},
        )
        return self._version_by_id(target.version_id)

    def set_pinned(self, adapter_id: int, pinned: bool, reason: str = "") -> AdapterRecord:
        self._lock_adapter(adapter_id)
        row = self._conn.execute(
            text(
                "UPDATE adapters SET pinned_at = CASE WHEN :p THEN coalesce(pinned_at, now()) "
                "END, pin_reason = CASE WHEN :p THEN :r ELSE '' END "
                f"WHERE id = :a RETURNING {_ADAPTER_COLUMNS}"
            ),
            {"a": adapter_id, "p": pinned, "r": reason},
        )
        return _adapter(row.mappings().one())

    def record_event(
        self,
        adapter_id: int,
        action: AdapterAction,
        *,
        version: int | None = None,
        reason: str = "",
        actor: str = "",
    ) -> AdapterEventRecord:
        row = self._conn.execute(
            text(
                "INSERT INTO adapter_events (adapter_id, version, action, reason, actor) "
                f"VALUES (:a, :v, :action, :reason, :actor) RETURNING {_EVENT_COLUMNS}"
            ),
            {
                "a": adapter_id,
                "v": version,
                "action": action,
                "reason": reason[:4000],
                "actor": actor[:200],
            },
        )
        return _event(row.mappings().one())

    def list_events(self, adapter_id: int) -> list[AdapterEventRecord]:
        rows = self._conn.execute(
            text(
                f"SELECT {_EVENT_COLUMNS} FROM adapter_events WHERE adapter_id = :a "
                "ORDER BY created_at, id"
            ),
            {"a": adapter_id},
        )
        return [_event(row) for row in rows.mappings()]


class SqlJobRepository(JobRepository):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def claim_job(
        self,
        drift_id: uuid.UUID,
        worker: str,
        lease: timedelta,
        *,
        max_attempts: int | None = None,
    ) -> TrainingJob | None:
        _check_lease(worker, lease)
        created = self._conn.execute(
            text(
                """
                INSERT INTO training_jobs (drift_id, language)
                SELECT drift_id, language FROM drift_events WHERE drift_id = :d
                ON CONFLICT (drift_id) DO NOTHING
                RETURNING id
                """
            ),
            {"d": drift_id},
        ).scalar_one_or_none()
        if created is None and self._get_job(drift_id) is None:
            raise DataError(f"drift event {drift_id} is not stored; record it before its job")
        claimable = "(status = 'queued' OR (status = 'running' AND lease_until < now()))"
        expired_note = (
            "CASE WHEN status = 'running' THEN 'lease of ' || worker || ' expired' "
            "ELSE last_error END"
        )
        if max_attempts is not None:
            self._conn.execute(
                text(
                    f"""
                    UPDATE training_jobs
                       SET status = 'failed', last_error = {expired_note},
                           lease_until = NULL, finished_at = now()
                     WHERE id = (SELECT id FROM training_jobs
                                  WHERE drift_id = :d AND attempts >= :max AND {claimable}
                                    FOR UPDATE SKIP LOCKED)
                    """
                ),
                {"d": drift_id, "max": max_attempts},
            )
        row = self._conn.execute(
            text(
                f"""
                UPDATE training_jobs
                   SET status = 'running', worker = :worker, lease_until = now() + :lease,
                       last_error = {expired_note},
                       attempts = attempts + 1, started_at = now(), finished_at = NULL
                 WHERE id = (SELECT id FROM training_jobs
                              WHERE drift_id = :d AND {claimable}
                                FOR UPDATE SKIP LOCKED)
                RETURNING {_JOB_COLUMNS}
                """
            ),
            {"d": drift_id, "worker": worker, "lease": lease},
        )
        found = row.mappings().one_or_none()
        return None if found is None else _job(found)

    def renew_lease(self, job_id: int, worker: str, lease: timedelta) -> bool:
        _check_lease(worker, lease)
        result = self._conn.execute(
            text(
                "UPDATE training_jobs SET lease_until = now() + :lease "
                "WHERE id = :j AND worker = :worker AND status = 'running'"
            ),
            {"j": job_id, "worker": worker, "lease": lease},
        )
        return bool(result.rowcount)

    def get_job(self, drift_id: uuid.UUID) -> TrainingJob | None:
        return self._get_job(drift_id)

    def complete_job(self, job_id: int, worker: str, version_id: int | None) -> None:
        result = self._conn.execute(
            text(
                "UPDATE training_jobs SET status = 'succeeded', finished_at = now(), "
                "lease_until = NULL, version_id = :v, last_error = NULL "
                "WHERE id = :j AND worker = :worker AND status = 'running'"
            ),
            {"j": job_id, "worker": worker, "v": version_id},
        )
        if result.rowcount == 0:
            raise DataError(f"job {job_id} is not held by {worker!r} (lease lost?)")

    def fail_job(self, job_id: int, worker: str, error: str, *, retry: bool = True) -> None:
        result = self._conn.execute(
            text(
                "UPDATE training_jobs SET status = :status, lease_until = NULL, "
                "last_error = :error, finished_at = CASE WHEN :retry THEN NULL ELSE now() END "
                "WHERE id = :j AND worker = :worker AND status = 'running'"
            ),
            {
                "j": job_id,
                "worker": worker,
                "error": error[:4000],
                "retry": retry,
                "status": "queued" if retry else "failed",
            },
        )
        if result.rowcount == 0:
            raise DataError(f"job {job_id} is not held by {worker!r} (lease lost?)")

    def release_job(self, job_id: int, worker: str, reason: str) -> None:
        result = self._conn.execute(
            text(
                "UPDATE training_jobs SET status = 'queued', lease_until = NULL, "
                "attempts = GREATEST(attempts - 1, 0), last_error = :reason, finished_at = NULL "
                "WHERE id = :j AND worker = :worker AND status = 'running'"
            ),
            {"j": job_id, "worker": worker, "reason": reason[:4000]},
        )
        if result.rowcount == 0:
            raise DataError(f"job {job_id} is not held by {worker!r} (lease lost?)")

    def _get_job(self, drift_id: uuid.UUID) -> TrainingJob | None:
        row = self._conn.execute(
            text(f"SELECT {_JOB_COLUMNS} FROM training_jobs WHERE drift_id = :d"), {"d": drift_id}
        )
        found = row.mappings().one_or_none()
        return None if found is None else _job(found)


def _check_lease(worker: str, lease: timedelta) -> None:
    if not worker:
        raise DataError("worker name is empty")
    if lease <= timedelta(0):
        raise DataError(f"lease must be positive, got {lease}")
