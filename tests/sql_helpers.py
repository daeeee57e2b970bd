"""Reads and writes the tests need and the loop does not: plain SQL on a unit of work's
connection, so the storage ports carry only what the stream, the worker and the relay call.

Each helper takes an open :class:`~compass.sql.unit_of_work.SqlUnitOfWork` and runs in its
transaction; records come back in the ports' types (UTC datetimes, Python values).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from compass.ports.storage import (
    AdapterRecord,
    AdapterVersionRecord,
    ClusterCount,
    DriftRecord,
    TrainingJob,
)
from compass.sql.adapter_repository import (
    _VERSION_SELECT,
    SqlAdapterRepository,
    SqlJobRepository,
    _version,
)
from compass.sql.common import utc
from compass.sql.unit_of_work import SqlDriftRepository, SqlUnitOfWork, _drift_record


@dataclass(frozen=True)
class DeadLetterRecord:
    """One stored dead letter (``raw``: the original message bytes)."""

    dead_letter_id: int
    source: str
    partition: int | None
    offset: int | None
    stage: str
    reason: str
    detail: str
    raw: bytes
    received_at: datetime


def recent_dead_letters(uow: SqlUnitOfWork, limit: int = 100) -> list[DeadLetterRecord]:
    """The newest ``limit`` dead letters, newest first."""
    rows = uow.connection.execute(
        text(
            'SELECT id, source, partition, "offset", stage, reason, detail, raw, received_at '
            "FROM dead_letters ORDER BY received_at DESC, id DESC LIMIT :limit"
        ),
        {"limit": limit},
    ).mappings()
    return [
        DeadLetterRecord(
            dead_letter_id=int(r["id"]),
            source=r["source"],
            partition=r["partition"],
            offset=r["offset"],
            stage=r["stage"],
            reason=r["reason"],
            detail=r["detail"],
            raw=bytes(r["raw"]),
            received_at=utc(r["received_at"]),
        )
        for r in rows
    ]


def window_counts(
    uow: SqlUnitOfWork, language: str, window_start: datetime
) -> dict[int, ClusterCount]:
    """Counts per cluster of one window, summed over every semantic map version."""
    rows = uow.connection.execute(
        text(
            "SELECT cluster, sum(total_count) AS total, sum(sampled_count) AS sampled "
            "FROM usage_counts WHERE language = :language AND window_start = :window_start "
            "GROUP BY cluster ORDER BY cluster"
        ),
        {"language": language, "window_start": window_start},
    )
    return {int(r.cluster): ClusterCount(float(r.total), int(r.sampled)) for r in rows}


def get_drift_event(uow: SqlUnitOfWork, drift_id: uuid.UUID) -> DriftRecord | None:
    row = (
        uow.connection.execute(
            text(f"SELECT {SqlDriftRepository._COLUMNS} FROM drift_events WHERE drift_id = :d"),
            {"d": drift_id},
        )
        .mappings()
        .one_or_none()
    )
    return None if row is None else _drift_record(row)


def get_adapter(uow: SqlUnitOfWork, language: str, base_model: str) -> AdapterRecord | None:
    return SqlAdapterRepository(uow.connection)._get_adapter(language, base_model)


def list_versions(uow: SqlUnitOfWork, adapter_id: int) -> list[AdapterVersionRecord]:
    """Every version of an adapter, oldest (number 1) first."""
    rows = uow.connection.execute(
        text(_VERSION_SELECT + " WHERE v.adapter_id = :a ORDER BY v.number"), {"a": adapter_id}
    )
    return [_version(r) for r in rows.mappings()]


def get_version(uow: SqlUnitOfWork, adapter_id: int, number: int) -> AdapterVersionRecord | None:
    return SqlAdapterRepository(uow.connection)._get_version(adapter_id, number)


def version_for_drift(uow: SqlUnitOfWork, drift_id: uuid.UUID) -> AdapterVersionRecord | None:
    """The version trained for a drift event (at most one: a unique index)."""
    row = uow.connection.execute(text(_VERSION_SELECT + " WHERE v.drift_id = :d"), {"d": drift_id})
    found = row.mappings().one_or_none()
    return None if found is None else _version(found)


def get_job(uow: SqlUnitOfWork, drift_id: uuid.UUID) -> TrainingJob | None:
    return SqlJobRepository(uow.connection)._get_job(drift_id)


def reject_version(uow: SqlUnitOfWork, adapter_id: int, number: int) -> int:
    """Mark a candidate ``rejected`` (what an operator would do by hand); returns the rows
    changed (0 when the version is not a candidate)."""
    result = uow.connection.execute(
        text(
            "UPDATE adapter_versions SET status = 'rejected' "
            "WHERE adapter_id = :a AND number = :n AND status = 'candidate'"
        ),
        {"a": adapter_id, "n": number},
    )
    return int(result.rowcount)
