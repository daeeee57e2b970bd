"""``compass worker``: consume drift-events and turn them into adapter versions."""

from __future__ import annotations

import typer


def worker(
    sampler: str | None = typer.Option(
        None, help="Sampler that picks the auxiliary data (default: COMPASS_SAMPLER, 'compass')."
    ),
    budget: int = typer.Option(96, min=1, help="Auxiliary texts per update."),
    steps: int = typer.Option(24, min=1, help="Training steps per update."),
    max_events: int = typer.Option(0, min=0, help="Stop after this many drift events (0: run)."),
    pool: str = typer.Option("default", help="Auxiliary pool (folder under <data_dir>/pools)."),
    eval_texts: int = typer.Option(64, min=1, help="Usage texts per evaluation set."),
    max_length: int = typer.Option(64, min=8, help="Tokens per training/evaluation text."),
) -> None:
    """Run an adapter worker until SIGTERM/Ctrl-C (GPU when present, CPU otherwise)."""
    import signal
    import threading

    from compass.bootstrap import prepare_services
    from compass.config import load_settings
    from compass.lm.training.config import AdapterTrainingConfig
    from workers.runner import run_worker

    settings = prepare_services(load_settings())  # services up, topics created, schema migrated
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        outcomes = run_worker(
            settings,
            pool_name=pool,
            stop=stop,
            max_events=max_events or None,
            sampler=sampler,
            budget=budget,
            training=AdapterTrainingConfig(steps=steps, batch_size=8, max_length=max_length),
            eval_texts=eval_texts,
        )
    except KeyboardInterrupt:
        outcomes = []
    for outcome in outcomes:
        typer.echo(f"{outcome.drift_id} {outcome.status} v{outcome.version} {outcome.reason}")


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
