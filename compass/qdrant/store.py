"""The vector-store port (:mod:`compass.ports.vector_store`) on Qdrant: Qdrant Edge
(in-process, the embedded default) and a Qdrant server through ``qdrant-client`` (production).

Point ids are UUIDs (uuid5 of the event id for usage events), so an upsert of a redelivered
event replaces the point instead of adding one. Payload filters are equality matches and
numeric ranges (:class:`~compass.ports.vector_store.Range`); both stores create the payload
indexes of :data:`~compass.ports.vector_store.INDEXED_FIELDS` when opened (idempotent), so the
worker's event-time query of a window reads only that window's points.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from compass.config import Settings
from compass.core.errors import InfraError
from compass.ports.vector_store import (
    INDEXED_FIELDS,
    PayloadFilter,
    Range,
    StoredPoint,
    VectorPoint,
    VectorStore,
)

__all__ = [
    "PayloadFilter",
    "QdrantEdgeStore",
    "QdrantServerStore",
    "Range",
    "StoredPoint",
    "VectorPoint",
    "VectorStore",
    "open_vector_store",
]

log = structlog.get_logger(__name__)


def _check_dim(store: VectorStore, points: Sequence[VectorPoint]) -> None:
    for point in points:
        if point.vector.shape != (store.dim,):
            raise InfraError(
                f"vector of shape {point.vector.shape} for a store of dimension {store.dim}"
            )


class QdrantEdgeStore(VectorStore):
    """The Qdrant engine in-process, persistent on a local path (``qdrant-edge-py``)."""

    def __init__(self, path: Path, dim: int) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.path = Path(path)
        self.dim = dim
        if (self.path / "edge_config.json").exists() or (
            self.path.exists() and any(self.path.iterdir())
        ):
            self._shard: Any = qe.EdgeShard.load(str(self.path))
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)
            )
            self._shard = qe.EdgeShard.create(str(self.path), config)
        existing = set(self._shard.info().payload_schema or {})
        for name, kind in INDEXED_FIELDS.items():
            if name not in existing:
                self.create_payload_index(name, kind)

    def create_payload_index(self, field: str, kind: str) -> None:
        """Index a payload field (``keyword`` or ``integer``, which serves ranges too)."""
        qe = self._qe
        schema = qe.PayloadSchemaType.Integer if kind == "integer" else qe.PayloadSchemaType.Keyword
        self._shard.update(qe.UpdateOperation.create_field_index(field, schema))

    def _filter(self, where: PayloadFilter | None) -> Any:
        if not where:
            return None
        qe = self._qe
        must = []
        for key, value in where.items():
            if isinstance(value, Range):
                bounds = qe.RangeFloat(gte=value.gte, gt=value.gt, lte=value.lte, lt=value.lt)
                must.append(qe.FieldCondition(key=key, range=bounds))
            else:
                must.append(qe.FieldCondition(key=key, match=qe.MatchValue(value)))
        return qe.Filter(must=must)

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        _check_dim(self, points)
        qe = self._qe
        batch = [
            qe.Point(id=p.id, vector=p.vector.astype(np.float32).tolist(), payload=p.payload)
            for p in points
        ]
        self._shard.update(qe.UpdateOperation.upsert_points(batch))

    def retrieve(self, ids: Sequence[uuid.UUID], with_vectors: bool = False) -> list[StoredPoint]:
        if not ids:
            return []
        records = self._shard.retrieve(list(ids), True, with_vectors)
        return [_stored(r, with_vectors) for r in records]

    def search(
        self, vector: np.ndarray, limit: int = 10, where: PayloadFilter | None = None
    ) -> list[StoredPoint]:
        qe = self._qe
        request = qe.SearchRequest(
            query=qe.Query.Nearest(vector.astype(np.float32).tolist()),
            limit=limit,
            filter=self._filter(where),
            with_payload=True,
            with_vector=False,
        )
        return [_stored(hit, False, hit.score) for hit in self._shard.search(request)]

    def count(self, where: PayloadFilter | None = None) -> int:
        return int(self._shard.count(self._qe.CountRequest(exact=True, filter=self._filter(where))))

    def scroll(
        self, where: PayloadFilter | None = None, batch_size: int = 1000, with_vectors: bool = False
    ) -> Iterator[StoredPoint]:
        offset = None
        while True:
            request = self._qe.ScrollRequest(
                offset=offset,
                limit=batch_size,
                filter=self._filter(where),
                with_payload=True,
                with_vector=with_vectors,
            )
            records, offset = self._shard.scroll(request)
            for record in records:
                yield _stored(record, with_vectors)
            if offset is None:
                return

    def delete(self, ids: Sequence[uuid.UUID]) -> None:
        if ids:
            self._shard.update(self._qe.UpdateOperation.delete_points(list(ids)))

    def flush(self) -> None:
        self._shard.flush()

    def close(self) -> None:
        if getattr(self, "_shard", None) is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None


def _stored(record: Any, with_vectors: bool, score: float | None = None) -> StoredPoint:
    vector = None
    if with_vectors and record.vector is not None:
        raw = record.vector
        if isinstance(raw, dict):  # named vectors: the default one has the empty name
            raw = next(iter(raw.values()))
        vector = np.asarray(raw, dtype=np.float32)
    return StoredPoint(
        id=uuid.UUID(str(record.id)), payload=dict(record.payload or {}), vector=vector, score=score
    )


class QdrantServerStore(VectorStore):
    """A collection on a Qdrant server (production), through ``qdrant-client``."""

    def __init__(self, url: str, collection: str, dim: int) -> None:
        from qdrant_client import QdrantClient, models

        self._models = models
        self.collection = collection
        self.dim = dim
        try:
            self._client = QdrantClient(url=url, timeout=10)
            if not self._client.collection_exists(collection):
                self._client.create_collection(
                    collection,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                )
            schema = self._client.get_collection(collection).payload_schema or {}
            for name, kind in INDEXED_FIELDS.items():
                if name not in schema:
                    self.create_payload_index(name, kind)
        except Exception as exc:
            raise InfraError(f"cannot use Qdrant at {url}: {exc}") from None

    def create_payload_index(self, field: str, kind: str) -> None:
        """Index a payload field (``keyword`` or ``integer``, which serves ranges too)."""
        m = self._models
        schema = m.PayloadSchemaType.INTEGER if kind == "integer" else m.PayloadSchemaType.KEYWORD
        self._client.create_payload_index(
            self.collection, field_name=field, field_schema=schema, wait=True
        )

    def _filter(self, where: PayloadFilter | None) -> Any:
        if not where:
            return None
        m = self._models
        must = []
        for key, value in where.items():
            if isinstance(value, Range):
                bounds = m.Range(gte=value.gte, gt=value.gt, lte=value.lte, lt=value.lt)
                must.append(m.FieldCondition(key=key, range=bounds))
            else:
                must.append(m.FieldCondition(key=key, match=m.MatchValue(value=value)))
        return m.Filter(must=must)

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        if not points:
            return
        _check_dim(self, points)
        batch = [
            self._models.PointStruct(id=str(p.id), vector=p.vector.tolist(), payload=p.payload)
            for p in points
        ]
        self._client.upsert(self.collection, points=batch, wait=True)

    def delete(self, ids: Sequence[uuid.UUID]) -> None:
        if ids:
            selector = self._models.PointIdsList(points=[str(i) for i in ids])
            self._client.delete(self.collection, points_selector=selector, wait=True)

    def retrieve(self, ids: Sequence[uuid.UUID], with_vectors: bool = False) -> list[StoredPoint]:
        records = self._client.retrieve(
            self.collection, [str(i) for i in ids], with_payload=True, with_vectors=with_vectors
        )
        return [_stored(r, with_vectors) for r in records]

    def search(
        self, vector: np.ndarray, limit: int = 10, where: PayloadFilter | None = None
    ) -> list[StoredPoint]:
        result = self._client.query_points(
            self.collection,
            query=vector.tolist(),
            limit=limit,
            query_filter=self._filter(where),
            with_payload=True,
        )
        return [_stored(p, False, p.score) for p in result.points]

    def count(self, where: PayloadFilter | None = None) -> int:
        return int(
            self._client.count(self.collection, count_filter=self._filter(where), exact=True).count
        )

    def scroll(
        self, where: PayloadFilter | None = None, batch_size: int = 1000, with_vectors: bool = False
    ) -> Iterator[StoredPoint]:
        offset = None
        while True:
            records, offset = self._client.scroll(
                self.collection,
                scroll_filter=self._filter(where),
                limit=batch_size,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            for record in records:
                yield _stored(record, with_vectors)
            if offset is None:
                return

    def flush(self) -> None:
        """Server writes are acknowledged with ``wait=True``; nothing to flush."""

    def close(self) -> None:
        self._client.close()


def open_vector_store(
    settings: Settings, dim: int, collection: str | None = None, path: Path | None = None
) -> VectorStore:
    """The configured Qdrant server, else Qdrant Edge under ``<data_dir>/embedded/qdrant``;
    ``dim`` is the embedder's dimension (see :func:`compass.bootstrap.open_vector_store`)."""
    name = collection or settings.qdrant_collection
    if settings.qdrant_url:
        return QdrantServerStore(settings.qdrant_url, name, dim)
    return QdrantEdgeStore(path or settings.embedded_dir / "qdrant" / name, dim)
