"""The stream topology, in one place.

::

    prompt-events ──► consume_prompt_events (an app task: aiokafka getmany, streams/consumer.py)
                        decode + validate, choose the sample (stratified by language)
                        gather until a full embedding batch, an event bound or a time bound
                        (streams/gather.py; a timer flushes a quiet stream), then per flush:
                        invalid ──► prompt-events.dlq + dead_letters table
                        sampled ──► embed ──► nearest centroid ──► vector store
                        usage counts ──► closed event-time windows ──► drift check per language
                        drift ──► drift_events + outbox ──► drift-events
                        commit the flush's offsets (only now: at-least-once)
    timer (1 s) ──► log-end offsets: the consumer's own lag, for the sample-rate controller
    timer (5 s) ──► outbox relay (re-sends drift events a crash left unpublished)

The order of a batch's effects, and why it makes redelivery harmless, is
:func:`streams.checkpoint.checkpoint`'s; every sink is idempotent and durable state lives in
PostgreSQL, never in Faust tables. Faust runs the worker (timers, tasks, the dead-letter
producer, the lifecycle) without a consumer of its own. Run it with ``compass streams`` or
``faust -A streams.app worker`` (the module attribute ``app`` is built on first access, starting
embedded services for settings that are unset).
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import structlog
from faust.app.base import BootStrategy

from compass.config import Settings
from compass.core.errors import ConfigError
from compass.health import EXIT_AGENT_DIED, Heartbeat, exit_process, serve
from streams.consumer import PromptConsumer
from streams.exporter import is_ready
from streams.runtime import StreamRuntime, arm_shutdown_watchdog

log = structlog.get_logger(__name__)
OUTBOX_INTERVAL_S = 5.0
LOG_END_INTERVAL_S = 1.0
DLQ_PRODUCER_BATCH_BYTES = 512 * 1024


class _NoFaustConsumer(BootStrategy):
    """The worker without Faust's own consumer (and so without its conductor and tables):
    the stream's input is :class:`streams.consumer.PromptConsumer`, hosted as an app task."""

    enable_kafka_consumer = False


class _WorkerApp(faust.App):
    BootStrategy = _NoFaustConsumer


def create_app(settings: Settings) -> faust.App:
    """The Faust app for ``settings``, whose broker and database must be set (see
    :func:`streams.runtime.prepare_services`). Builds objects only; connects to nothing."""
    if not settings.broker_bootstrap_servers or not settings.database_url:
        raise ConfigError("the stream app needs a broker and a database; use `compass streams`")
    brokers = ";".join(f"kafka://{s.strip()}" for s in settings.broker_bootstrap_servers.split(","))
    app = _WorkerApp(
        settings.stream_app_id,
        broker=brokers,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_allow_declare=False,  # topics are created explicitly, with their partition counts
        topic_disable_leader=True,
        web_enabled=False,
        store="memory://",  # no Faust tables: durable state is in PostgreSQL
        datadir=str(settings.data_dir / "faust"),
        # dead letters (≈ 0.5–350 kB each) are produced a flush at a time; aiokafka's send waits
        # whenever a partition's batch is full, so 16 kB batches cost a round trip per 2–3
        # letters (issue 14: goodput under bad input). Below Kafka's 1 MB message.max.bytes.
        producer_max_batch_size=DLQ_PRODUCER_BATCH_BYTES,
    )
    dead_letters = app.topic(
        settings.topic_prompt_events_dlq,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.prompt_events_partitions,
    )
    runtime = StreamRuntime(settings)
    consumer = PromptConsumer(settings, runtime, dead_letters)

    @app.task
    async def consume_prompt_events() -> None:
        """The stream's input (:mod:`streams.consumer`): batches from aiokafka's ``getmany``
        into :meth:`StreamRuntime.handle`; offsets committed after each checkpoint."""
        try:
            await consumer.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dead consumer must take its process down (issue 13)
            exit_process(EXIT_AGENT_DIED, f"agent died: {exc!r}", runtime.close)

    @app.timer(interval=consumer.take_within_s)
    async def flush_quiet_stream() -> None:
        if runtime.processor is not None:
            await runtime.flush_if_due()

    @app.timer(interval=LOG_END_INTERVAL_S)
    async def read_log_end() -> None:
        """The consumer's own lag: log end against the position it has processed
        (:meth:`StreamRuntime.lag_events`)."""
        try:
            runtime.observe_log_end(await consumer.log_end())
        except Exception as exc:  # the lag is then older; the controller copes
            log.debug("stream.log_end_failed", error=repr(exc)[:200])

    heartbeat = Heartbeat()

    @app.timer(interval=5.0)
    async def beat() -> None:
        heartbeat.beat()  # /healthz: the event loop still runs

    @app.task
    async def open_resources() -> None:
        serve(settings, alive=heartbeat, ready=lambda: is_ready(runtime))
        try:
            await runtime.start()  # fails the worker early, with one clear line, if misconfigured
        except Exception as exc:  # the agent cannot run without them: the same exit as its death
            exit_process(
                EXIT_AGENT_DIED, f"agent died: cannot open its resources: {exc!r}", runtime.close
            )
        await runtime.run_blocking(runtime.relay_outbox)

    @app.timer(interval=OUTBOX_INTERVAL_S)
    async def publish_outbox() -> None:
        if runtime.processor is None:
            return
        try:
            await runtime.run_blocking(runtime.relay_outbox)
        except Exception as exc:  # the next tick retries; rows stay pending meanwhile
            log.warning("outbox.relay_failed", error=repr(exc)[:300])

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_resources(sender: Any, **_: Any) -> None:
        arm_shutdown_watchdog()
        await asyncio.get_running_loop().run_in_executor(None, runtime.close)

    _RUNTIMES[id(app)] = runtime
    return app


_RUNTIMES: dict[int, StreamRuntime] = {}


def runtime_of(app: faust.App) -> StreamRuntime:
    """The :class:`StreamRuntime` behind an app made by :func:`create_app` (tests, metrics)."""
    return _RUNTIMES[id(app)]


_APP: faust.App | None = None


def __getattr__(name: str) -> Any:
    """``streams.app.app`` for ``faust -A streams.app worker``: built on first access."""
    global _APP
    if name != "app":
        raise AttributeError(name)
    if _APP is None:
        from compass.config import load_settings
        from compass.logs import configure_logging
        from streams.runtime import preflight, prepare_services

        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        settings = prepare_services(settings)
        preflight(settings)
        _APP = create_app(settings)
    return _APP
