"""An on-disk embedding cache so that no text is embedded twice.

Embedding is the slowest step of every CPU pipeline here (~60 texts/s), so pools, target sets
and experiments reuse vectors across runs. Entries are keyed by (model id, sha256(kind, text)):
the model id carries the package version, so an upgraded model never reads stale vectors.
SQLite (WAL mode) holds them: one file, safe for several processes, no server.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compass.core.errors import DataError
from compass.ports.embedder import (
    DEFAULT_KIND,
    Embedder,
    EmbeddingKind,
    check_kind,
    check_texts,
)

_CHUNK = 900  # stay below SQLite's default limit on bound parameters


def text_key(kind: str, text: str) -> bytes:
    """The cache key of one text: sha256 over the kind and the text."""
    return hashlib.sha256(f"{kind}\x00{text}".encode()).digest()


class EmbeddingCache:
    """Vectors by (model id, text key) in one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " model_id TEXT NOT NULL, key BLOB NOT NULL, vector BLOB NOT NULL,"
                " PRIMARY KEY (model_id, key)) WITHOUT ROWID"
            )
            self._conn.commit()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"embedding cache {self.path} is not usable: {exc}") from None

    def get_many(
        self, model_id: str, keys: Sequence[bytes], dim: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(found mask, vectors)``; rows of missing keys are zeros."""
        found = np.zeros(len(keys), dtype=bool)
        vectors = np.zeros((len(keys), dim), dtype=np.float32)
        position: dict[bytes, list[int]] = {}
        for index, key in enumerate(keys):
            position.setdefault(key, []).append(index)
        unique = list(position)
        with self._lock:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, vector FROM embeddings WHERE model_id = ? AND key IN ({marks})",
                    [model_id, *chunk],
                ).fetchall()
                for key, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape[0] != dim:
                        continue  # written by a different model under the same id: ignore
                    for index in position[bytes(key)]:
                        vectors[index] = vector
                        found[index] = True
        return found, vectors

    def put_many(self, model_id: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = [(model_id, key, data[i].tobytes()) for i, key in enumerate(keys)]
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO embeddings (model_id, key, vector) VALUES (?, ?, ?)", rows
            )
            self._conn.commit()

    def count(self, model_id: str | None = None) -> int:
        with self._lock:
            if model_id is None:
                row = self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()
            else:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM embeddings WHERE model_id = ?", (model_id,)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class CachedEmbedder(Embedder):
    """Wraps an embedder: texts already in the cache are read back, the rest are embedded once
    (duplicates within a call too) and stored."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.batch_size = inner.batch_size
        self.hits = 0
        self.misses = 0

    def _embed_batch(self, texts: list[str], kind: EmbeddingKind) -> np.ndarray:
        return self.inner._embed_batch(texts, kind)

    def leave_a_core(self, leave: bool) -> None:
        self.inner.leave_a_core(leave)

    def embed(
        self,
        texts: Sequence[str],
        kind: EmbeddingKind = DEFAULT_KIND,
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        items = check_texts(texts)
        kind = check_kind(kind)
        keys = [text_key(kind, t) for t in items]
        found, vectors = self.cache.get_many(self.model_id, keys, self.dim)
        missing = np.flatnonzero(~found)
        self.hits += len(items) - len(missing)
        if len(missing):
            first: dict[bytes, int] = {}
            for index in missing:
                first.setdefault(keys[index], int(index))
            todo = list(first.values())
            fresh = self.inner.embed(
                [items[i] for i in todo], kind, batch_size=batch_size, progress=progress
            )
            self.misses += len(todo)
            self.cache.put_many(self.model_id, [keys[i] for i in todo], fresh)
            row_of = {keys[i]: row for row, i in enumerate(todo)}
            for index in missing:
                vectors[index] = fresh[row_of[keys[index]]]
        return vectors
