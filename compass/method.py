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
from typing import TYPE_CHECKING, Any, Literal

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
    source = (
        "none (no --coverage records)"
        if coverage is None
        else f"the --coverage records ({int(coverage.sum())} texts)"
    )
    return build_gap_report(
        language, semantic_map, usage, coverage, samples=samples, coverage_source=source
    )


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


CoverageSource = Literal["reference", "training", "none"]
COVERAGE_SOURCES: tuple[str, ...] = ("reference", "training", "none")


@dataclass(frozen=True)
class Coverage:
    """Coverage counts per cluster (``(k,)``, ``None``: nothing covered) and, in words, what
    they are — ``compass gaps`` prints it."""

    counts: np.ndarray | None
    description: str


def live_adapter_coverage(
    language: str, k: int, source: CoverageSource, settings: Settings
) -> Coverage:
    """The coverage of the live adapter of ``language`` (``COMPASS_BASE_MODEL_ID``):

    * ``reference`` (default): its reference distribution — the drift window it was built for,
      as counts (``reference_counts``, migration 0004), else ``reference_distribution`` × the
      triggering window's sampled events; the distribution the stream compares usage with;
    * ``training``: the data it was trained on — the per-cluster counts of the selection of the
      live version and of every ancestor (continued versions replay their parents' data),
      from ``sampler_params.per_cluster``;
    * ``none``: nothing covered (every cluster with usage is a gap).

    Without a live adapter the coverage is empty, and the description says so."""
    from compass.bootstrap import open_unit_of_work
    from compass.core.distributions import counts_vector

    if source == "none":
        return Coverage(None, "none (--coverage-from none): usage alone")
    if source not in COVERAGE_SOURCES:
        raise DataError(f"unknown coverage source {source!r}; use one of {COVERAGE_SOURCES}")
    base_model = settings.base_model_id
    with open_unit_of_work(settings, pool_size=1) as store, store() as uow:
        live = uow.adapters.active_version(language, base_model)
        lineage = [] if live is None else uow.adapters.list_versions(live.adapter_id)
    if live is None:
        return Coverage(None, f"none: no live {language} adapter for {base_model}")
    name = f"live adapter {live.adapter_name}"
    if source == "reference":
        if live.reference_counts is not None:
            counts = counts_vector(live.reference_counts.counts, k)
        else:
            size = live.trigger_n_sampled or 100
            counts = counts_vector(live.reference_distribution, k) * size
        return Coverage(
            counts,
            f"{name}'s reference distribution (the usage it was built for, "
            f"{counts.sum():.0f} events)",
        )
    by_number = {v.number: v for v in lineage}
    total: dict[int, float] = {}
    chain: list[int] = []
    version: Any = live
    while version is not None and version.number not in chain:
        chain.append(version.number)
        for cluster, n in (version.sampler_params.get("per_cluster") or {}).items():
            total[int(cluster)] = total.get(int(cluster), 0.0) + float(n)
        version = by_number.get(version.parent_version) if version.parent_version else None
    counts = counts_vector(total, k)
    versions = ", ".join(f"v{n}" for n in chain)
    return Coverage(
        counts if counts.sum() > 0 else None,
        f"{name}'s training data (selections of {versions}: {counts.sum():.0f} items)",
    )


def live_gap_report(
    language: str,
    hours: float,
    settings: Settings,
    *,
    coverage_vectors: np.ndarray | None = None,
    coverage_from: CoverageSource = "reference",
    snapshot: PoolSnapshot | None = None,
) -> GapReport:
    """Gaps of the live usage counts on the active map against a coverage: the embedded
    ``coverage_vectors`` (a records file) when given, else the live adapter's
    (:func:`live_adapter_coverage`). Rows carry the map's labels, and pool samples when
    ``snapshot`` uses the same map."""
    from compass.core.gaps import build_gap_report, cluster_samples

    semantic_map, usage = live_usage(language, hours, settings)
    samples = (
        cluster_samples([r.text for r in snapshot.records], snapshot.vectors, semantic_map)
        if snapshot is not None and semantic_map.version == snapshot.semantic_map.version
        else {}
    )
    if coverage_vectors is not None:
        coverage = Coverage(
            _coverage_counts(semantic_map, coverage_vectors),
            f"the --coverage records ({len(coverage_vectors)} texts)",
        )
    else:
        coverage = live_adapter_coverage(language, semantic_map.k, coverage_from, settings)
    return build_gap_report(
        language,
        semantic_map,
        usage,
        coverage.counts,
        samples=samples,
        coverage_source=coverage.description,
    )


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
