"""``compass demo``: the continual loop, twice, on the embedded services, shown live."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def demo(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Fewer events and training steps (target 3 minutes; README gives measured times).",
    ),
    reset: bool = typer.Option(
        False,
        "--reset",
        help="Allow clearing the COMPASS tables of the database COMPASS_DATABASE_URL names "
        "(the embedded database is always reset).",
    ),
    timeout: float = typer.Option(1800, min=10, help="Seconds to wait on any one step."),
    summary_json: Path | None = typer.Option(
        None, "--summary-json", dir_okay=False, help="Also write the summary to this JSON file."
    ),
) -> None:
    """Stream real multilingual usage through the system while French usage shifts twice, and
    watch COMPASS detect each drift, train French v1 and continue it into v2."""
    from rich.console import Console
    from rich.live import Live

    from compass.config import load_settings
    from compass.lab.demo import demo_dir, run_demo
    from compass.lab.demo_live import render
    from compass.lab.demo_state import DemoSnapshot
    from compass.lab.demo_summary import print_summary, summary
    from compass.logs import configure_file_logging

    settings = load_settings()
    log_path = demo_dir(settings) / "demo.log"
    log_path.unlink(missing_ok=True)  # this run's log only (the children's are reset too)
    configure_file_logging(log_path, settings.log_level)
    console = Console()
    console.rule("COMPASS demo: usage stream → drift → adapter v1 → drift → continued v2")
    with Live(render(DemoSnapshot()), console=console, refresh_per_second=4) as live:

        def update(snapshot: DemoSnapshot) -> None:
            live.update(render(snapshot))

        try:
            result = run_demo(settings, quick=quick, reset=reset, on_update=update,
                              timeout_s=timeout)  # fmt: skip
        except KeyboardInterrupt:
            live.stop()
            console.print("[yellow]interrupted: every process the demo started is stopped[/]")
            raise typer.Exit(130) from None
    print_summary(console, result, log_path)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary(result), indent=2, default=str))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
