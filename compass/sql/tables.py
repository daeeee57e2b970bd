"""SQLAlchemy 2 models of the COMPASS schema (the public SQL interface, see ``docs/sql.md``).

The migrations in ``migrations/`` are written by hand (views, triggers, roles and partial indexes
are beyond autogenerate) and a test checks that they produce exactly these tables. Guarantees
live in constraints so that every writer, not only this code, keeps them:

- ``adapter_versions``: ``unique(adapter_id, number)``, a trigger takes ``number`` from
  ``adapters.last_version + 1`` (the row lock serialises concurrent writers; a rolled-back insert
  rolls the counter back, so numbers have no gaps), ``unique(drift_id)`` (one version per drift
  event), a partial unique index allowing one ``active`` version per adapter, and a trigger
  that refuses changes to anything but the status of a stored version.
- ``training_jobs``: ``unique(drift_id)`` (one job per drift event).
- ``semantic_maps``: a partial unique index allowing one active map.
- ``processed_events``: primary key on ``event_id`` (a redelivered event is counted once); its
  ``content_digest`` tells a redelivery from a re-used id (``duplicate_event_id``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now() -> Any:
    return mapped_column(TZ, nullable=False, server_default=func.now())


class SemanticMapRow(Base):
    __tablename__ = "semantic_maps"

    version: Mapped[int] = mapped_column(Integer, Identity(always=False), primary_key=True)
    content_hash: Mapped[str] = mapped_column(Text, unique=True)
    embedder_id: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(Text)
    k: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    centroids: Mapped[bytes] = mapped_column(LargeBinary)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default=text("'{}'::jsonb")
    )
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[dt.datetime] = _now()
    activated_at: Mapped[dt.datetime | None] = mapped_column(TZ)

    __table_args__ = (
        CheckConstraint("k > 0 AND dim > 0", name="shape"),
        CheckConstraint("octet_length(centroids) = k * dim * 4", name="centroid_bytes"),
        Index("ix_semantic_maps_one_active", "active", unique=True, postgresql_where="active"),
    )


class UsageCountRow(Base):
    __tablename__ = "usage_counts"

    language: Mapped[str] = mapped_column(Text, primary_key=True)
    window_start: Mapped[dt.datetime] = mapped_column(TZ, primary_key=True)
    window_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    semantic_map_version: Mapped[int] = mapped_column(
        Integer, ForeignKey("semantic_maps.version"), primary_key=True
    )
    cluster: Mapped[int] = mapped_column(Integer, primary_key=True)
    total_count: Mapped[Decimal] = mapped_column(Numeric, server_default=text("0"))
    sampled_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))

    __table_args__ = (
        CheckConstraint("cluster >= -1", name="cluster"),
        CheckConstraint("window_seconds > 0", name="window_seconds"),
        CheckConstraint("total_count >= 0 AND sampled_count >= 0", name="counts"),
        Index("ix_usage_counts_window_start_brin", "window_start", postgresql_using="brin"),
    )


class ProcessedEventRow(Base):
    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    processed_at: Mapped[dt.datetime] = _now()
    # SHA-256 of the event's content (migration 0006); NULL for rows written before it
    content_digest: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        Index("ix_processed_events_processed_at_brin", "processed_at", postgresql_using="brin"),
    )


class DriftEventRow(Base):
    __tablename__ = "drift_events"

    drift_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    language: Mapped[str] = mapped_column(Text)
    window_start: Mapped[dt.datetime] = mapped_column(TZ)
    window_end: Mapped[dt.datetime] = mapped_column(TZ)
    statistic: Mapped[float] = mapped_column(Double)
    threshold: Mapped[float] = mapped_column(Double)
    p_value: Mapped[float | None] = mapped_column(Double)
    n_events: Mapped[int] = mapped_column(Integer)
    n_sampled: Mapped[int] = mapped_column(Integer)
    semantic_map_version: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("semantic_maps.version")
    )
    reference_version: Mapped[int | None] = mapped_column(Integer)
    top_cluster_changes: Mapped[list[Any]] = mapped_column(
        JSONB, server_default=text("'[]'::jsonb")
    )
    detected_at: Mapped[dt.datetime] = mapped_column(TZ)
    recorded_at: Mapped[dt.datetime] = _now()

    __table_args__ = (
        UniqueConstraint("language", "window_start"),
        CheckConstraint("window_end > window_start", name="window"),
        CheckConstraint("statistic >= 0 AND threshold >= 0", name="statistic"),
        CheckConstraint("n_events >= 0 AND n_sampled >= 0", name="n_events"),
        Index("ix_drift_events_language_detected_at", "language", "detected_at"),
    )


class AdapterRow(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    language: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(Text)
    last_version: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[dt.datetime] = _now()
    # migration 0005: a pinned adapter's candidates are recorded but never promoted
    pinned_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    pin_reason: Mapped[str] = mapped_column(Text, server_default=text("''"))

    __table_args__ = (
        UniqueConstraint("language", "base_model"),
        CheckConstraint("last_version >= 0", name="last_version"),
    )


class AdapterEventRow(Base):
    """Migration 0005: every lifecycle change of an adapter (promote, rollback, pin, unpin,
    retire), append-only, with the reason a person or the worker gave."""

    __tablename__ = "adapter_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    adapter_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("adapters.id"))
    version: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, server_default=text("''"))
    actor: Mapped[str] = mapped_column(Text, server_default=text("''"))
    created_at: Mapped[dt.datetime] = _now()

    __table_args__ = (
        CheckConstraint(
            "action IN ('promote', 'rollback', 'pin', 'unpin', 'retire')", name="action"
        ),
        Index("ix_adapter_events_adapter_id_created_at", "adapter_id", "created_at"),
    )


class AdapterVersionRow(Base):
    __tablename__ = "adapter_versions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    adapter_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("adapters.id"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(Text, server_default=text("'candidate'"))
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(Text)
    sampler: Mapped[str] = mapped_column(Text)
    sampler_params: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    reference_distribution: Mapped[dict[str, Any]] = mapped_column(
        server_default=text("'{}'::jsonb")
    )
    metrics: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    drift_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("drift_events.drift_id"), unique=True
    )
    # migration 0004: the reference as a sample (counts, blocks, dispersion); NULL before it
    reference_counts: Mapped[dict[str, Any] | None] = mapped_column()
    parent_version: Mapped[int | None] = mapped_column(Integer)
    base_model_revision: Mapped[str] = mapped_column(Text, server_default=text("''"))
    manifest: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    peft_config: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    training_seconds: Mapped[Decimal | None] = mapped_column(Numeric(12, 3))
    evaluation_seconds: Mapped[Decimal | None] = mapped_column(Numeric(12, 3))
    notes: Mapped[str] = mapped_column(Text, server_default=text("''"))
    created_at: Mapped[dt.datetime] = _now()
    activated_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    retired_at: Mapped[dt.datetime | None] = mapped_column(TZ)

    __table_args__ = (
        UniqueConstraint("adapter_id", "number"),
        ForeignKeyConstraint(
            ["adapter_id", "parent_version"],
            ["adapter_versions.adapter_id", "adapter_versions.number"],
            name="fk_adapter_versions_parent",
        ),
        CheckConstraint("number > 0", name="number"),
        CheckConstraint("status IN ('candidate', 'active', 'rejected', 'retired')", name="status"),
        CheckConstraint("artifact_sha256 ~ '^[0-9a-f]{64}$'", name="sha256"),
        CheckConstraint("parent_version IS NULL OR parent_version < number", name="parent"),
        CheckConstraint("status <> 'active' OR activated_at IS NOT NULL", name="activated"),
        Index(
            "ix_adapter_versions_one_active",
            "adapter_id",
            unique=True,
            postgresql_where="status = 'active'",
        ),
    )


class TrainingJobRow(Base):
    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    drift_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("drift_events.drift_id"), unique=True
    )
    language: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    worker: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[dt.datetime | None] = mapped_column(TZ)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    version_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("adapter_versions.id"))
    created_at: Mapped[dt.datetime] = _now()
    started_at: Mapped[dt.datetime | None] = mapped_column(TZ)
    finished_at: Mapped[dt.datetime | None] = mapped_column(TZ)

    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="status"),
        CheckConstraint(
            "status <> 'running' OR (worker IS NOT NULL AND lease_until IS NOT NULL)",
            name="lease",
        ),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index(
            "ix_training_jobs_claimable",
            "created_at",
            postgresql_where="status IN ('queued', 'running')",
        ),
    )


class OutboxRow(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    topic: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[dt.datetime] = _now()
    published_at: Mapped[dt.datetime | None] = mapped_column(TZ)

    __table_args__ = (
        Index("ix_outbox_unpublished", "id", postgresql_where="published_at IS NULL"),
        Index(
            "ix_outbox_published_at",
            "published_at",
            postgresql_where="published_at IS NOT NULL",
        ),
    )


class DeadLetterRow(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    partition: Mapped[int | None] = mapped_column(Integer)
    offset: Mapped[int | None] = mapped_column(BigInteger)
    stage: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text, server_default=text("''"))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[dt.datetime] = mapped_column(TZ)
    recorded_at: Mapped[dt.datetime] = _now()

    __table_args__ = (
        Index(
            "ix_dead_letters_source_position",
            "source",
            "partition",
            "offset",
            unique=True,
            postgresql_where='partition IS NOT NULL AND "offset" IS NOT NULL',
        ),
        Index("ix_dead_letters_received_at", "received_at"),
        Index("ix_dead_letters_reason", "reason"),
    )


metadata = Base.metadata
TABLES = tuple(metadata.sorted_tables)
