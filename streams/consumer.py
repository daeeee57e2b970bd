"""The prompt-events consumer: aiokafka's ``getmany`` inside the Faust worker.

Faust's own stream machinery (a message object, a sensor call and an ack per event, the
consumer on a second thread) read at only 0.53–0.67 of a bare consumer here (docs/streaming.md,
*Faust's own ceiling*), so the stream's one input topic is read by an
:class:`aiokafka.AIOKafkaConsumer` that the worker hosts as a task: Faust still runs the worker,
its timers, the health server, the dead-letter producer and the lifecycle.

* **Batches**: ``getmany(max_records=COMPASS_STREAM_BATCH_SIZE)`` — whatever the fetcher holds,
  up to that many, waiting at most a quarter of ``COMPASS_STREAM_BATCH_WITHIN_S`` when nothing
  is there; each batch goes to :meth:`streams.runtime.StreamRuntime.handle` as it is.
* **Offsets**: never committed automatically; the runtime commits a flush's next positions
  (:meth:`PromptConsumer.commit`) as the checkpoint's last step — at-least-once.
* **Rebalances**: on revocation the gathered events are flushed, the flush in flight awaited
  and its offsets committed while this worker still owns the partitions, so the next owner
  starts after them (:class:`_FlushOnRevoke`).
* **Lag**: the log end of every assigned partition, from the consumer's fetch high-water marks
  and ``end_offsets`` (:meth:`PromptConsumer.log_end`).

The consumer group is ``COMPASS_STREAM_APP_ID``, as with Faust's agent before (committed
offsets carry over).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError
from aiokafka.structs import OffsetAndMetadata

from compass.config import Settings

if TYPE_CHECKING:
    from streams.runtime import StreamRuntime

log = structlog.get_logger(__name__)
DEFERRED_POLL_MS = 10
FETCH_MAX_WAIT_MS = 50
"""How long the broker may hold a fetch that finds nothing: with aiokafka's 500 ms default the
first events after a quiet spell waited for it on Tansu (pipeline ÷ raw embedder at low rate
0.89 → 0.95 with 50 ms); an idle consumer then sends ~20 small fetches a second."""
MAX_POLL_INTERVAL_S = 1000.0
"""A flush retried through a long outage stops the polling; the group keeps the member this
long (Faust's default) before it gives its partitions away."""


class PromptConsumer:
    """Reads ``COMPASS_TOPIC_PROMPT_EVENTS`` in batches for one :class:`StreamRuntime`.

    ``dlq`` is what the runtime sends dead letters with (a Faust topic). Nothing connects
    before :meth:`run`.
    """

    def __init__(self, settings: Settings, runtime: StreamRuntime, dlq: Any) -> None:
        self.settings = settings
        self.runtime = runtime
        self.dlq = dlq
        self.topic = settings.topic_prompt_events
        self.take_within_s = max(0.05, settings.stream_batch_within_s / 4)
        self._consumer: AIOKafkaConsumer | None = None

    def _create(self) -> AIOKafkaConsumer:
        settings = self.settings
        assert settings.broker_bootstrap_servers is not None
        session_ms = int(settings.stream_session_timeout_s * 1000)
        return AIOKafkaConsumer(
            bootstrap_servers=settings.broker_bootstrap_servers.split(","),
            group_id=settings.stream_app_id,
            client_id=f"{settings.stream_app_id}-prompt-events",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1000, session_ms // 3),
            max_poll_interval_ms=int(MAX_POLL_INTERVAL_S * 1000),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )

    async def run(self) -> None:
        """Consume until cancelled (the worker stopping). What is gathered but not yet
        checkpointed is left uncommitted: the next owner of its partitions reads it again."""
        consumer = self._consumer = self._create()
        consumer.subscribe([self.topic], listener=_FlushOnRevoke(self))
        await consumer.start()
        try:
            await self.runtime.start()
            self.runtime.commit = self.commit
            idle_ms = int(self.take_within_s * 1000)
            batch_size = self.settings.stream_batch_size
            first = True
            while True:
                # a flush waiting for the one in flight starts within DEFERRED_POLL_MS of its end
                timeout_ms = DEFERRED_POLL_MS if self.runtime.flush_deferred else idle_ms
                fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=batch_size)
                if not fetched:
                    await self.runtime.flush_if_due()
                    continue
                if first:  # how far behind this worker starts (fetch high-water marks)
                    first = False
                    self.runtime.start_behind(
                        sum(
                            max(0, (consumer.highwater(tp) or 0) - records[-1].offset - 1)
                            for tp, records in fetched.items()
                        )
                    )
                messages = [r for records in fetched.values() for r in records]
                await self.runtime.handle(messages, self.dlq)
        finally:
            self.runtime.commit = None
            self._consumer = None
            await consumer.stop()  # leaves the group; commits nothing (no auto-commit)

    async def commit(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Commit the next offsets of a durable flush, for the partitions still assigned.

        A commit the group refuses (a rebalance under way) is logged and skipped: the events
        are then read again by the next owner and change nothing (every sink is idempotent);
        the revocation hook commits first whenever it can."""
        consumer = self._consumer
        if consumer is None or not positions:
            return
        assigned = consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(position, "")
            for (topic, partition), position in positions.items()
            if (tp := TopicPartition(topic, partition)) in assigned
        }
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            log.warning("stream.commit_skipped", error=repr(exc)[:300])

    async def log_end(self) -> dict[tuple[str, int], int]:
        """Log-end offsets of the assigned partitions: the larger of the last fetch's
        high-water mark and ``end_offsets`` (ListOffsets) per partition; empty when nothing
        is assigned."""
        consumer = self._consumer
        if consumer is None:
            return {}
        assigned = [tp for tp in consumer.assignment() if tp.topic == self.topic]
        if not assigned:
            return {}
        ends: dict[TopicPartition, int] = dict(await consumer.end_offsets(assigned))
        out = {}
        for tp in assigned:
            high = consumer.highwater(tp)
            out[(tp.topic, tp.partition)] = max(ends.get(tp) or 0, high or 0)
        return out


class _FlushOnRevoke(ConsumerRebalanceListener):
    """Still the owner of the revoked partitions: checkpoint what is gathered and wait for
    it (its offsets are committed as its last step), so the next owner starts after it."""

    def __init__(self, owner: PromptConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        runtime = self.owner.runtime
        if runtime.processor is None or not revoked:
            return
        try:
            await runtime.flush(wait=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the events stay uncommitted: the next owner reads them
            log.warning("stream.revocation_flush_failed", error=repr(exc)[:300])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("stream.partitions_assigned", partitions=sorted(tp.partition for tp in assigned))
