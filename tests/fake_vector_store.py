"""An in-memory vector store for fast unit tests (the real ones: Qdrant Edge and the Qdrant
server in :mod:`compass.qdrant.store`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from compass.core.errors import InfraError
from compass.ports.vector_store import (
    PayloadFilter,
    StoredPoint,
    VectorPoint,
    VectorStore,
    matches,
)


class MemoryVectorStore(VectorStore):
    """Points in a dict; ``search`` ranks by cosine similarity; filters are equality matches."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.points: dict[uuid.UUID, tuple[np.ndarray, dict[str, Any]]] = {}
        self.closed = False

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        for point in points:
            vector = np.asarray(point.vector, dtype=np.float32)
            if vector.shape != (self.dim,):
                raise InfraError(f"vector of shape {vector.shape}, the store holds {self.dim}")
            self.points[point.id] = (vector, dict(point.payload))

    def _matching(self, where: PayloadFilter | None) -> Iterator[uuid.UUID]:
        for point_id, (_, payload) in self.points.items():
            if matches(payload, where):
                yield point_id

    def _stored(
        self, point_id: uuid.UUID, with_vectors: bool, score: float | None = None
    ) -> StoredPoint:
        vector, payload = self.points[point_id]
        return StoredPoint(point_id, dict(payload), vector.copy() if with_vectors else None, score)

    def retrieve(self, ids: Sequence[uuid.UUID], with_vectors: bool = False) -> list[StoredPoint]:
        return [self._stored(i, with_vectors) for i in ids if i in self.points]

    def search(
        self, vector: np.ndarray, limit: int = 10, where: PayloadFilter | None = None
    ) -> list[StoredPoint]:
        query = np.asarray(vector, dtype=np.float32)
        query = query / (np.linalg.norm(query) or 1.0)
        scored = []
        for point_id in self._matching(where):
            stored = self.points[point_id][0]
            scored.append((float(stored @ query / (np.linalg.norm(stored) or 1.0)), point_id))
        scored.sort(key=lambda pair: -pair[0])
        return [self._stored(i, False, score) for score, i in scored[:limit]]

    def count(self, where: PayloadFilter | None = None) -> int:
        return sum(1 for _ in self._matching(where))

    def scroll(
        self, where: PayloadFilter | None = None, batch_size: int = 1000, with_vectors: bool = False
    ) -> Iterator[StoredPoint]:
        for point_id in list(self._matching(where)):
            yield self._stored(point_id, with_vectors)

    def delete(self, ids: Sequence[uuid.UUID]) -> None:
        for point_id in ids:
            self.points.pop(point_id, None)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
