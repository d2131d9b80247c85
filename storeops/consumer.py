"""The batch loop every consuming service runs: fetch → decode → handle → commit.

Batches come from aiokafka's ``getmany`` inside the service rather than from a
faust agent: on the embedded broker a minimal faust agent tops out near 3k
events/s because of its per-event machinery (see storeops_cli/bench/consume_loop.py for
the side-by-side figures), while a batch loop keeps per-record cost to parsing.

Guarantees: offsets are committed only after the handler's effects are durable
and every dead letter is acknowledged, so a crash redelivers, never skips.
Handlers make redelivery harmless by keying every effect (event id, rule id,
channel).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from schemas.envelope import Envelope
from schemas.registry import DEADLETTER, Topic, topic_for
from storeops.deadletter import dead_letter
from storeops.errors import describe
from storeops.logs import bind
from storeops.metrics import ConsumerMetrics

log = logging.getLogger(__name__)

# Failures worth waiting out: the broker or the database is away for a moment.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, asyncio.TimeoutError, OperationalError, DBAPIError)


@dataclass(frozen=True, slots=True)
class Received:
    """One decoded record with its origin."""

    record: ConsumerRecord
    topic: Topic
    event: Envelope


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record the handler could not process; it goes to the dead-letter topic."""

    item: Received
    reason: str


Handler = Callable[[list[Received]], Awaitable[Sequence[Rejected]]]

# "contract": each record is validated against its topic's model (the domain
# consumers). "envelope": only the envelope is (a sink that stores records as
# they were, leaving the contract of ``data`` to the domain consumers).
Decoding = Literal["contract", "envelope"]


class Emitter:
    """Produces contract records and waits until the broker acknowledged all of them."""

    def __init__(self, producer: AIOKafkaProducer, metrics: ConsumerMetrics | None = None) -> None:
        self.producer = producer
        self.metrics = metrics

    async def emit(self, topic: Topic, records: Sequence[Envelope]) -> None:
        if not records:
            return
        futures = []
        for record in records:
            key, value = topic.encode(record)
            futures.append(await self.producer.send(topic.name, value=value, key=key))
        await asyncio.gather(*futures)
        if self.metrics:
            self.metrics.produced.labels(topic.short_name).inc(len(records))


class _Assignment(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in revoked)})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.owner.joined_at is None:
            self.owner.joined_at = time.monotonic()
        log.info(
            "partitions assigned",
            extra={"partitions": len(assigned), "seconds_since_start": round(self.owner.joined_at - self.owner.started_at, 3)},
        )


class BatchConsumer:
    """Runs ``handler`` over batches of decoded records from ``topics``."""

    def __init__(
        self,
        service: str,
        consumer: AIOKafkaConsumer,
        topics: Sequence[Topic],
        emitter: Emitter,
        handler: Handler,
        metrics: ConsumerMetrics,
        max_records: int = 1000,
        max_backoff: float = 10.0,
        decoding: Decoding = "contract",
        watched: Sequence[Topic] = (),
    ) -> None:
        self.service = service
        self.consumer = consumer
        self.topics = tuple(topics) + tuple(t for t in watched if t not in topics)
        self.emitter = emitter
        self.handler = handler
        self.metrics = metrics
        self.max_records = max_records
        self.max_backoff = max_backoff
        self.decoding = decoding
        # Topics read for a side purpose (the exceptions service watches store events to
        # wake and heal exceptions): a record there that does not decode is the domain
        # consumer's to dead-letter, so it is skipped here rather than dead-lettered twice.
        self.watched = frozenset(t.name for t in watched)
        self.started_at = time.monotonic()
        self.joined_at: float | None = None
        self.healthy = True
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self.consumer.subscribe(topics=[t.name for t in self.topics], listener=_Assignment(self))
        await self.consumer.start()

    async def close(self) -> None:
        await self.consumer.stop()

    @property
    def joined(self) -> bool:
        return self.joined_at is not None

    async def run(self) -> None:
        """Consume until ``stop()``; a non-transient error propagates (crash, restart)."""
        while not self._stopping.is_set():
            try:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
            except IllegalStateError:
                return  # stopped underneath us
            if batch:
                await self._process(batch)

    def stop(self) -> None:
        self._stopping.set()

    async def _process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        t0 = time.perf_counter()
        records = [r for msgs in batch.values() for r in msgs]
        received, dead = self._decode(records)
        attempt = 0
        while True:
            try:
                rejected = await self.handler(received) if received else []
                dead += [dead_letter(r.item.record, "process", r.reason, self.service) for r in rejected]
                await self.emitter.emit(DEADLETTER, dead)
                break
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                self.healthy = False
                self.metrics.retries.inc()
                if attempt == 1:
                    log.warning("batch failed, retrying", extra={"error": repr(exc), "records": len(records)})
                if self._stopping.is_set():
                    return  # not committed: the next owner gets these records again
                await asyncio.sleep(min(0.2 * 2**attempt, self.max_backoff))
        if attempt:
            log.info("batch succeeded after retries", extra={"attempts": attempt + 1})
        self.healthy = True
        await self._commit(batch)
        self._observe(batch, dead, len(records), time.perf_counter() - t0)

    def _decode(self, records: list[ConsumerRecord]) -> tuple[list[Received], list[Envelope]]:
        received: list[Received] = []
        dead: list[Envelope] = []
        for record in records:
            topic = topic_for(record.topic)
            try:
                if record.value is None:
                    raise ValueError("record has no value")
                event = topic.decode(record.value) if self.decoding == "contract" else topic.decode_envelope(record.value)
                received.append(Received(record, topic, event))
            except ValueError as exc:  # pydantic's ValidationError is one too
                if record.topic in self.watched:
                    self.metrics.skipped.labels(topic.short_name).inc()
                elif isinstance(exc, ValidationError):
                    stage = "decode" if any(e["type"] == "json_invalid" for e in exc.errors()) else "validate"
                    dead.append(dead_letter(record, stage, describe(exc), self.service))
                else:
                    dead.append(dead_letter(record, "decode", str(exc), self.service))
        for envelope in dead:
            bind(log, topic=envelope.data.topic, partition=envelope.data.partition, offset=envelope.data.offset).warning(
                "record dead-lettered", extra={"stage": envelope.data.stage, "error": envelope.data.error}
            )
        return received, dead

    async def _commit(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items() if msgs}
        try:
            await self.consumer.commit(offsets)
            self.metrics.last_commit.set_to_current_time()
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions away: their new owner re-reads these
            # records and the keyed effects turn the repeat into a no-op.
            log.warning("commit refused after rebalance", extra={"error": repr(exc)})

    def _observe(self, batch: dict, dead: list[Envelope], count: int, seconds: float) -> None:
        for tp, msgs in batch.items():
            self.metrics.consumed.labels(topic_for(tp.topic).short_name).inc(len(msgs))
        for envelope in dead:
            self.metrics.dead_lettered.labels(topic_for(envelope.data.topic).short_name, envelope.data.stage).inc()
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.batch_size.observe(count)
