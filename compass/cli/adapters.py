"""``compass adapters list|show|rollback|pin|unpin|retire``: the adapter lifecycle by hand.

A thin layer over :class:`compass.lifecycle.AdapterLifecycle`: every change is one transaction
with a row in ``adapter_events`` (and, for a rollback, an ``adapter-updated`` outbox row that
``compass relay`` or the next worker commit publishes). The base model is
``COMPASS_BASE_MODEL_ID`` unless ``--base-model`` says otherwise; errors are one line on stderr
(exit code 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from compass.lifecycle import AdapterLifecycle
    from compass.ports.storage import AdapterVersionRecord

adapters_app = typer.Typer(
    help="List adapters and roll back, pin, unpin or retire their versions.",
    no_args_is_help=True,
)

BASE_OPTION = typer.Option(None, "--base-model", help="Default: COMPASS_BASE_MODEL_ID.")
REASON_OPTION = typer.Option("", "--reason", "-m", help="Why (kept in the history).")


@contextmanager
def _lifecycle(base_model: str | None) -> Iterator[AdapterLifecycle]:
    from compass.bootstrap import open_unit_of_work
    from compass.config import load_settings
    from compass.lifecycle import AdapterLifecycle

    settings = load_settings()
    store = open_unit_of_work(settings, pool_size=1)
    try:
        yield AdapterLifecycle(
            store, base_model or settings.base_model_id, topic=settings.topic_adapter_updated
        )
    finally:
        store.dispose()


def _code(language: str) -> str:
    from compass.core.languages import normalize_language

    return normalize_language(language)


def _line(v: AdapterVersionRecord) -> str:
    loss = v.metrics.get("candidate_new_loss")
    shown = f"  new-usage loss {loss:.4f}" if loss is not None else ""
    return f"v{v.number:<4} {v.status:<9} {v.adapter_name:<24} {v.created_at:%Y-%m-%d %H:%M}{shown}"


@adapters_app.command("list")
def adapters_list(base_model: str | None = BASE_OPTION) -> None:
    """Every adapter with its live version and whether it is pinned."""
    with _lifecycle(base_model) as lifecycle:
        rows = lifecycle.overview()
    if not rows:
        typer.echo("no adapters yet")
    for row in rows:
        live = row.live.adapter_name if row.live else "-"
        pin = "  pinned" + (f" ({row.adapter.pin_reason})" if row.adapter.pin_reason else "")
        typer.echo(
            f"{row.adapter.language:<8} live {live:<24} latest v{row.adapter.last_version}"
            f"{pin if row.adapter.pinned else ''}"
        )


@adapters_app.command("show")
def adapters_show(
    language: str = typer.Argument(..., help="Language code, e.g. fr."),
    base_model: str | None = BASE_OPTION,
) -> None:
    """The versions of one language's adapter and its lifecycle history."""
    with _lifecycle(base_model) as lifecycle:
        detail = lifecycle.show(_code(language))
    pinned = (
        f"pinned since {detail.adapter.pinned_at:%Y-%m-%d %H:%M}" if detail.adapter.pinned else ""
    )
    typer.echo(f"{detail.adapter.language} on {detail.adapter.base_model} {pinned}".rstrip())
    for version in detail.versions:
        typer.echo("  " + _line(version))
    if detail.events:
        typer.echo("history:")
    for event in detail.events:
        at = f"v{event.version}" if event.version is not None else ""
        typer.echo(
            f"  {event.created_at:%Y-%m-%d %H:%M:%S} {event.action:<8} {at:<5} "
            f"{event.actor}: {event.reason}".rstrip()
        )


@adapters_app.command("rollback")
def adapters_rollback(
    language: str = typer.Argument(..., help="Language code, e.g. fr."),
    to: int | None = typer.Option(
        None, "--to", min=1, help="Version to re-activate; default: the one live before."
    ),
    reason: str = REASON_OPTION,
    base_model: str | None = BASE_OPTION,
) -> None:
    """Re-activate an earlier version and announce it on adapter-updated (action=rollback)."""
    with _lifecycle(base_model) as lifecycle:
        done = lifecycle.rollback(_code(language), reason, to)
    typer.echo(
        f"{done.version.language}: live {done.version.adapter_name} (was "
        f"v{done.replaced}); announced as message {done.message.message_id}"
    )


@adapters_app.command("pin")
def adapters_pin(
    language: str = typer.Argument(..., help="Language code, e.g. fr."),
    reason: str = REASON_OPTION,
    base_model: str | None = BASE_OPTION,
) -> None:
    """Stop automatic promotion for a language (candidates are still recorded)."""
    with _lifecycle(base_model) as lifecycle:
        lifecycle.pin(_code(language), reason)
    typer.echo(f"{language}: pinned; the worker records candidates but does not promote them")


@adapters_app.command("unpin")
def adapters_unpin(
    language: str = typer.Argument(..., help="Language code, e.g. fr."),
    reason: str = REASON_OPTION,
    base_model: str | None = BASE_OPTION,
) -> None:
    """Let the worker promote a language's candidates again."""
    with _lifecycle(base_model) as lifecycle:
        lifecycle.unpin(_code(language), reason)
    typer.echo(f"{language}: unpinned")


@adapters_app.command("retire")
def adapters_retire(
    language: str = typer.Argument(..., help="Language code, e.g. fr."),
    version: int = typer.Argument(..., min=1, help="Version number (not the live one)."),
    reason: str = REASON_OPTION,
    base_model: str | None = BASE_OPTION,
) -> None:
    """Mark a candidate version retired."""
    with _lifecycle(base_model) as lifecycle:
        retired = lifecycle.retire(_code(language), version, reason)
    typer.echo(f"{retired.language}: {retired.adapter_name} retired")


def register(app: typer.Typer) -> None:
    app.add_typer(adapters_app, name="adapters")
