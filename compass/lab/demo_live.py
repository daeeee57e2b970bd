"""The demo's live display (``rich.live.Live``): one screen redrawn from each
:class:`~compass.lab.demo_state.DemoSnapshot` — the story phase, events per language, the drift
statistic against its threshold window by window, dead letters by reason, the worker's job
(stage, training step and loss), the adapter versions with the gate's evidence, the
``adapter-updated`` announcements and the new adapter's answer to a prompt.

:func:`render` is a pure function of the snapshot (tests render it to text).
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from compass.lab.demo_state import DemoSnapshot

SPARK = "▁▂▃▄▅▆▇█"


def _spark(points: list[tuple[float, float]], width: int = 24) -> Text:
    """One bar per judged window, height = statistic / threshold (full bar: at or past it),
    red where the window crossed its threshold."""
    line = Text()
    for statistic, threshold in points[-width:]:
        ratio = statistic / threshold if threshold and math.isfinite(threshold) else 0.0
        index = min(len(SPARK) - 1, max(0, int(ratio * (len(SPARK) - 1))))
        line.append(SPARK[index], style="bold red" if ratio >= 1 else "green")
    return line


def _loss(value: Any) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "–"


def _languages(snap: DemoSnapshot) -> Table:
    table = Table("language", "produced", "counted", "last window JS / threshold", "windows")
    table.title = "usage stream (counted exactly once, from usage_counts)"
    for language, view in sorted(snap.languages.items()):
        last = "–"
        if view.checks:
            statistic, threshold = view.checks[-1]
            last = f"{statistic:.4f} / {threshold:.4f}"
        table.add_row(language, str(view.produced), str(view.counted), last, _spark(view.checks))
    return table


def _dead_letters(snap: DemoSnapshot) -> Table:
    table = Table("reason", "messages", title="dead letters (kept with their bytes)")
    for reason, count in sorted(snap.dead_letters.items()):
        table.add_row(reason, str(count))
    return table


def _drifts(snap: DemoSnapshot) -> Table:
    table = Table("language", "window", "JS", "threshold", "events", "vs", "job", "→ version")
    table.title = "drift events"
    for d in snap.drift_events:
        reference = d.get("reference_version")
        table.add_row(
            d["language"],
            f"{d['window_start']:%H:%M}–{d['window_end']:%H:%M}",
            f"{d['statistic']:.4f}",
            f"{d['threshold']:.4f}",
            str(d["n_events"]),
            f"v{reference}" if reference else "live usage",
            str(d.get("job_status") or "queued"),
            f"v{d['version']} {d['version_status']}" if d.get("version") else "",
        )
    return table


def _worker(snap: DemoSnapshot) -> RenderableType:
    w = snap.worker
    if w is None:
        return Text("worker: not running", style="dim")
    line = Text(f"worker: {w.stage}")
    if w.stage == "training" and w.steps:
        done = int(20 * w.step / w.steps)
        line.append(f"  step {w.step}/{w.steps} ")
        line.append("█" * done + "░" * (20 - done), style="cyan")
        if w.loss is not None:
            line.append(f"  loss {w.loss:.3f}")
    return line


def _versions(snap: DemoSnapshot) -> Table:
    table = Table(
        "adapter", "status", "parent", "new-usage loss live→cand", "old-usage loss live→cand",
        "gate", title="adapter versions (the gate's evidence)",
    )  # fmt: skip
    for v in snap.versions:
        m = v.get("metrics") or {}
        table.add_row(
            str(v["adapter_name"]),
            str(v["status"]),
            f"v{v['parent_version']}" if v.get("parent_version") else "base",
            f"{_loss(m.get('live_new_loss'))} → {_loss(m.get('candidate_new_loss'))}",
            f"{_loss(m.get('live_old_loss'))} → {_loss(m.get('candidate_old_loss'))}",
            str(v.get("notes") or ""),
        )
    return table


def _announcements(snap: DemoSnapshot) -> RenderableType:
    lines = Text()
    for a in snap.announcements:
        lines.append("adapter-updated ", style="green")
        lines.append(f"{a.get('adapter_name', a.get('language'))} → {a.get('artifact_uri')}\n")
    for adapter, prompt, answer in snap.answers:
        lines.append(f"{adapter} ", style="bold")
        lines.append(f"« {prompt} » → ", style="dim")
        lines.append(f"{answer}\n")
    return lines


def render(snap: DemoSnapshot) -> RenderableType:
    """The whole screen for ``snap``."""
    processes = "  ".join(f"{name}: {state}" for name, state in sorted(snap.processes.items()))
    header = Text.assemble(
        ("COMPASS demo", "bold"), f" — {snap.phase}  ({snap.elapsed_s:.0f}s)   ", (processes, "dim")
    )
    body: list[RenderableType] = [header, _languages(snap), _dead_letters(snap), _drifts(snap)]
    body += [_worker(snap), _versions(snap), _announcements(snap)]
    return Panel(Group(*body), border_style="blue")
