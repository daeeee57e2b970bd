"""Building and loading an auxiliary pool: embed once, cluster, store — incrementally.

A pool lives in ``<data_dir>/pools/<name>/``: ``records.jsonl``, ``vectors.npy`` (float32, one
row per record), ``semantic_map.npz`` and ``meta.json`` (embedder, embedding kind, map version).
This snapshot is what selection reads (a million vectors load in a second from ``.npy``); the
same points go to the vector store (Qdrant Edge or server) with language, topic, source and
cluster payloads, for search and for the streaming side.

Rebuilding is incremental: records already in the snapshot (same id and text) are neither
embedded nor re-upserted; the semantic map is kept so cluster ids stay stable, unless
``refit=True`` (then every point's cluster payload is rewritten). Embeddings also go through
the embedding cache, so even a deleted snapshot rebuilds without re-embedding.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from compass.core.errors import DataError
from compass.core.records import TextRecord, read_records, write_records
from compass.core.semantic_map import SemanticMap
from compass.ports.embedder import DEFAULT_KIND, Embedder, EmbeddingKind

if TYPE_CHECKING:
    from compass.core.samplers.base import Pool
    from compass.ports.vector_store import VectorStore

log = structlog.get_logger(__name__)

POOL_NAMESPACE = uuid.UUID("6f1d7c3e-2a4b-5c8d-9e0f-1a2b3c4d5e6f")
_UPSERT_BATCH = 512


def pools_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "pools"


def point_id(pool_name: str, record_id: str) -> uuid.UUID:
    """The vector-store id of a pool record: stable, so re-upserts replace, never duplicate."""
    return uuid.uuid5(POOL_NAMESPACE, f"{pool_name}\x1f{record_id}")


@dataclass(frozen=True)
class PoolBuildResult:
    name: str
    directory: Path
    n_total: int
    n_new: int
    n_upserted: int
    map_version: str
    k: int
    refitted: bool
    languages: dict[str, int]


@dataclass(frozen=True, eq=False)
class PoolSnapshot:
    """A built pool on disk, loaded."""

    name: str
    records: list[TextRecord]
    vectors: np.ndarray
    semantic_map: SemanticMap
    meta: dict[str, Any]

    def to_pool(self) -> Pool:
        from compass.core.samplers.base import Pool

        return Pool.from_records(self.records, self.vectors, self.semantic_map)


def load_snapshot(directory: str | Path) -> PoolSnapshot:
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise DataError(f"no pool at {directory}; build one with 'compass pool build'")
    try:
        meta = json.loads(meta_path.read_text())
        records = read_records(directory / "records.jsonl")
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"pool at {directory} is damaged: {exc}") from None
    if len(records) != len(vectors):
        raise DataError(f"pool at {directory}: {len(records)} records but {len(vectors)} vectors")
    semantic_map = SemanticMap.load(directory / "semantic_map.npz")
    return PoolSnapshot(directory.name, records, np.asarray(vectors), semantic_map, meta)


def _save(
    directory: Path,
    records: list[TextRecord],
    vectors: np.ndarray,
    meta: dict[str, Any],
    semantic_map: SemanticMap,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_records(records, directory / "records.jsonl.tmp")
    np.save(directory / "vectors.tmp.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    semantic_map.save(directory / "semantic_map.npz")
    (directory / "records.jsonl.tmp").replace(directory / "records.jsonl")
    (directory / "vectors.tmp.npy").replace(directory / "vectors.npy")
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def display_texts(records: Sequence[TextRecord]) -> list[str]:
    """One text per record for cluster labels: its English parallel where one is known."""
    from compass.core.cluster_labels import english_where_parallel
    from compass.corpora.parallel import english_of_key

    return english_where_parallel(
        [r.text for r in records],
        [r.language for r in records],
        [r.parallel_key for r in records],
        english_of_key,
    )


def _payload(name: str, record: TextRecord, cluster: int, map_version: str) -> dict[str, Any]:
    return {
        "pool": name,
        "record_id": record.id,
        "language": record.language,
        "text": record.text,
        "source": record.source,
        "topic": record.topic or "",
        "parallel_key": record.parallel_key or "",
        "cluster": int(cluster),
        "map_version": map_version,
    }


def build_pool(
    records: Sequence[TextRecord],
    embedder: Embedder,
    directory: str | Path,
    *,
    store: VectorStore | None = None,
    kind: EmbeddingKind = DEFAULT_KIND,
    k: int | None = None,
    k_range: tuple[int, int] = (8, 128),
    seed: int = 0,
    refit: bool = False,
    fit_map: Callable[[np.ndarray, list[str]], SemanticMap] | None = None,
) -> PoolBuildResult:
    """Add ``records`` to the pool in ``directory`` (creating it), embed only what is new,
    (re)fit the semantic map when needed, upsert new or re-clustered points into ``store``."""
    directory = Path(directory)
    name = directory.name
    existing: PoolSnapshot | None = None
    if (directory / "meta.json").exists():
        existing = load_snapshot(directory)
        if existing.meta.get("embedder_id") != embedder.model_id:
            raise DataError(
                f"pool {name!r} was embedded with {existing.meta.get('embedder_id')}, not "
                f"{embedder.model_id}; build it under another --name"
            )
    old_records = list(existing.records) if existing else []
    old_vectors = existing.vectors if existing else np.zeros((0, embedder.dim), np.float32)
    position = {r.id: i for i, r in enumerate(old_records)}
    fresh: list[TextRecord] = []
    changed: list[int] = []
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            continue
        seen.add(record.id)
        at = position.get(record.id)
        if at is None:
            fresh.append(record)
        elif old_records[at].text != record.text or old_records[at] != record:
            changed.append(at)
            old_records[at] = record
    if not old_records and not fresh:
        raise DataError("no records to build a pool from")
    to_embed = [old_records[i].text for i in changed] + [r.text for r in fresh]
    vectors_new = embedder.embed(to_embed, kind) if to_embed else np.zeros((0, embedder.dim))
    all_vectors = np.array(old_vectors, dtype=np.float32, copy=True)
    if changed:
        all_vectors[changed] = vectors_new[: len(changed)]
    all_vectors = np.concatenate([all_vectors, vectors_new[len(changed) :]]).astype(np.float32)
    all_records = old_records + fresh
    languages = [r.language for r in all_records]

    refitted = existing is None or refit
    if refitted:
        if fit_map is not None:
            semantic_map = fit_map(all_vectors, languages)
        else:
            semantic_map = SemanticMap.fit(
                all_vectors,
                languages=languages,
                parallel_keys=[r.parallel_key for r in all_records],
                k=k,
                k_range=k_range,
                seed=seed,
                embedder_id=embedder.model_id,
            )
    else:
        assert existing is not None
        semantic_map = existing.semantic_map
    if refitted or not semantic_map.labels or len(fresh) + len(changed):
        semantic_map = semantic_map.with_labels(display_texts(all_records), all_vectors)
    clusters = semantic_map.assign(all_vectors)

    upserted = 0
    if store is not None:
        from compass.ports.vector_store import VectorPoint

        targets = (
            range(len(all_records))
            if refitted
            else [*changed, *range(len(old_records), len(all_records))]
        )
        batch: list[VectorPoint] = []
        for index in targets:
            record = all_records[index]
            batch.append(
                VectorPoint(
                    id=point_id(name, record.id),
                    vector=all_vectors[index],
                    payload=_payload(name, record, int(clusters[index]), semantic_map.version),
                )
            )
            if len(batch) >= _UPSERT_BATCH:
                store.upsert(batch)
                upserted += len(batch)
                batch = []
        if batch:
            store.upsert(batch)
            upserted += len(batch)
        store.flush()

    counts: dict[str, int] = {}
    for language in languages:
        counts[language] = counts.get(language, 0) + 1
    language_counts = dict(sorted(counts.items()))
    meta: dict[str, Any] = {
        "name": name,
        "embedder_id": embedder.model_id,
        "kind": kind,
        "n": len(all_records),
        "map_version": semantic_map.version,
        "k": semantic_map.k,
        "languages": language_counts,
        "created_at": existing.meta.get("created_at") if existing else None,
        "updated_at": datetime.now(UTC).isoformat(),
    }
    meta["created_at"] = meta["created_at"] or meta["updated_at"]
    _save(directory, all_records, all_vectors, meta, semantic_map)
    log.info(
        "pool.built", pool=name, total=len(all_records), new=len(fresh), upserted=upserted,
        map_version=semantic_map.version, k=semantic_map.k,
    )  # fmt: skip
    return PoolBuildResult(
        name=name,
        directory=directory,
        n_total=len(all_records),
        n_new=len(fresh) + len(changed),
        n_upserted=upserted,
        map_version=semantic_map.version,
        k=semantic_map.k,
        refitted=refitted,
        languages=language_counts,
    )
