"""The method's commands: ``compass data fetch|export``, ``compass pool build|show``,
``compass select`` and ``compass gaps``.

Heavy imports (numpy, the embedder, matplotlib) happen inside the commands so ``compass --help``
stays fast. Errors are :class:`~compass.core.errors.CompassError` subclasses: one line, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import numpy as np

    from compass.config import Settings
    from compass.core.records import TextRecord
    from compass.corpora.pool import PoolSnapshot
    from compass.embedders import Embedder

data_app = typer.Typer(help="Real multilingual text: fetch the Debian corpora, export records.")
pool_app = typer.Typer(help="The auxiliary pool: embed once, cluster, store (incrementally).")


def _settings() -> Settings:
    from compass.config import load_settings

    return load_settings()


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


def _console() -> Any:
    from rich.console import Console

    return Console()


# ---------------------------------------------------------------------------------- data
@data_app.command("fetch")
def data_fetch(
    languages: str = typer.Option(
        None, "--languages", "-l", help="Comma-separated codes (default: ten common ones)."
    ),
    handbook: bool = typer.Option(True, help="Also fetch the Debian handbook (26 languages)."),
) -> None:
    """Download LibreOffice help (+ English) and the Debian handbook with apt-get, unpack them
    under the data dir and record provenance and licences in a manifest."""
    from compass.corpora.debian import DEFAULT_FETCH_LANGUAGES, fetch_packages, packages_for

    settings = _settings()
    codes = _split(languages) or list(DEFAULT_FETCH_LANGUAGES)
    entries = fetch_packages(settings.data_dir, packages_for(codes, handbook=handbook))
    console = _console()
    from rich.table import Table

    table = Table(title=f"corpora in {settings.data_dir / 'corpora'}")
    for column in ("package", "version", "licence"):
        table.add_column(column)
    for entry in entries:
        table.add_row(entry.package, entry.version, entry.licence)
    console.print(table)


@data_app.command("export")
def data_export(
    corpus: str = typer.Argument(..., help="libreoffice, debian-handbook, gettext, chatterbot"),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL or .parquet file to write."),
    languages: str = typer.Option(None, "--languages", "-l"),
    limit: int = typer.Option(None, "--limit", help="At most this many records per language."),
) -> None:
    """Write a corpus as records (the format ``--target``/``--coverage`` files use)."""
    from compass.core.records import write_records
    from compass.corpora.catalog import load_corpus

    records = load_corpus(
        corpus, _split(languages) or None, data_dir=_settings().data_dir, limit_per_language=limit
    )
    write_records(records, out)
    typer.echo(f"wrote {len(records)} records to {out}")


# ---------------------------------------------------------------------------------- pool
def _load_corpora(
    corpora: list[str], languages: list[str], limit: int | None, data_dir: Path
) -> list[TextRecord]:
    from compass.core.errors import DataError
    from compass.corpora.catalog import load_corpus

    records: list[TextRecord] = []
    for corpus in corpora:
        try:
            records.extend(
                load_corpus(corpus, languages or None, data_dir=data_dir, limit_per_language=limit)
            )
            continue
        except DataError as exc:
            if not languages:
                raise
            typer.secho(f"{corpus}: {exc}; loading language by language", fg="yellow", err=True)
        for language in languages:
            try:
                records.extend(
                    load_corpus(corpus, [language], data_dir=data_dir, limit_per_language=limit)
                )
            except DataError:
                typer.secho(f"{corpus}: no {language}, skipped", fg="yellow", err=True)
    return records


def _embedder(settings: Settings) -> Embedder:
    from compass.embedders import default_cache_path, load_embedder

    return load_embedder(settings.embedder_id, cache=default_cache_path(settings.data_dir))


@pool_app.command("build")
def pool_build(
    corpus: list[str] = typer.Option(
        ["libreoffice"], "--corpus", "-c", help="Corpus name or records file; repeatable."
    ),
    languages: str = typer.Option(None, "--languages", "-l", help="Comma-separated codes."),
    limit: int = typer.Option(1000, "--limit", help="At most this many records per language."),
    name: str = typer.Option("default", "--name", help="Pool name (folder under data/pools)."),
    k: int = typer.Option(None, "--k", help="Clusters (default: chosen by silhouette)."),
    refit: bool = typer.Option(False, help="Refit the semantic map (re-clusters every point)."),
    store: bool = typer.Option(True, help="Also upsert into the vector store."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Embed a pool once (cached), fit or reuse its semantic map, store it; reruns only add
    what is new."""
    from compass.corpora.pool import build_pool, pools_dir

    settings = _settings()
    records = _load_corpora(corpus, _split(languages), limit, settings.data_dir)
    embedder = _embedder(settings)
    vector_store = None
    if store:
        from compass.qdrant.store import open_vector_store

        vector_store = open_vector_store(settings, embedder.dim, collection=f"pool_{name}")
    try:
        result = build_pool(
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
    typer.echo(
        f"pool {result.name!r}: {result.n_total} records ({result.n_new} new, "
        f"{result.n_upserted} upserted), semantic map {result.map_version} k={result.k}"
        + (" (refitted)" if result.refitted else "")
    )
    typer.echo("languages: " + ", ".join(f"{k} {v}" for k, v in result.languages.items()))


@pool_app.command("show")
def pool_show(name: str = typer.Option("default", "--name")) -> None:
    """Print a pool's metadata."""
    from compass.corpora.pool import load_snapshot, pools_dir

    snapshot = load_snapshot(pools_dir(_settings().data_dir) / name)
    typer.echo(json.dumps(snapshot.meta, indent=2))


# ------------------------------------------------------------------------- select / gaps
def _parse_params(params: list[str]) -> dict[str, Any]:
    from compass.core.errors import DataError

    out: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DataError(f"--param expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _embed_file(
    path: Path | None, embedder: Embedder, kind: str
) -> tuple[list[TextRecord], np.ndarray | None]:
    from compass.core.records import read_records

    if path is None:
        return [], None
    records = read_records(path)
    return records, embedder.embed([r.text for r in records], kind)  # type: ignore[arg-type]


def _open_pool(name: str, settings: Settings) -> tuple[PoolSnapshot, Embedder]:
    from compass.core.errors import DataError
    from compass.corpora.pool import load_snapshot, pools_dir

    snapshot = load_snapshot(pools_dir(settings.data_dir) / name)
    embedder = _embedder(settings)
    if snapshot.meta.get("embedder_id") != embedder.model_id:
        raise DataError(
            f"pool {name!r} was embedded with {snapshot.meta.get('embedder_id')} but "
            f"COMPASS_EMBEDDER_ID gives {embedder.model_id}"
        )
    return snapshot, embedder


def _gap_report(
    language: str,
    snapshot: PoolSnapshot,
    target: list[TextRecord],
    target_vectors: np.ndarray,
    coverage_vectors: np.ndarray | None,
) -> Any:
    from compass.core.gaps import build_gap_report, cluster_samples

    semantic_map = snapshot.semantic_map
    usage = semantic_map.counts(semantic_map.assign(target_vectors))
    coverage = (
        semantic_map.counts(semantic_map.assign(coverage_vectors))
        if coverage_vectors is not None and len(coverage_vectors)
        else None
    )
    samples = cluster_samples([r.text for r in target], target_vectors, semantic_map)
    pool_samples = cluster_samples(
        [r.text for r in snapshot.records], snapshot.vectors, semantic_map, per_cluster=2
    )
    for cluster, texts in pool_samples.items():
        samples.setdefault(cluster, texts)
    return build_gap_report(language, semantic_map, usage, coverage, samples=samples)


def select(
    language: str = typer.Option(..., "--language", "-l", help="Target language (BCP-47)."),
    budget: int = typer.Option(..., "--budget", "-b", help="How many pool items to select."),
    target: Path = typer.Option(..., "--target", help="Target usage records (JSONL/Parquet)."),
    sampler: str = typer.Option("compass", "--sampler", "-s"),
    coverage: Path = typer.Option(None, "--coverage", help="Records the adapter was trained on."),
    pool: str = typer.Option("default", "--pool", help="Pool name (see 'compass pool build')."),
    out: Path = typer.Option(Path("selection"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, "--seed"),
    exclude_target_language: bool = typer.Option(
        False, help="Never select pool items in the target language."
    ),
    param: list[str] = typer.Option([], "--param", help="Sampler parameter key=value."),
) -> None:
    """Select auxiliary data for a language; write selection.jsonl, report.md/.json, gaps.png."""
    from compass.core.gaps import render_gap_report
    from compass.core.languages import normalize_language
    from compass.core.samplers import SelectionRequest, get_sampler

    settings = _settings()
    language = normalize_language(language)
    chosen_sampler = get_sampler(sampler, **_parse_params(param))
    snapshot, embedder = _open_pool(pool, settings)
    kind = snapshot.meta.get("kind", "query")
    target_records, target_vectors = _embed_file(target, embedder, kind)
    _, coverage_vectors = _embed_file(coverage, embedder, kind)
    others = {r.language for r in target_records} - {language}
    if others:
        typer.secho(f"note: the target file also has {sorted(others)}", fg="yellow", err=True)
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
    gaps = _gap_report(language, snapshot, target_records, target_vectors, coverage_vectors)
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
    console = _console()
    console.print(f"[bold]{selection.report.reason}[/bold]")
    for note in selection.report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    languages = ", ".join(f"{k} {v}" for k, v in sorted(selection.report.per_language.items()))
    console.print(f"{len(selection)} items → {out}/selection.jsonl  ({languages})")


def _live_usage(language: str, hours: float, settings: Settings) -> tuple[Any, np.ndarray]:
    """The active semantic map and this language's usage counts over the last ``hours`` from
    the usage table the stream fills (PostgreSQL)."""
    from datetime import UTC, datetime, timedelta

    from compass.core.errors import DataError
    from compass.sql.server import database_url
    from compass.sql.unit_of_work import open_store

    until = datetime.now(UTC)
    with open_store(database_url(settings), pool_size=1) as store, store() as uow:
        record = uow.semantic_maps.active_semantic_map()
        if record is None:
            raise DataError("no active semantic map in the database; run the stream first")
        counts = uow.usage.usage_distribution(
            language, until - timedelta(hours=hours), until, record.version
        )
    from compass.core.distributions import counts_vector

    usage = counts_vector({c: n.total for c, n in counts.items()}, record.semantic_map.k)
    if usage.sum() <= 0:
        raise DataError(f"no live usage for {language} in the last {hours:g} h")
    return record.semantic_map, usage


def gaps(
    language: str = typer.Option(..., "--language", "-l", help="Target language (BCP-47)."),
    target: Path = typer.Option(
        None, "--target", help="Target usage records (JSONL/Parquet); default: live counts."
    ),
    coverage: Path = typer.Option(None, "--coverage", help="Records the adapter was trained on."),
    pool: str = typer.Option("default", "--pool", help="Pool whose semantic map to use."),
    live_hours: float = typer.Option(
        24.0, "--live-hours", help="Without --target: usage counted over the last N hours."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for gaps.md and gaps.png."),
    top: int = typer.Option(15, "--top", help="How many clusters to show."),
) -> None:
    """Print where usage outweighs coverage (clusters ranked by gap) and plot it. Usage comes
    from a target file, or from the live usage counts in PostgreSQL."""
    from rich.table import Table

    from compass.core.gaps import build_gap_report, cluster_samples, render_gap_report
    from compass.core.languages import normalize_language

    settings = _settings()
    language = normalize_language(language)
    snapshot, embedder = _open_pool(pool, settings)
    kind = snapshot.meta.get("kind", "query")
    _, coverage_vectors = _embed_file(coverage, embedder, kind)
    if target is not None:
        target_records, target_vectors = _embed_file(target, embedder, kind)
        assert target_vectors is not None
        report = _gap_report(language, snapshot, target_records, target_vectors, coverage_vectors)
    else:
        semantic_map, usage = _live_usage(language, live_hours, settings)
        coverage_counts = (
            semantic_map.counts(semantic_map.assign(coverage_vectors))
            if coverage_vectors is not None and len(coverage_vectors)
            else None
        )
        samples = (
            cluster_samples([r.text for r in snapshot.records], snapshot.vectors, semantic_map)
            if semantic_map.version == snapshot.semantic_map.version
            else {}
        )
        report = build_gap_report(language, semantic_map, usage, coverage_counts, samples=samples)
    folder = out or settings.data_dir / "reports"
    render_gap_report(report, folder / f"gaps-{language}.md", folder / f"gaps-{language}.png", top)
    table = Table(
        title=f"gaps for {language} (map {report.map_version}, k={report.k}, "
        f"JS={report.js_usage_vs_coverage:.3f})"
    )
    for column in ("rank", "cluster", "usage", "coverage", "gap", "sample"):
        table.add_column(column, overflow="fold")
    for rank, row in enumerate(report.top(top), start=1):
        table.add_row(
            str(rank),
            str(row.cluster),
            f"{row.usage_count} ({row.usage_share:.1%})",
            f"{row.coverage_count} ({row.coverage_share:.1%})",
            f"{row.gap:.3f}",
            (row.samples[0][:70] if row.samples else ""),
        )
    console = _console()
    console.print(table)
    console.print(f"wrote {folder}/gaps-{language}.md and .png")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(pool_app, name="pool")
    app.command("select")(select)
    app.command("gaps")(gaps)
