"""``compass produce FILE.jsonl|-``: send usage events from a JSON-lines file or stdin.

Each line is one JSON object with at least ``text`` and ``language`` (``event_id``,
``occurred_at``, ``source``, ``metadata`` and ``schema_version`` optional: the client fills what
is missing); blank lines are skipped. An invalid line is reported with its number and reason and
never stops the valid ones. Exit status: 0 when every line was delivered, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import typer


@dataclass
class ProduceSummary:
    """What ``compass produce`` did: lines read, events accepted and delivered, and for each
    rejected or dropped line ``(line number, reason, detail)``."""

    lines: int = 0
    accepted: int = 0
    delivered: int = 0
    failed: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


class RateLimiter:
    """At most ``rate`` calls of :meth:`wait` per second on average (``None``: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + self._interval


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line


def produce_lines(
    stream: IO[str],
    producer: Any,
    *,
    rate: float | None = None,
    on_line: Any = None,
    flush_timeout_s: float = 30.0,
) -> ProduceSummary:
    """Send every line of ``stream`` with ``producer`` (a :class:`UsageEventProducer`);
    ``on_line()`` is called once per non-blank line (the progress bar)."""
    summary = ProduceSummary()
    limiter = RateLimiter(rate)
    for number, line in _lines(stream):
        summary.lines += 1
        if on_line is not None:
            on_line()
        try:
            fields = json.loads(line)
        except ValueError as exc:
            summary.rejected.append((number, "invalid_json", str(exc)[:200]))
            continue
        if not isinstance(fields, dict):
            summary.rejected.append((number, "not_an_object", type(fields).__name__))
            continue
        limiter.wait()
        result = producer.send_event(fields)
        if result.accepted:
            summary.accepted += 1
        else:
            summary.rejected.append((number, result.reason or "rejected", result.detail[:200]))
    stats = producer.close(flush_timeout_s)
    summary.delivered = stats.delivered
    summary.failed = stats.failed + stats.in_flight
    return summary


def produce(
    source: str = typer.Argument(..., help="A JSON-lines file of usage events, or - for stdin."),
    rate: float | None = typer.Option(
        None, "--rate", min=0.001, help="At most this many events per second."
    ),
    topic: str | None = typer.Option(None, "--topic", help="Default: COMPASS_TOPIC_PROMPT_EVENTS."),
    bootstrap_servers: str | None = typer.Option(
        None, "--bootstrap-servers", help="Default: COMPASS_BROKER_BOOTSTRAP_SERVERS."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Send usage events from FILE.jsonl (or - for stdin) to prompt-events, then summarise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from compass.client import UsageEventProducer
    from compass.config import load_settings
    from compass.core.errors import ConfigError

    settings = load_settings()
    servers = bootstrap_servers or settings.broker_bootstrap_servers or _embedded(settings)
    if not servers:
        raise ConfigError(
            "no broker: set COMPASS_BROKER_BOOTSTRAP_SERVERS or --bootstrap-servers "
            "(`compass infra up` prints the embedded broker's address)"
        )
    if source != "-" and not Path(source).is_file():
        raise ConfigError(f"no such file: {source}")
    total = None
    if source != "-":
        with open(source, encoding="utf-8") as counting:
            total = sum(1 for _ in _lines(counting))
    producer = UsageEventProducer(
        servers,
        topic=topic or settings.topic_prompt_events,
        max_text_chars=settings.max_text_chars,
        max_event_bytes=settings.max_event_bytes,
        max_block_s=5.0,  # a batch job may wait for the broker; a serving path should not
    )
    columns = (
        TextColumn("producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("produce", total=total)
        stream: IO[str] = (
            sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
        )
        try:
            summary = produce_lines(stream, producer, rate=rate, on_line=lambda: bar.advance(task))
        finally:
            if stream is not sys.stdin:
                stream.close()
    _print_summary(summary)
    if summary.rejected or summary.failed or summary.delivered < summary.accepted:
        raise typer.Exit(1)


def _embedded(settings: Any) -> str | None:
    """The broker `compass infra up` started, if it is running."""
    from compass.infra.stack import StackState, state_path
    from compass.kafka.broker import pid_alive

    state = StackState.load(state_path(settings))
    if state is None or state.broker_pid is None or not pid_alive(state.broker_pid):
        return None
    return state.broker_bootstrap


def _print_summary(summary: ProduceSummary) -> None:
    typer.echo(
        f"sent {summary.delivered} of {summary.lines} lines "
        f"(accepted {summary.accepted}, delivery failed {summary.failed}, "
        f"rejected {len(summary.rejected)})"
    )
    for number, reason, detail in summary.rejected:
        typer.echo(f"  line {number}: {reason}: {detail}", err=True)


def register(app: typer.Typer) -> None:
    app.command("produce")(produce)
