"""The SQL implementation of the storage ports (PostgreSQL through SQLAlchemy Core).

:class:`SqlStore` holds the engine and makes :class:`SqlUnitOfWork` objects: one connection,
one transaction, every repository sharing it. Statements are PostgreSQL-specific on purpose
(``ON CONFLICT``, ``unnest`` arrays, ``FOR UPDATE SKIP LOCKED``): the hot path
(:meth:`~compass.sql.usage_repository.SqlUsageRepository.record_usage`) is one statement per
batch whatever its size. Usage counts live in :mod:`compass.sql.usage_repository`, adapters and
jobs in :mod:`compass.sql.adapter_repository`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import structlog
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine, RowMapping

from compass.core.errors import DataError
from compass.core.events import DeadLetter, DriftEvent
from compass.core.semantic_map import SemanticMap
from compass.ports.storage import (
    DeadLetterRepository,
    DriftRecord,
    DriftRepository,
    OutboxMessage,
    OutboxRepository,
    SemanticMapRecord,
    SemanticMapRepository,
    UnitOfWork,
    UnitOfWorkFactory,
)
from compass.sql.adapter_repository import SqlAdapterRepository, SqlJobRepository
from compass.sql.common import float_or_none, json_safe, utc, utc_or_none
from compass.sql.maintenance import SqlMaintenanceRepository
from compass.sql.usage_repository import SqlUsageRepository, text_array_literal

__all__ = [
    "SqlAdapterRepository",
    "SqlJobRepository",
    "SqlStore",
    "SqlUnitOfWork",
    "SqlUsageRepository",
    "open_store",
    "text_array_literal",
]

log = structlog.get_logger(__name__)

_SEMANTIC_MAP_LOCK = 7_302_211_410  # advisory lock key: "activate a semantic map"


# =========================================================================== semantic maps
class SqlSemanticMapRepository(SemanticMapRepository):
    _COLUMNS = "version, content_hash, embedder_id, k, dim, centroids, metadata, active, " + (
        "created_at, activated_at"
    )

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def save_semantic_map(
        self, semantic_map: SemanticMap, *, activate: bool = True
    ) -> SemanticMapRecord:
        centroids = np.ascontiguousarray(semantic_map.centroids, dtype="<f4")
        meta = json_safe(semantic_map.metadata())
        version = self._conn.execute(
            text(
                """
                INSERT INTO semantic_maps (content_hash, embedder_id, method, k, dim, centroids,
                                           metadata)
                VALUES (:hash, :embedder, :method, :k, :dim, :centroids, :metadata)
                ON CONFLICT (content_hash) DO NOTHING
                RETURNING version
                """
            ).bindparams(bindparam("metadata", type_=JSONB)),
            {
                "hash": semantic_map.version,
                "embedder": semantic_map.embedder_id,
                "method": semantic_map.method,
                "k": int(centroids.shape[0]),
                "dim": int(centroids.shape[1]),
                "centroids": centroids.tobytes(),
                "metadata": meta,
            },
        ).scalar_one_or_none()
        if version is None:
            version = self._conn.execute(
                text("SELECT version FROM semantic_maps WHERE content_hash = :hash"),
                {"hash": semantic_map.version},
            ).scalar_one()
        if activate:
            return self._activate(int(version))
        record = self.get_semantic_map(int(version))
        assert record is not None
        return record

    def _activate(self, version: int) -> SemanticMapRecord:
        self._conn.execute(text(f"SELECT pg_advisory_xact_lock({_SEMANTIC_MAP_LOCK})"))
        exists = self._conn.execute(
            text("SELECT 1 FROM semantic_maps WHERE version = :v"), {"v": version}
        ).scalar_one_or_none()
        if exists is None:
            raise DataError(f"semantic map version {version} does not exist")
        self._conn.execute(
            text("UPDATE semantic_maps SET active = false WHERE active AND version <> :v"),
            {"v": version},
        )
        self._conn.execute(
            text(
                "UPDATE semantic_maps SET active = true, activated_at = now() "
                "WHERE version = :v AND NOT active"
            ),
            {"v": version},
        )
        record = self.get_semantic_map(version)
        assert record is not None
        return record

    def active_semantic_map(self) -> SemanticMapRecord | None:
        row = (
            self._conn.execute(text(f"SELECT {self._COLUMNS} FROM semantic_maps WHERE active"))
            .mappings()
            .one_or_none()
        )
        return None if row is None else _semantic_map_record(row)

    def get_semantic_map(self, version: int) -> SemanticMapRecord | None:
        row = (
            self._conn.execute(
                text(f"SELECT {self._COLUMNS} FROM semantic_maps WHERE version = :v"),
                {"v": version},
            )
            .mappings()
            .one_or_none()
        )
        return None if row is None else _semantic_map_record(row)


def _semantic_map_record(row: RowMapping) -> SemanticMapRecord:
    meta = dict(row["metadata"])
    centroids = np.frombuffer(bytes(row["centroids"]), dtype="<f4").reshape(row["k"], row["dim"])
    # from_dict restores the whole map (the language neutraliser travels in the metadata) and
    # checks the content against its hash
    semantic_map = SemanticMap.from_dict(
        {
            **meta,
            "k": int(row["k"]),
            "dim": int(row["dim"]),
            "embedder_id": str(row["embedder_id"]),
            "version": str(row["content_hash"]),
            "centroids_b64": base64.b64encode(centroids.astype("<f4").tobytes()).decode("ascii"),
        }
    )
    # SemanticMap re-normalises its rows, which can move the last bit of a float; keep the exact
    # stored centroids so that a map read back assigns exactly like the one that was saved.
    exact = centroids.astype(np.float32)
    exact.setflags(write=False)
    object.__setattr__(semantic_map, "centroids", exact)
    return SemanticMapRecord(
        version=int(row["version"]),
        semantic_map=semantic_map,
        active=bool(row["active"]),
        created_at=utc(row["created_at"]),
        activated_at=utc_or_none(row["activated_at"]),
    )


# =========================================================================== drift
class SqlDriftRepository(DriftRepository):
    _COLUMNS = (
        "drift_id, language, window_start, window_end, statistic, threshold, p_value, n_events, "
        "n_sampled, semantic_map_version, reference_version, top_cluster_changes, detected_at"
    )

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def record_drift_event(self, event: DriftEvent) -> bool:
        inserted = self._conn.execute(
            text(
                f"""
                INSERT INTO drift_events ({self._COLUMNS})
                VALUES (:drift_id, :language, :window_start, :window_end, :statistic, :threshold,
                        :p_value, :n_events, :n_sampled, :semantic_map_version,
                        :reference_version, :top_cluster_changes, :detected_at)
                ON CONFLICT DO NOTHING
                RETURNING drift_id
                """
            ).bindparams(bindparam("top_cluster_changes", type_=JSONB)),
            {
                "drift_id": event.drift_id,
                "language": event.language,
                "window_start": event.window_start,
                "window_end": event.window_end,
                "statistic": event.statistic,
                "threshold": event.threshold,
                "p_value": event.p_value,
                "n_events": event.n_events,
                "n_sampled": event.n_sampled,
                "semantic_map_version": event.semantic_map_version,
                "reference_version": event.reference_version,
                "top_cluster_changes": [
                    c.model_dump(mode="json") for c in event.top_cluster_changes
                ],
                "detected_at": event.detected_at,
            },
        ).scalar_one_or_none()
        return inserted is not None

    def last_drift_event(self, language: str) -> DriftRecord | None:
        row = (
            self._conn.execute(
                text(
                    f"SELECT {self._COLUMNS} FROM drift_events WHERE language = :language "
                    "ORDER BY detected_at DESC LIMIT 1"
                ),
                {"language": language},
            )
            .mappings()
            .one_or_none()
        )
        return None if row is None else _drift_record(row)


def _drift_record(row: RowMapping) -> DriftRecord:
    return DriftRecord(
        drift_id=row["drift_id"],
        language=row["language"],
        window_start=utc(row["window_start"]),
        window_end=utc(row["window_end"]),
        statistic=float(row["statistic"]),
        threshold=float(row["threshold"]),
        p_value=float_or_none(row["p_value"]),
        n_events=int(row["n_events"]),
        n_sampled=int(row["n_sampled"]),
        semantic_map_version=row["semantic_map_version"],
        reference_version=row["reference_version"],
        top_cluster_changes=list(row["top_cluster_changes"]),
        detected_at=utc(row["detected_at"]),
    )


# =========================================================================== outbox
class SqlOutboxRepository(OutboxRepository):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add_outbox(self, topic: str, key: str, payload: Mapping[str, Any]) -> int:
        if not topic:
            raise DataError("outbox topic is empty")
        message_id = self._conn.execute(
            text(
                "INSERT INTO outbox (topic, key, payload) VALUES (:topic, :key, :payload) "
                "RETURNING id"
            ).bindparams(bindparam("payload", type_=JSONB)),
            {"topic": topic, "key": key, "payload": json_safe(dict(payload))},
        ).scalar_one()
        return int(message_id)

    def unpublished_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        rows = self._conn.execute(
            text(
                """
                SELECT id, topic, key, payload, created_at, published_at FROM outbox
                 WHERE published_at IS NULL
                 ORDER BY id LIMIT :limit
                   FOR UPDATE SKIP LOCKED
                """
            ),
            {"limit": limit},
        ).mappings()
        return [
            OutboxMessage(
                message_id=int(r["id"]),
                topic=r["topic"],
                key=r["key"],
                payload=dict(r["payload"]),
                created_at=utc(r["created_at"]),
                published_at=utc_or_none(r["published_at"]),
            )
            for r in rows
        ]

    def mark_published(self, message_ids: Sequence[int]) -> int:
        if not message_ids:
            return 0
        result = self._conn.execute(
            text(
                "UPDATE outbox SET published_at = now() "
                "WHERE id = ANY(CAST(:ids AS bigint[])) AND published_at IS NULL"
            ),
            {"ids": [int(i) for i in message_ids]},
        )
        return int(result.rowcount)


# =========================================================================== dead letters
_INSERT_DEAD_LETTERS = """
    INSERT INTO dead_letters (source, partition, "offset", stage, reason, detail, raw, received_at)
    SELECT * FROM unnest(%(sources)b::text[], %(partitions)b::integer[], %(offsets)b::bigint[],
                         %(stages)b::text[], %(reasons)b::text[], %(details)b::text[],
                         %(raws)b::bytea[], %(received)b::timestamptz[])
    ON CONFLICT DO NOTHING
    RETURNING id
    """
"""Every parameter in PostgreSQL's binary format (psycopg's ``%b``): in text format each raw
value of the bytea array was hex-escaped and then quoted for the array literal in Python —
a fifth of the stream's time under bad input at scale (``benchmarks/bench_bad_input.py``)."""


class SqlDeadLetterRepository(DeadLetterRepository):
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def record_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """One statement for a batch's dead letters (row by row cost ~4 ms each, issue 14)."""
        if not letters:
            return 0
        params = {
            "sources": [x.source_topic for x in letters],
            "partitions": [x.partition for x in letters],
            "offsets": [x.offset for x in letters],
            "stages": [x.stage for x in letters],
            "reasons": [x.reason for x in letters],
            "details": [x.detail for x in letters],
            "raws": [x.raw for x in letters],
            "received": [x.received_at for x in letters],
        }
        # the driver's cursor, in this connection's transaction: SQLAlchemy's text() binds
        # cannot ask for the binary format
        cursor = self._conn.connection.cursor()
        try:
            cursor.execute(_INSERT_DEAD_LETTERS, params)
            return len(cursor.fetchall())
        finally:
            cursor.close()

    def record_dead_letter(self, letter: DeadLetter) -> bool:
        """One letter through the batch statement; whether it was new."""
        return self.record_dead_letters([letter]) == 1


# =========================================================================== unit of work
class SqlUnitOfWork(UnitOfWork):
    """One connection and transaction; ``commit()`` keeps the work and opens the next one."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("unit of work used outside its 'with' block")
        return self._conn

    def _begin(self) -> None:
        conn = self._engine.connect()
        conn.begin()
        self._conn = conn
        self.usage = SqlUsageRepository(conn)
        self.semantic_maps = SqlSemanticMapRepository(conn)
        self.drift = SqlDriftRepository(conn)
        self.adapters = SqlAdapterRepository(conn)
        self.jobs = SqlJobRepository(conn)
        self.outbox = SqlOutboxRepository(conn)
        self.dead_letters = SqlDeadLetterRepository(conn)
        self.maintenance = SqlMaintenanceRepository(conn)

    def _end(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def commit(self) -> None:
        conn = self.connection
        conn.commit()
        conn.begin()

    def rollback(self) -> None:
        conn = self.connection
        if conn.in_transaction():
            conn.rollback()
        conn.begin()


class SqlStore(UnitOfWorkFactory):
    """The engine plus a factory of units of work: what agents and workers hold."""

    def __init__(self, url: str, *, pool_size: int = 5, pre_ping: bool = True) -> None:
        from compass.sql.server import make_db_engine

        self.url = url
        self.engine = make_db_engine(
            url, pre_ping=pre_ping, pool_size=pool_size, max_overflow=pool_size
        )

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()


def open_store(url: str, *, pool_size: int = 5, pre_ping: bool = True) -> SqlStore:
    """A :class:`SqlStore` on ``url`` (run ``compass db upgrade`` first)."""
    return SqlStore(url, pool_size=pool_size, pre_ping=pre_ping)
