"""The method's commands: ``compass data fetch|export``, ``compass pool build|show``,
``compass select`` and ``compass gaps``.

Each command parses, calls a service (:mod:`compass.method`, :mod:`compass.corpora`) and prints.
Heavy imports (numpy, the embedder, matplotlib) happen inside the commands so ``compass --help``
stays fast. Errors are :class:`~compass.core.errors.CompassError` subclasses: one line, exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from compass.config import Settings

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
    gettext: bool = typer.Option(
        False, "--gettext", help="Fetch only the gettext catalogs the demo and tests read."
    ),
) -> None:
    """Download LibreOffice help (+ English) and the Debian handbook with apt-get, unpack them
    under the data dir and record provenance and licences in a manifest."""
    from compass.corpora.debian import (
        DEFAULT_FETCH_LANGUAGES,
        fetch_packages,
        packages_for,
        read_manifest,
    )
    from compass.corpora.gettext_catalogs import GETTEXT_PACKAGES, fetch_gettext

    settings = _settings()
    if gettext:
        fetch_gettext(settings.data_dir)
        manifest = read_manifest(settings.data_dir)
        entries = [manifest[name] for name in GETTEXT_PACKAGES]
    else:
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
    from compass.method import build_named_pool, load_corpora

    settings = _settings()
    loaded = load_corpora(corpus, _split(languages), limit, settings.data_dir)
    for note in loaded.notes:
        typer.secho(note, fg="yellow", err=True)
    result = build_named_pool(
        settings, loaded.records, name, k=k, seed=seed, refit=refit, store=store
    )
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


def select(
    language: str = typer.Option(..., "--language", "-l", help="Target language (BCP-47)."),
    budget: int = typer.Option(..., "--budget", "-b", help="How many pool items to select."),
    target: Path = typer.Option(..., "--target", help="Target usage records (JSONL/Parquet)."),
    sampler: str = typer.Option(
        None, "--sampler", "-s", help="Sampler name (default: COMPASS_SAMPLER, 'compass')."
    ),
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
    from compass.core.languages import normalize_language
    from compass.method import select_and_write

    language = normalize_language(language)
    run = select_and_write(
        _settings(),
        language=language,
        budget=budget,
        target=target,
        sampler=sampler,
        params=_parse_params(param),
        coverage=coverage,
        pool=pool,
        out=out,
        seed=seed,
        exclude_target_language=exclude_target_language,
    )
    if run.other_languages:
        typer.secho(f"note: the target file also has {run.other_languages}", fg="yellow", err=True)
    report = run.selection.report
    console = _console()
    console.print(f"[bold]{report.reason}[/bold]")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    languages = ", ".join(f"{k} {v}" for k, v in sorted(report.per_language.items()))
    console.print(f"{len(run.selection)} items → {out}/selection.jsonl  ({languages})")


def gaps(
    language: str = typer.Option(..., "--language", "-l", help="Target language (BCP-47)."),
    target: Path = typer.Option(
        None, "--target", help="Target usage records (JSONL/Parquet); default: live counts."
    ),
    coverage: Path = typer.Option(
        None, "--coverage", help="Records the adapter was trained on (overrides --coverage-from)."
    ),
    coverage_from: str = typer.Option(
        "reference",
        "--coverage-from",
        help="Live usage only: the live adapter's 'reference' distribution (what it was built "
        "for; the default), its 'training' data (its selections, replay included) or 'none'.",
    ),
    pool: str = typer.Option("default", "--pool", help="Pool whose semantic map to use."),
    live_hours: float = typer.Option(
        24.0, "--live-hours", help="Without --target: usage counted over the last N hours."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for gaps.md and gaps.png."),
    top: int = typer.Option(15, "--top", help="How many clusters to show."),
) -> None:
    """Print where usage outweighs coverage (clusters ranked by gap, named by their labels) and
    plot it. Usage comes from a target file (on the pool's map), or from the live usage counts
    in PostgreSQL (on the active map), compared by default with what the live adapter of the
    language was built for; the first line says which coverage was used."""
    from rich.table import Table

    from compass.core.errors import DataError
    from compass.core.gaps import render_gap_report
    from compass.core.languages import normalize_language
    from compass.method import (
        COVERAGE_SOURCES,
        embed_file,
        file_gap_report,
        live_gap_report,
        open_pool,
    )

    settings = _settings()
    language = normalize_language(language)
    if coverage_from not in COVERAGE_SOURCES:
        raise DataError(f"--coverage-from must be one of {', '.join(COVERAGE_SOURCES)}")
    if target is not None:
        snapshot, embedder = open_pool(pool, settings)
        kind = snapshot.meta.get("kind", "query")
        _, coverage_vectors = embed_file(coverage, embedder, kind)
        target_records, target_vectors = embed_file(target, embedder, kind)
        assert target_vectors is not None
        report = file_gap_report(
            language, snapshot, target_records, target_vectors, coverage_vectors
        )
    else:
        snapshot, coverage_vectors = None, None
        try:  # the pool gives sample texts and embeds --coverage; live usage needs neither
            snapshot, embedder = open_pool(pool, settings)
            _, coverage_vectors = embed_file(coverage, embedder, snapshot.meta.get("kind", "query"))
        except DataError:
            if coverage is not None:
                raise
        report = live_gap_report(
            language,
            live_hours,
            settings,
            coverage_vectors=coverage_vectors,
            coverage_from=coverage_from,
            snapshot=snapshot,
        )
    folder = out or settings.data_dir / "reports"
    render_gap_report(report, folder / f"gaps-{language}.md", folder / f"gaps-{language}.png", top)
    console = _console()
    if report.coverage_source:
        console.print(f"coverage: {report.coverage_source}", highlight=False)
    table = Table(
        title=f"gaps for {language} (map {report.map_version}, k={report.k}, "
        f"JS={report.js_usage_vs_coverage:.3f})"
    )
    for column in ("rank", "cluster", "label", "usage", "coverage", "gap", "sample"):
        table.add_column(column, overflow="fold")
    for rank, row in enumerate(report.top(top), start=1):
        table.add_row(
            str(rank),
            str(row.cluster),
            row.label,
            f"{row.usage_count} ({row.usage_share:.1%})",
            f"{row.coverage_count} ({row.coverage_share:.1%})",
            f"{row.gap:.3f}",
            (row.samples[0][:70] if row.samples else ""),
        )
    console.print(table)
    console.print(f"wrote {folder}/gaps-{language}.md and .png")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(pool_app, name="pool")
    app.command("select")(select)
    app.command("gaps")(gaps)
