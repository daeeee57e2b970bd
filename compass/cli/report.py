"""``compass report``: the loop's history as a self-contained HTML page plus PNGs
(:mod:`compass.lab.report`), read from PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    out: Path = typer.Option(
        None, "--out", "-o", help="Folder for report.html and the PNGs (default: <data>/report)."
    ),
    languages: str = typer.Option(
        None, "--languages", "-l", help="Comma-separated BCP-47 tags (default: all with data)."
    ),
) -> None:
    """Write report.html (plots embedded, opens offline) and one PNG per plot: per language,
    usage by cluster over time, the drift statistic with its threshold and drift events, the gap
    behind each selection, each version's metrics against its parent with the gate, and dead
    letters by reason."""
    from compass.config import load_settings
    from compass.lab.report import write_report_files

    settings = load_settings()
    codes = [c.strip() for c in (languages or "").split(",") if c.strip()] or None
    files = write_report_files(settings, out or settings.data_dir / "report", codes)
    typer.echo(f"wrote {files.html}")
    typer.echo(f"and {len(files.pngs)} PNGs: " + ", ".join(p.name for p in files.pngs))


def register(app: typer.Typer) -> None:
    app.command("report")(report)
