"""The vector-store port: a collection of fixed-dimension cosine vectors with JSON payloads.

The stream upserts one point per embedded usage event, the pool build one per pool record, and
the worker scrolls a language's points to read usage texts back. Implementations
(:mod:`compass.qdrant.store`: Qdrant Edge in-process, Qdrant server) must make an upsert with an
existing id replace the point, so a redelivered event never adds one. Payload filters are plain
``{field: value}`` equality matches — all the pipeline and the samplers need.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PayloadFilter = Mapping[str, str | int | bool]


@dataclass(frozen=True)
class VectorPoint:
    """One point to write: a UUID id (uuid5 of the natural key), a ``(dim,)`` vector and a
    JSON-serialisable payload."""

    id: uuid.UUID
    vector: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredPoint:
    """One point read back; ``vector`` only when asked for, ``score`` only from a search."""

    id: uuid.UUID
    payload: dict[str, Any]
    vector: np.ndarray | None = None
    score: float | None = None


class VectorStore(ABC):
    """A collection of ``dim``-dimensional cosine vectors with payloads.

    ``upsert`` raises :class:`~compass.core.errors.InfraError` for a vector of another
    dimension; ``flush`` makes every upsert durable; ``close`` flushes and releases the store.
    """

    dim: int

    @abstractmethod
    def upsert(self, points: Sequence[VectorPoint]) -> None: ...

    @abstractmethod
    def retrieve(
        self, ids: Sequence[uuid.UUID], with_vectors: bool = False
    ) -> list[StoredPoint]: ...

    @abstractmethod
    def search(
        self, vector: np.ndarray, limit: int = 10, where: PayloadFilter | None = None
    ) -> list[StoredPoint]: ...

    @abstractmethod
    def count(self, where: PayloadFilter | None = None) -> int: ...

    @abstractmethod
    def scroll(
        self, where: PayloadFilter | None = None, batch_size: int = 1000, with_vectors: bool = False
    ) -> Iterator[StoredPoint]: ...

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
