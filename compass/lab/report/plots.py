"""The report's figures (matplotlib, Agg backend): one function per plot, each returning a
:class:`Plot` — its title and PNG bytes — so the HTML embeds exactly what is written to disk.

Every plot is drawn even when there is nothing to show (then it says so), so a report always
has the same plots per language.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from compass.core.cluster_labels import clip
from compass.core.gate import PromotionGate
from compass.lab.report.history import DeadLetterCount, DriftRow, History, VersionRow
from compass.lab.report.series import DriftPoint, SelectionGap, UsageSeries

_COLOURS = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4",
    "#b2df8a", "#fb9a99",
]  # fmt: skip
_OTHER = "#bbbbbb"
TOP_CLUSTERS = 8


@dataclass(frozen=True)
class Plot:
    """One figure: ``key`` (file-name part), ``title`` (shown above it in the HTML, and in the
    image), ``png`` bytes."""

    key: str
    title: str
    png: bytes


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, key: str, title: str) -> Plot:
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return Plot(key, title, buffer.getvalue())


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555")
    ax.set_axis_off()


def _mark_drifts(ax: Any, drifts: Sequence[DriftRow]) -> None:
    for drift in drifts:
        ax.axvspan(drift.window_start, drift.window_end, color="#d62728", alpha=0.12, lw=0)


def usage_plot(language: str, series: UsageSeries | None, history: History) -> Plot:
    """Stacked shares of the top clusters per window (the rest as "other"); drift windows
    shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.2))
    title = f"{language}: usage distribution over time by cluster"
    if series is None or not series.starts:
        _empty(ax, f"no usage counted for {language}")
        return _finish(fig, "usage", title)
    shares = series.shares
    order = np.argsort(-series.sampled.sum(axis=0), kind="stable")[:TOP_CLUSTERS]
    rest = np.setdiff1d(np.arange(len(series.clusters)), order)
    layers = [shares[:, j] for j in order] + ([shares[:, rest].sum(axis=1)] if len(rest) else [])
    names = [clip(history.label(series.map_version, series.clusters[j]), 42) for j in order]
    names += ["other clusters"] if len(rest) else []
    colours = _COLOURS[: len(order)] + ([_OTHER] if len(rest) else [])
    # step="post" draws each window over [start, end): repeat the last window's shares at its end
    ends = [*series.starts, series.starts[-1] + timedelta(seconds=series.window_seconds)]
    layers = [np.append(layer, layer[-1]) for layer in layers]
    ax.stackplot(ends, *layers, labels=names, colors=colours, step="post")
    ax.set_xlim(ends[0], ends[-1])
    _mark_drifts(ax, [d for d in history.drifts if d.language == language])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the window's events")
    ax.set_xlabel("window start (UTC)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_title(
        f"semantic map {series.map_version}; {series.window_seconds} s windows; shaded: drift "
        f"windows; {int(series.totals.sum())} events",
        fontsize=9,
    )
    fig.autofmt_xdate()
    return _finish(fig, "usage", title)


def drift_plot(
    language: str, points: Sequence[DriftPoint], history: History, window_seconds: int = 3600
) -> Plot:  # statistic vs threshold, events and promotions marked
    """The recomputed statistic per window against its threshold; recorded drift events as
    red markers (their own statistic and threshold); promotions as dotted lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.2))
    title = f"{language}: drift statistic over time with threshold and drift events"
    drifts = [d for d in history.drifts if d.language == language]
    judged = [p for p in points if not math.isnan(p.statistic)]
    if not judged and not drifts:
        _empty(ax, f"no drift check could be computed for {language}")
        return _finish(fig, "drift", title)
    window = timedelta(seconds=window_seconds)
    moments = [p.start for p in points] + [d.window_start for d in drifts]
    ax.set_xlim(min(moments) - window / 2, max(moments) + window)
    unjudged = [p for p in judged if math.isnan(p.threshold)]
    if unjudged:
        ax.scatter([p.start for p in unjudged], [p.statistic for p in unjudged], s=30,
                   facecolors="none", edgecolors="#1f78b4", zorder=4,
                   label="too few events to judge")  # fmt: skip
    if judged:
        starts = [p.start for p in judged]
        ax.plot(starts, [p.statistic for p in judged], "o-", color="#1f78b4", ms=3,
                label="JS statistic (recomputed per window)")  # fmt: skip
        ax.step(starts, [p.threshold for p in judged], where="mid", color="#555555", ls="--",
                label="calibrated threshold")  # fmt: skip
    if drifts:
        starts = [d.window_start for d in drifts]
        ax.scatter(starts, [d.statistic for d in drifts], s=90, marker="*", color="#d62728",
                   zorder=5, label="drift event (recorded)")  # fmt: skip
        ax.scatter([d.window_start for d in drifts], [d.threshold for d in drifts], s=40,
                   marker="_", color="#d62728", zorder=5, label="its threshold")  # fmt: skip
    right = max(moments) + window
    later = [
        f"v{v.version} {v.activated_at:%H:%M}"
        for v in history.versions
        if v.language == language and v.activated_at is not None and v.activated_at > right
    ]
    for version in history.versions:
        if version.language == language and version.activated_at is not None:
            if version.activated_at > right:
                continue
            ax.axvline(version.activated_at, color="#33a02c", ls=":", lw=1.5)
            ax.annotate(f"v{version.version} live", (version.activated_at, 1.0),
                        xycoords=("data", "axes fraction"), fontsize=8, color="#33a02c",
                        ha="left", va="top", rotation=90)  # fmt: skip
    ax.set_ylabel("Jensen–Shannon divergence (bits)")
    ax.set_xlabel("window start (UTC)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(
        f"{len(drifts)} drift event(s); green: adapter versions going live"
        + (f" (after the last window: {', '.join(later)})" if later else ""),
        fontsize=9,
    )
    fig.autofmt_xdate()
    return _finish(fig, "drift", title)


def gaps_plot(language: str, gaps: Sequence[SelectionGap], history: History) -> Plot:
    """Per version: the drift window's usage vs the parent's coverage and the selection, for
    the clusters with the largest gap."""
    plt = _pyplot()
    title = f"{language}: the gap that drove each selection"
    if not gaps:
        fig, ax = plt.subplots(figsize=(11, 2.2))
        _empty(ax, f"no adapter version of {language} was trained for a drift")
        return _finish(fig, "gaps", title)
    fig, axes = plt.subplots(1, len(gaps), figsize=(11, 4.6), squeeze=False)
    for ax, gap in zip(axes[0], gaps, strict=True):
        order = np.argsort(-gap.gap, kind="stable")[:TOP_CLUSTERS][::-1]
        y = np.arange(len(order))
        selected = gap.selected / gap.selected.sum() if gap.selected.sum() > 0 else gap.selected
        ax.barh(y + 0.27, gap.usage[order], 0.27, color="#d95f02", label="usage (drift window)")
        ax.barh(y, gap.coverage[order], 0.27, color="#1b9e77", label="coverage (parent)")
        ax.barh(y - 0.27, selected[order], 0.27, color="#7570b3", label="selected data")
        names = [
            f"{clip(history.label(gap.map_version, gap.clusters[j]), 30)}  gap {gap.gap[j]:.2f}"
            for j in order
        ]
        ax.set_yticks(y, names, fontsize=7)
        ax.set_xlabel("share")
        parent = f"v{gap.version.parent_version}" if gap.version.parent_version else "none"
        ax.set_title(
            f"v{gap.version.version} ({gap.version.status}), parent {parent}, "
            f"{int(gap.selected.sum())} items",
            fontsize=9,
        )
    axes[0][0].legend(loc="lower right", fontsize=7)
    return _finish(fig, "gaps", title)


def _interval(metrics: dict[str, float], name: str) -> tuple[float, float] | None:
    """``(low, high)`` of a metric when the version recorded one: ``<name>_ci_low`` /
    ``<name>_ci_high`` (or ``<name>_low`` / ``<name>_high``)."""
    for low, high in ((f"{name}_ci_low", f"{name}_ci_high"), (f"{name}_low", f"{name}_high")):
        if low in metrics and high in metrics:
            return metrics[low], metrics[high]
    return None


def versions_plot(
    language: str, versions: Sequence[VersionRow], gate: PromotionGate = PromotionGate()
) -> Plot:
    """Per version: held-out loss of its parent (the live adapter then) and of the candidate
    on the new and the earlier usage; the gate's gain and forgetting with their thresholds and,
    when recorded, their intervals."""
    plt = _pyplot()
    title = f"{language}: each adapter version's metrics vs its parent, with the gate"
    rows = [v for v in versions if v.language == language and "candidate_new_loss" in v.metrics]
    if not rows:
        fig, ax = plt.subplots(figsize=(11, 2.2))
        _empty(ax, f"no evaluated adapter version for {language}")
        return _finish(fig, "versions", title)
    fig, (losses, gate_ax) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=(3, 2))
    x = np.arange(len(rows))
    names = [f"v{v.version}\n{v.status}" for v in rows]
    bars = (
        ("live_new_loss", -0.3, "#fdbf6f", "parent, new usage"),
        ("candidate_new_loss", -0.1, "#ff7f00", "candidate, new usage"),
        ("live_old_loss", 0.1, "#a6cee3", "parent, earlier usage"),
        ("candidate_old_loss", 0.3, "#1f78b4", "candidate, earlier usage"),
    )
    for name, offset, colour, label in bars:
        values = [v.metrics.get(name, math.nan) for v in rows]
        errors = [_interval(v.metrics, name) for v in rows]
        yerr = None
        if any(e is not None for e in errors):
            yerr = np.array(
                [[val - e[0], e[1] - val] if e else [0.0, 0.0]
                 for val, e in zip(values, errors, strict=True)]
            ).T  # fmt: skip
        losses.bar(x + offset, values, 0.2, color=colour, label=label, yerr=yerr, capsize=3)
    losses.set_xticks(x, names, fontsize=8)
    every_loss = [v.metrics[n] for v in rows for n, *_ in bars if n in v.metrics]
    losses.set_ylim(max(0.0, 0.85 * min(every_loss)), 1.12 * max(every_loss))
    losses.set_ylabel("held-out loss (nats/token)")
    losses.legend(fontsize=7, loc="upper center", ncol=2)
    losses.set_title(
        "parent = the version live when the candidate was judged (the base model for v1)",
        fontsize=9,
    )
    gains = [v.metrics["live_new_loss"] - v.metrics["candidate_new_loss"] for v in rows]
    forgetting = [v.metrics["candidate_old_loss"] - v.metrics["live_old_loss"] for v in rows]
    with_intervals = 0
    for series, offset, colour, label, key in (
        (gains, -0.12, "#33a02c", "gain (new usage)", "gain"),
        (forgetting, 0.12, "#e31a1c", "forgetting (earlier usage)", "forgetting"),
    ):
        # The worker's gate records its own estimate and interval (gate_gain, gate_gain_low/_high:
        # the mean of per-text differences, compass.core.gate); where present, the point is the
        # gate's estimate so that it lies inside its interval.
        series = [
            float(v.metrics.get(f"gate_{key}", val)) for v, val in zip(rows, series, strict=True)
        ]
        errors = [_interval(v.metrics, key) or _interval(v.metrics, f"gate_{key}") for v in rows]
        with_intervals += sum(e is not None for e in errors)
        yerr = np.array(
            [[max(val - e[0], 0.0), max(e[1] - val, 0.0)] if e else [0.0, 0.0]
             for val, e in zip(series, errors, strict=True)]
        ).T  # fmt: skip
        gate_ax.errorbar(x + offset, series, yerr=yerr, fmt="o", color=colour, capsize=4,
                         label=label)  # fmt: skip
    gate_ax.axhline(gate.min_gain, color="#33a02c", ls="--", lw=1, label="gain must exceed")
    gate_ax.axhline(gate.max_forgetting, color="#e31a1c", ls=":", lw=1,
                    label="forgetting may not exceed")  # fmt: skip
    gate_ax.set_xticks(x, names, fontsize=8)
    gate_ax.set_ylabel("nats/token")
    gate_ax.legend(fontsize=7, loc="best")
    gate_ax.set_title(
        "gate: intervals as recorded" if with_intervals else "gate (no intervals recorded)",
        fontsize=9,
    )
    return _finish(fig, "versions", title)


def dead_letters_plot(language: str, dead: Sequence[DeadLetterCount]) -> Plot:
    """Dead letters by reason (and the stage that rejected them) for one language; ``"*"``
    for all of them, split by language."""
    plt = _pyplot()
    everyone = language == "*"
    title = (
        "all dead letters by reason and language"
        if everyone
        else f"{language}: dead letters by reason"
    )
    rows = list(dead) if everyone else [d for d in dead if d.language == language]
    fig, ax = plt.subplots(figsize=(11, 0.45 * max(len({d.reason for d in rows}), 2) + 1.6))
    if not rows:
        _empty(ax, f"no dead letters for {language}")
        return _finish(fig, "dead-letters", title)
    reasons = sorted({f"{d.reason} ({d.stage})" for d in rows})
    groups = sorted({d.language for d in rows}) if everyone else [language]
    left = np.zeros(len(reasons))
    for index, group in enumerate(groups):
        values = np.array(
            [sum(d.count for d in rows if f"{d.reason} ({d.stage})" == r and d.language == group)
             for r in reasons], dtype=float,
        )  # fmt: skip
        ax.barh(reasons, values, left=left, color=_COLOURS[index % len(_COLOURS)], label=group)
        left += values
    for y, total in enumerate(left):
        ax.text(total, y, f" {int(total)}", va="center", fontsize=8)
    ax.set_xlabel("dead letters")
    ax.set_xlim(0, left.max() * 1.08)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if everyone:
        ax.legend(fontsize=8, title="language", loc="center left", bbox_to_anchor=(1.01, 0.5),
                  frameon=False)  # fmt: skip
    return _finish(fig, "dead-letters", title)
