"""The demo's closing summary: what was sent against what the database holds, printed once the
live display stops (and the same facts as a plain dict for tests and scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from compass.lab.demo import DemoResult


def summary(result: DemoResult) -> dict[str, Any]:
    """``{sent, counted, malformed_sent, dead_letters, drifts, versions, announcements,
    timings}``: drifts as ``(language, window_start)`` and versions as ``(language, number,
    status, parent_version)``, in order."""
    snap = result.snapshot
    return {
        "sent": dict(result.sent),
        "counted": {code: view.counted for code, view in snap.languages.items()},
        "malformed_sent": result.malformed_sent,
        "dead_letters": dict(snap.dead_letters),
        "drifts": [(d["language"], d["window_start"]) for d in snap.drift_events],
        "versions": [
            (v["language"], v["version"], v["status"], v["parent_version"]) for v in snap.versions
        ],
        "announcements": [a.get("adapter_name") for a in snap.announcements],
        "answers": list(snap.answers),
        "timings": dict(result.timings),
    }


def print_summary(console: Console, result: DemoResult, log_path: Path) -> None:
    facts = summary(result)
    table = Table("language", "sent", "counted", title="events: sent vs counted")
    for code, sent in sorted(facts["sent"].items()):
        table.add_row(code, str(sent), str(facts["counted"].get(code, 0)))
    console.print(table)
    letters = sum(facts["dead_letters"].values())
    console.print(
        f"malformed sent: {facts['malformed_sent']}, dead-lettered: {letters}; "
        f"drift events: {', '.join(lang for lang, _ in facts['drifts']) or 'none'}; "
        f"versions: {', '.join(f'{lang}-v{n} {s}' for lang, n, s, _ in facts['versions'])}"
    )
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in facts["timings"].items())
    console.print(f"timings: {timings}; total {result.snapshot.elapsed_s:.0f}s")
    if result.report_path is not None:
        console.print(f"report: [bold]{result.report_path}[/]")
    console.print(f"logs: {log_path} and {result.log_dir}/*.log")
    console.print("stop the services with `make infra-down` (or `compass infra down`)")
