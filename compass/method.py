"""The method's offline services behind ``compass pool|select|gaps`` (the CLI only parses and
prints): load corpora, build and open pools, run a selection and write its outputs, gap reports
from a target file or from the live usage counts.

Services come from :mod:`compass.bootstrap`; the embedder must be the one the pool was embedded
with, or its vectors are not comparable (:class:`DataError` otherwise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compass.config import Settings
from compass.core.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from compass.core.gaps import GapReport
    from compass.core.records import TextRecord
    from compass.core.samplers.base import Selection
    from compass.core.semantic_map import SemanticMap
    from compass.corpora.pool import PoolBuildResult, PoolSnapshot
    from compass.ports.embedder import Embedder


@dataclass(frozen=True)
class LoadedCorpora:
    """Records of several corpora, and what could not be loaded (one line each)."""

    records: list[TextRecord]
    notes: list[str] = field(default_factory=list)


def load_corpora(
    corpora: list[str], languages: list[str], limit: int | None, data_dir: Path
) -> LoadedCorpora:
    """Records of each corpus (name or records file); with ``languages``, a corpus missing some
    of them is loaded language by language, skipping the missing ones (noted)."""
    from compass.corpora.catalog import load_corpus

    records: list[TextRecord] = []
    notes: list[str] = []
    for corpus in corpora:
        try:
            records.extend(
                load_corpus(corpus, languages or None, data_dir=data_dir, limit_per_language=limit)
            )
            continue
        except DataError as exc:
            if not languages:
                raise
            notes.append(f"{corpus}: {exc}; loading language by language")
        for language in languages:
            try:
                records.extend(
                    load_corpus(corpus, [language], data_dir=data_dir, limit_per_language=limit)
                )
            except DataError:
                notes.append(f"{corpus}: no {language}, skipped")
    return LoadedCorpora(records, notes)


def method_embedder(settings: Settings) -> Embedder:
    """``COMPASS_EMBEDDER_ID`` behind the shared embedding cache."""
    from compass.bootstrap import embedding_cache_path, open_embedder

    return open_embedder(settings, cache=embedding_cache_path(settings))


def build_named_pool(
    settings: Settings,
    records: list[TextRecord],
    name: str,
    *,
    k: int | None,
    seed: int,
    refit: bool,
    store: bool,
) -> PoolBuildResult:
    """Embed and cluster ``records`` into the pool ``name`` (``<data_dir>/pools/<name>``),
    upserting into the vector-store collection ``pool_<name>`` when ``store``."""
    from compass.bootstrap import open_vector_store
    from compass.corpora.pool import build_pool, pools_dir

    embedder = method_embedder(settings)
    vector_store = (
        open_vector_store(settings, embedder, collection=f"pool_{name}") if store else None
    )
    try:
        return build_pool(
            records,
            embedder,
            pools_dir(settings.data_dir) / name,
            store=vector_store,
            k=k,
            seed=seed,
            refit=refit,
        )
    finally:
        if vector_store is not None:
            vector_store.close()


def open_pool(name: str, settings: Settings) -> tuple[PoolSnapshot, Embedder]:
    """The pool ``name`` and the embedder it was embedded with (the configured one must be it)."""
    from compass.corpora.pool import load_snapshot, pools_dir

    snapshot = load_snapshot(pools_dir(settings.data_dir) / name)
    embedder = method_embedder(settings)
    if snapshot.meta.get("embedder_id") != embedder.model_id:
        raise DataError(
            f"pool {name!r} was embedded with {snapshot.meta.get('embedder_id')} but "
            f"COMPASS_EMBEDDER_ID gives {embedder.model_id}"
        )
    return snapshot, embedder


def embed_file(
    path: Path | None, embedder: Embedder, kind: str
) -> tuple[list[TextRecord], np.ndarray | None]:
    """The records of ``path`` (JSONL/Parquet) and their vectors; nothing for no path."""
    from compass.core.records import read_records

    if path is None:
        return [], None
    records = read_records(path)
    return records, embedder.embed([r.text for r in records], kind)  # type: ignore[arg-type]


def _coverage_counts(semantic_map: SemanticMap, vectors: np.ndarray | None) -> np.ndarray | None:
    if vectors is None or not len(vectors):
        return None
    return semantic_map.counts(semantic_map.assign(vectors))


def file_gap_report(
    language: str,
    snapshot: PoolSnapshot,
    target: list[TextRecord],
    target_vectors: np.ndarray,
    coverage_vectors: np.ndarray | None,
) -> GapReport:
    """Gaps of target usage (embedded records) against coverage, on the pool's map; samples
    from the target, then from the pool for clusters the target does not reach."""
    from compass.core.gaps import build_gap_report, cluster_samples

    semantic_map = snapshot.semantic_map
    usage = semantic_map.counts(semantic_map.assign(target_vectors))
    coverage = _coverage_counts(semantic_map, coverage_vectors)
    samples = cluster_samples([r.text for r in target], target_vectors, semantic_map)
    pool_samples = cluster_samples(
        [r.text for r in snapshot.records], snapshot.vectors, semantic_map, per_cluster=2
    )
    for cluster, texts in pool_samples.items():
        samples.setdefault(cluster, texts)
    return build_gap_report(language, semantic_map, usage, coverage, samples=samples)


def live_usage(language: str, hours: float, settings: Settings) -> tuple[SemanticMap, np.ndarray]:
    """The active semantic map and this language's usage counts over the last ``hours`` from
    the usage table the stream fills (PostgreSQL)."""
    from datetime import UTC, datetime, timedelta

    from compass.bootstrap import open_unit_of_work
    from compass.core.distributions import counts_vector

    until = datetime.now(UTC)
    with open_unit_of_work(settings, pool_size=1) as store, store() as uow:
        record = uow.semantic_maps.active_semantic_map()
        if record is None:
            raise DataError("no active semantic map in the database; run the stream first")
        counts = uow.usage.usage_distribution(
            language, until - timedelta(hours=hours), until, record.version
        )
    usage = counts_vector({c: n.total for c, n in counts.items()}, record.semantic_map.k)
    if usage.sum() <= 0:
        raise DataError(f"no live usage for {language} in the last {hours:g} h")
    return record.semantic_map, usage


def live_gap_report(
    language: str,
    snapshot: PoolSnapshot,
    coverage_vectors: np.ndarray | None,
    hours: float,
    settings: Settings,
) -> GapReport:
    """Gaps of the live usage counts against coverage, on the active map (pool samples when
    the pool uses the same map)."""
    from compass.core.gaps import build_gap_report, cluster_samples

    semantic_map, usage = live_usage(language, hours, settings)
    samples = (
        cluster_samples([r.text for r in snapshot.records], snapshot.vectors, semantic_map)
        if semantic_map.version == snapshot.semantic_map.version
        else {}
    )
    coverage = _coverage_counts(semantic_map, coverage_vectors)
    return build_gap_report(language, semantic_map, usage, coverage, samples=samples)


@dataclass(frozen=True)
class SelectionRun:
    """A selection and what it wrote into ``out``; ``other_languages``: target-file languages
    other than the target language."""

    selection: Selection
    out: Path
    other_languages: list[str]


def select_and_write(
    settings: Settings,
    *,
    language: str,
    budget: int,
    target: Path,
    sampler: str | None,
    params: dict[str, Any],
    coverage: Path | None,
    pool: str,
    out: Path,
    seed: int,
    exclude_target_language: bool,
) -> SelectionRun:
    """Select ``budget`` pool items for ``language`` with ``sampler`` (default
    ``COMPASS_SAMPLER``); write
    ``selection.jsonl``, ``report.md``, ``report.json`` and ``gaps.png`` into ``out``."""
    from compass.bootstrap import sampler_for
    from compass.core.gaps import render_gap_report
    from compass.core.samplers import SelectionRequest

    chosen_sampler = sampler_for(settings, sampler, **params)
    snapshot, embedder = open_pool(pool, settings)
    kind = snapshot.meta.get("kind", "query")
    target_records, target_vectors = embed_file(target, embedder, kind)
    _, coverage_vectors = embed_file(coverage, embedder, kind)
    others = sorted({r.language for r in target_records} - {language})
    request = SelectionRequest(
        target_language=language,
        budget=budget,
        pool=snapshot.to_pool(),
        semantic_map=snapshot.semantic_map,
        target_vectors=target_vectors,
        coverage_vectors=coverage_vectors,
        seed=seed,
        exclude_languages=(language,) if exclude_target_language else (),
    )
    selection = chosen_sampler.select(request)
    out.mkdir(parents=True, exist_ok=True)
    clusters = request.pool.clusters
    with (out / "selection.jsonl").open("w", encoding="utf-8") as handle:
        for rank, index in enumerate(selection.indices.tolist()):
            row = snapshot.records[index].to_dict() | {"cluster": int(clusters[index])}
            handle.write(json.dumps(row | {"rank": rank}, ensure_ascii=False) + "\n")
    assert target_vectors is not None
    gaps = file_gap_report(language, snapshot, target_records, target_vectors, coverage_vectors)
    render_gap_report(gaps, None, out / "gaps.png")
    (out / "report.md").write_text(
        selection.report.to_markdown() + "\n" + gaps.to_markdown(), encoding="utf-8"
    )
    (out / "report.json").write_text(
        json.dumps(
            selection.report.to_dict()
            | {"pool": pool, "map_version": snapshot.semantic_map.version},
            indent=2,
            ensure_ascii=False,
        )
    )
    return SelectionRun(selection, out, others)
