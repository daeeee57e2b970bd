"""The report as one self-contained HTML page: the plots embedded as base64 PNG (``data:``
URIs), inline CSS, no script and no external reference, so it opens offline and can be mailed.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from compass.lab.report.history import History
from compass.lab.report.plots import Plot

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-weight: 600; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .muted { color: #666; } nav a { margin-right: 1em; }
"""


@dataclass(frozen=True)
class Section:
    """One language (or ``"*"`` for the whole system): its plots and tables (HTML)."""

    language: str
    plots: Sequence[Plot]
    tables: str = ""


def _img(plot: Plot, file_name: str) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure id="{escape(file_name)}"><figcaption>{escape(plot.title)}</figcaption>'
        f'<img alt="{escape(plot.title)}" title="{escape(file_name)}" '
        f'src="data:image/png;base64,{data}"></figure>'
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def language_tables(history: History, language: str) -> str:
    """The drift events (with their labelled top changes) and the versions of ``language``."""
    drifts = [d for d in history.drifts if d.language == language]
    versions = [v for v in history.versions if v.language == language]
    parts = []
    if drifts:
        rows = []
        for d in drifts:
            changes = "; ".join(
                escape(
                    f"{c.get('label') or history.label(d.map_version, int(c['cluster']))} "
                    f"{float(c['reference_share']):.2f}→{float(c['window_share']):.2f}"
                )
                for c in d.top_changes[:3]
            )
            rows.append(
                [
                    escape(f"{d.window_start:%Y-%m-%d %H:%M}–{d.window_end:%H:%M}"),
                    f"{d.statistic:.4f}",
                    f"{d.threshold:.4f}",
                    str(d.n_sampled),
                    escape(f"v{d.reference_version}" if d.reference_version else "live usage"),
                    escape(f"v{d.version} {d.version_status}" if d.version else "—"),
                    changes,
                ]
            )
        header = ["window (UTC)", "statistic", "threshold", "events", "reference",
                  "version", "top cluster changes (share before→after)"]  # fmt: skip
        parts.append("<h3>Drift events</h3>" + _table(header, rows))
    if versions:
        rows = [
            [
                escape(v.adapter_name),
                escape(v.status),
                escape(f"v{v.parent_version}" if v.parent_version else "—"),
                escape(v.sampler),
                escape(", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))),
                escape(v.notes),
            ]
            for v in versions
        ]
        parts.append(
            "<h3>Adapter versions</h3>"
            + _table(["name", "status", "parent", "sampler", "metrics", "gate"], rows)
        )
    return "".join(parts)


def render_html(history: History, sections: Sequence[Section], files: dict[str, str]) -> str:
    """The page; ``files`` maps each plot's ``(language, key)`` file name for its anchor."""
    nav = " ".join(
        f'<a href="#lang-{escape(s.language)}">{escape(s.language)}</a>'
        for s in sections
        if s.language != "*"
    )
    body = []
    for section in sections:
        name = "All languages" if section.language == "*" else f"Language: {section.language}"
        body.append(f'<h2 id="lang-{escape(section.language)}">{escape(name)}</h2>')
        for plot in section.plots:
            body.append(_img(plot, files[f"{section.language}/{plot.key}"]))
        body.append(section.tables)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>COMPASS report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>COMPASS report</h1>"
        f'<p class="muted">Read from PostgreSQL at {history.read_at:%Y-%m-%d %H:%M:%S} UTC: '
        f"{len(history.usage)} usage cells, {len(history.drifts)} drift events, "
        f"{len(history.versions)} adapter versions, "
        f"{sum(d.count for d in history.dead_letters)} dead letters. "
        "Clusters are named by their labels (top terms of the semantic map).</p>"
        f"<nav>{nav}</nav>{''.join(body)}</body></html>"
    )
