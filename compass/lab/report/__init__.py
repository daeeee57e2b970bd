"""``compass report``: what the continual loop did, as a self-contained HTML page plus PNGs.

Per language: the usage distribution over time by cluster, the drift statistic over time with
its threshold and the drift events marked, the gap that drove each selection, each adapter
version's metrics against its parent with the gate, and the dead letters by reason; then all
dead letters. Data comes from PostgreSQL only (:mod:`.history`); series are derived in
:mod:`.series`, drawn in :mod:`.plots`, assembled in :mod:`.html`.

Call :func:`write_report` (the demo does at its end; ``compass report`` from the shell).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from compass.config import Settings
from compass.core.languages import normalize_language

log = structlog.get_logger(__name__)

REPORT_FILE = "report.html"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote: the page and every PNG (``"<lang>-<plot>.png"``)."""

    html: Path
    pngs: tuple[Path, ...]


def write_report(
    settings_or_database_url: Settings | str,
    out_dir: str | Path,
    languages: Sequence[str] | None = None,
) -> Path:
    """Write ``report.html`` and its PNGs into ``out_dir`` (created); return the HTML's path.

    ``settings_or_database_url``: :class:`~compass.config.Settings` (its database — the
    embedded one when ``COMPASS_DATABASE_URL`` is unset — and its window and drift settings)
    or a SQLAlchemy URL (``postgresql+psycopg://…``; default settings otherwise).
    ``languages``: BCP-47 tags to show (default: every language with usage, drift or an
    adapter). PNGs are named ``<lang>-usage.png``, ``<lang>-drift.png``, ``<lang>-gaps.png``,
    ``<lang>-versions.png``, ``<lang>-dead-letters.png`` and ``all-dead-letters.png``; the HTML
    embeds the same images. Raises :class:`~compass.core.errors.InfraError` when the database
    cannot be reached; a database with no history gives a report saying so in each plot.
    """
    return write_report_files(settings_or_database_url, out_dir, languages).html


def write_report_files(
    settings_or_database_url: Settings | str,
    out_dir: str | Path,
    languages: Sequence[str] | None = None,
) -> ReportFiles:
    """:func:`write_report`, returning every file written."""
    from compass.lab.report.history import read_history
    from compass.lab.report.html import Section, language_tables, render_html
    from compass.lab.report.plots import (
        dead_letters_plot,
        drift_plot,
        gaps_plot,
        usage_plot,
        versions_plot,
    )
    from compass.lab.report.series import (
        base_window_seconds,
        drift_series,
        selection_gaps,
        usage_series,
    )
    from compass.sql.server import check_connection, database_url, make_db_engine

    if isinstance(settings_or_database_url, Settings):
        settings, url = settings_or_database_url, database_url(settings_or_database_url)
    else:
        settings, url = Settings(), settings_or_database_url
    check_connection(url)
    wanted = [normalize_language(code) for code in languages] if languages else None
    engine = make_db_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            history = read_history(conn, wanted)
    finally:
        engine.dispose()
    window = base_window_seconds(history, settings.stream_window_seconds)
    sections = []
    for language in history.languages:
        series = usage_series(history, language, window)
        points = (
            drift_series(
                history,
                series,
                window,
                false_alarm_rate=settings.drift_false_alarm_rate,
                correction=settings.drift_correction,
                min_events=settings.drift_min_events,
                reference_min_events=settings.drift_reference_min_events,
            )
            if series is not None
            else []
        )
        plots = [
            usage_plot(language, series, history),
            drift_plot(language, points, history, window),
            gaps_plot(language, selection_gaps(history, language), history),
            versions_plot(language, history.versions),
            dead_letters_plot(language, history.dead_letters),
        ]
        sections.append(Section(language, plots, language_tables(history, language)))
    sections.append(Section("*", [dead_letters_plot("*", history.dead_letters)]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    pngs = []
    for section in sections:
        prefix = "all" if section.language == "*" else section.language
        for plot in section.plots:
            name = f"{prefix}-{plot.key}.png"
            (out / name).write_bytes(plot.png)
            files[f"{section.language}/{plot.key}"] = name
            pngs.append(out / name)
    html_path = out / REPORT_FILE
    html_path.write_text(render_html(history, sections, files), encoding="utf-8")
    log.info("report.written", path=str(html_path), languages=list(history.languages))
    return ReportFiles(html_path, tuple(pngs))
