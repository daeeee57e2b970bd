"""``compass experiment``: v1 (no subcommand, ``--quick``) and v2 (``prepare``, ``analyse``).

v2 is split by where it runs (docs/results.md, "Pre-registered design (v2)"):
``compass experiment prepare`` (CPU: texts, embeddings, map, units, selections -> bundle),
``python compass/lab/experiment/train_eval.py`` (GPU or CPU shards, no compass imports),
``compass experiment analyse`` (CPU: tests, tables, plots -> docs).
"""

from __future__ import annotations

from pathlib import Path

import typer

from compass.core.errors import DataError

experiment_app = typer.Typer(
    help="The experiment of docs/results.md: v1 (no subcommand) and v2 (prepare, analyse).",
    invoke_without_command=True,
)


@experiment_app.callback()
def experiment(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="The few-minute configuration (CI)."),
    out: Path | None = typer.Option(None, help="Results folder (default runs/experiment-<name>)."),
    parts: str = typer.Option("main,continual", help="Which parts: main, continual."),
    report_only: bool = typer.Option(False, help="Only rebuild report.md and the plot."),
    plot: Path | None = typer.Option(None, help="Also write the plot here (e.g. docs/...png)."),
    languages: str | None = typer.Option(
        None, help="Only these target languages (comma-separated): run shards in parallel."
    ),
    seeds: str | None = typer.Option(None, help="Only these seeds (comma-separated): shards."),
    methods: str | None = typer.Option(
        None, help="Only these methods, in this order (comma-separated): shards."
    ),
    threads: int = typer.Option(1, help="torch CPU threads per process (0: torch's default)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """v1: compare COMPASS with zero-shot, all-data, random, linguistic and importance sampling,
    then ECDA with naive/replay/EWC/retraining, on real multilingual text. Resumes."""
    if ctx.invoked_subcommand is not None:
        return
    from compass.config import load_settings
    from compass.lab.experiment import full_config, quick_config, run_experiment, write_report

    config = quick_config() if quick else full_config()
    folder = out or Path("runs") / f"experiment-{config.name}"
    if not report_only:
        wanted = tuple(p.strip() for p in parts.split(",") if p.strip())
        unknown = sorted(set(wanted) - {"main", "continual"})
        if unknown:
            raise DataError(f"unknown parts {unknown}; use main and/or continual")
        only = tuple(c.strip() for c in languages.split(",") if c.strip()) if languages else None
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip()) if seeds else None
        method_list = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods else None
        run_experiment(
            config, folder, load_settings().data_dir, progress, wanted, only, threads or None,
            seed_list, method_list,
        )  # fmt: skip
    report = write_report(folder)
    if plot is not None:
        import shutil

        plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "comparison.png", plot)
    typer.echo(f"report: {report}")


@experiment_app.command("prepare")
def prepare(
    preset: str = typer.Option("v2", help="v2 (the registered grid), pilot or tiny."),
    out: Path | None = typer.Option(None, help="Bundle folder (default runs/bundle-<preset>)."),
) -> None:
    """v2 on the CPU: texts, embeddings (cached), semantic map, units and every registered
    sampler's selection -> a bundle for train_eval.py."""
    from compass.bootstrap import embedding_cache_path, open_embedder
    from compass.config import Settings, load_settings
    from compass.lab.experiment.prepare import prepare_bundle
    from compass.lab.experiment.v2_config import v2_preset

    config = v2_preset(preset)
    settings = load_settings()
    services = Settings(data_dir=settings.data_dir, embedder_id=config.embedder_id)
    embedder = open_embedder(services, cache=embedding_cache_path(services))
    folder = out or Path("runs") / f"bundle-{config.name}"
    manifest = prepare_bundle(config, settings.data_dir, folder, embedder)
    typer.echo(f"bundle: {manifest.parent}")


@experiment_app.command("analyse")
def analyse(
    results: list[Path] = typer.Option(..., "--results", help="results.jsonl; repeatable."),
    bundle: Path = typer.Option(..., "--bundle", help="The bundle the results came from."),
    doc: Path | None = typer.Option(
        None, help="Markdown file whose v2 results section is (re)written (docs/results.md)."
    ),
    images: Path = typer.Option(Path("docs/img"), help="Folder for the PNG plots."),
    title: str = typer.Option("v2 results", help="Section title in the markdown file."),
) -> None:
    """v2 on the CPU: sign-flip tests, bootstrap intervals, TOST, power, gap check, plots."""
    from compass.lab.experiment.analyse import analyse_results

    text = analyse_results(results, bundle, images, doc, title)
    if doc is None:
        typer.echo(text)
    else:
        typer.echo(f"wrote {doc} and plots in {images}")


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")
