"""``compass demo``: the full loop once on the embedded services (the README's main job)."""

from __future__ import annotations

import typer


def demo(
    steps: int = typer.Option(16, min=1, help="Training steps of the adapter update."),
    budget: int = typer.Option(64, min=1, help="Auxiliary texts COMPASS selects."),
    timeout: float = typer.Option(900, min=10, help="Seconds to wait for the drift event."),
) -> None:
    """Stream real multilingual usage with a topic shift through the system and watch COMPASS
    detect the drift and update the French adapter."""
    from rich.console import Console
    from rich.table import Table

    from compass.config import load_settings
    from compass.lab.demo import run_demo

    console = Console()
    console.rule("COMPASS demo: usage stream → drift → adapter update")
    report, outcome, streams_log = run_demo(
        load_settings(), steps=steps, budget=budget, timeout_s=timeout
    )

    console.print(
        f"[bold]events sent[/]: {report.events_sent} valid + {report.malformed_sent} malformed"
    )
    counted = Table("language", "events counted", title="usage counted (exactly once)")
    for language, total in report.counted.items():
        counted.add_row(language, str(total))
    console.print(counted)
    letters = Table("reason", "messages", title="dead letters (kept with their bytes)")
    for reason, count in report.dead_letters.items():
        letters.add_row(reason, str(count))
    console.print(letters)
    drifts = Table("language", "window", "JS", "threshold", "events", title="drift events")
    for d in report.drift_events:
        drifts.add_row(
            d["language"],
            f"{d['window_start']:%H:%M}–{d['window_end']:%H:%M}",
            str(d["statistic"]),
            str(d["threshold"]),
            str(d["n_events"]),
        )
    console.print(drifts)
    versions = Table(
        "adapter", "status", "new-usage loss live→cand", "old-usage loss live→cand", "why",
        title="adapter versions",
    )  # fmt: skip
    for v in report.versions:
        versions.add_row(
            f"{v['language']}-v{v['number']}",
            v["status"],
            f"{float(v['live_new_loss']):.3f} → {float(v['candidate_new_loss']):.3f}",
            f"{float(v['live_old_loss']):.3f} → {float(v['candidate_old_loss']):.3f}",
            v["notes"],
        )
    console.print(versions)
    for update in report.adapter_updated:
        console.print(
            f"[green]adapter-updated[/] {update['adapter_name']} → {update['artifact_uri']}"
        )
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in report.timings.items())
    console.print(f"worker outcome: [bold]{outcome.status}[/] ({outcome.reason}); {timings}")
    console.print(f"stream app log: {streams_log}; stop the services with `make infra-down`")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
