"""The vector-store port: a collection of fixed-dimension cosine vectors with JSON payloads.

The stream upserts one point per embedded usage event, the pool build one per pool record, and
the worker scrolls a language's points to read usage texts back. Implementations
(:mod:`compass.qdrant.store`: Qdrant Edge in-process, Qdrant server) must make an upsert with an
existing id replace the point, so a redelivered event never adds one.

Payload filters are ``{field: condition}``, all of which must hold: a plain value is an equality
match, a :class:`Range` a numeric range (bounds in the field's unit). The fields the loop filters
on are indexed by every implementation (:data:`INDEXED_FIELDS`): the language and semantic map
version of a usage point, and ``occurred_at_ts``, its event time in integer epoch seconds — so a
window's points are found by one filtered query whatever the size of the store.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Range:
    """A numeric range condition: each bound that is not ``None`` must hold."""

    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None

    def matches(self, value: object) -> bool:
        """Does a payload value (a number; anything else never matches) lie in the range?"""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (
            (self.gte is None or value >= self.gte)
            and (self.gt is None or value > self.gt)
            and (self.lte is None or value <= self.lte)
            and (self.lt is None or value < self.lt)
        )


PayloadFilter = Mapping[str, str | int | bool | Range]

INDEXED_FIELDS: Mapping[str, str] = {
    "language": "keyword",
    "semantic_map_version": "integer",
    "occurred_at_ts": "integer",
}
"""Payload fields every store indexes (``keyword``: equality; ``integer``: equality and range)."""


def matches(payload: Mapping[str, Any], where: PayloadFilter | None) -> bool:
    """Does ``payload`` satisfy every condition of ``where`` (the reference semantics of a
    filter, for stores without a query engine)?"""
    for key, condition in (where or {}).items():
        value = payload.get(key)
        if isinstance(condition, Range):
            if not condition.matches(value):
                return False
        elif value != condition:
            return False
    return True


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
    def delete(self, ids: Sequence[uuid.UUID]) -> None:
        """Remove the points with these ids (unknown ids are ignored); durable on return
        like ``upsert``. Retention (``compass db purge``) and privacy erasure use it."""

    def create_payload_index(self, field: str, kind: str) -> None:
        """Index payload ``field`` (``kind``: ``keyword`` or ``integer``); a store without
        indexes (a test fake) keeps this default, which does nothing — its filters scan."""
        return None

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
