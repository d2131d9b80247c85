"""The batch loop every consuming service runs: fetch → decode → handle → commit.

Batches come from aiokafka's ``getmany`` inside the service rather than from a
faust agent: on the embedded broker a minimal faust agent tops out near 3k
events/s because of its per-event machinery (see storeops_cli/bench/consume_loop.py for
the side-by-side figures), while a batch loop keeps per-record cost to parsing.

Guarantees: offsets are committed only after the handler's effects are durable
and every dead letter is acknowledged, so a crash redelivers, never skips.
Handlers make redelivery harmless by keying every effect (event id, rule id,
channel).

Failures, told apart:
- a record that does not decode, breaks its contract or carries a NUL
  character is rejected at decode;
- a record the database refuses for its content (NUL, a number out of range, a
  string too long: SQLSTATE classes 22 and 23, or a value the driver cannot
  bind) is found by splitting the batch in halves until it stands alone, and
  rejected alone; the rest of the batch goes on;
- a connection-level failure (the broker or the database away) is waited out
  with backoff, for as long as it lasts;
- anything else is a bug: it propagates and the process restarts.
A rejected record is dead-lettered by its topic's owner (a topic in
``topics``); a consumer that only watches the topic counts it and skips it,
so each bad record has one dead letter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError

from schemas.envelope import Envelope
from schemas.registry import DEADLETTER, Topic, topic_for
from storeops.deadletter import dead_letter
from storeops.errors import NUL_ERROR, describe, find_nul
from storeops.logs import bind
from storeops.metrics import ConsumerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures worth waiting out: the broker or the database is away for a moment.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    KafkaError, OSError, asyncio.TimeoutError, OperationalError, InterfaceError,
)
# SQLSTATE classes of a record's content: data exception, integrity constraint violation.
_CONTENT_CLASSES = frozenset({"22", "23"})
# SQLSTATE classes that pass: connection exception, transaction rollback (serialization,
# deadlock), insufficient resources, operator intervention (shutdown), system error.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, looked for on the DBAPI error and its cause.

    SQLAlchemy's asyncpg adapter wraps every server error in one generic ``Error``
    class (``DBAPIError``, never ``DataError``); the code is on asyncpg's exception.
    """
    seen: list[BaseException | None] = [getattr(exc, "orig", None)]
    while seen:
        current = seen.pop()
        if current is None:
            continue
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
        seen += [current.__cause__, current.__context__] if len(seen) < 8 else []
    return None


def refused_content(exc: BaseException) -> bool:
    """True when the database (or its driver) refused the records for what they hold."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return False
        code = sqlstate(exc)
        return code is not None and code[:2] in _CONTENT_CLASSES
    # SQLite's driver raises OverflowError for an int beyond 64 bits; a value a column
    # type cannot bind (a naive datetime, say) is a StatementError without a DBAPI error.
    return isinstance(exc, (OverflowError, StatementError))


# SQLite's primary result codes worth waiting out: busy, locked, I/O error, full, cannot open, protocol.
_SQLITE_TRANSIENT = frozenset({5, 6, 10, 13, 14, 15})


def transient(exc: BaseException) -> bool:
    """True for a failure to wait out: the broker or the database is away."""
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    if isinstance(exc, DBAPIError) and isinstance(code, int):
        # sqlite3 raises OperationalError both for a locked file and for a missing table
        return exc.connection_invalidated or code & 0xFF in _SQLITE_TRANSIENT
    if isinstance(exc, DBAPIError) and not isinstance(exc, (OperationalError, InterfaceError)):
        if exc.connection_invalidated:
            return True
        code = sqlstate(exc)
        # no SQLSTATE: a driver-level failure (a dropped connection, say)
        return code is None or code[:2] in _TRANSIENT_CLASSES
    return isinstance(exc, TRANSIENT_ERRORS)


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
        try:
            rejected = await self._handle(received) if received else []
            dead += self._dead_letters(rejected)
            await self._retrying(lambda: self.emitter.emit(DEADLETTER, dead), len(records))
        except _Stopped:
            return  # not committed: the next owner gets these records again
        await self._commit(batch)
        self._observe(batch, dead, len(records), time.perf_counter() - t0)

    async def _handle(self, items: list[Received]) -> list[Rejected]:
        """Run the handler over ``items``; a refusal of their content splits them until
        the refused record stands alone."""
        try:
            return list(await self._retrying(lambda: self.handler(items), len(items)))
        except Exception as exc:
            if not refused_content(exc):
                raise
            refusal = _first_line(exc)
        if len(items) > 1:
            self.metrics.splits.inc()
            middle = len(items) // 2
            return await self._handle(items[:middle]) + await self._handle(items[middle:])
        item = items[0]
        reason = f"the database refused the record: {refusal}"
        bind(log, topic=item.record.topic, partition=item.record.partition, offset=item.record.offset).warning(
            "record refused by the database", extra={"error": reason})
        return [Rejected(item, reason)]

    async def _retrying(self, work: Callable[[], Awaitable[T]], count: int) -> T:
        """``work``'s result once it succeeds, transient failures waited out with backoff;
        ``_Stopped`` when asked to stop meanwhile. Any other failure propagates."""
        attempt = 0
        while True:
            try:
                result = await work()
                break
            except Exception as exc:
                if not transient(exc):
                    raise
                attempt += 1
                self.healthy = False
                self.metrics.retries.inc()
                if attempt == 1:
                    log.warning("batch failed, retrying", extra={"error": repr(exc), "records": count})
                if self._stopping.is_set():
                    raise _Stopped from exc
                await asyncio.sleep(min(0.2 * 2**attempt, self.max_backoff))
        if attempt:
            log.info("batch succeeded after retries", extra={"attempts": attempt + 1})
        self.healthy = True
        return result

    def _dead_letters(self, rejected: Iterable[Rejected]) -> list[Envelope]:
        """Dead letters for the rejected records of owned topics; those of watched topics are skipped."""
        dead: list[Envelope] = []
        for r in rejected:
            if r.item.record.topic in self.watched:
                self.metrics.skipped.labels(r.item.topic.short_name).inc()
            else:
                dead.append(dead_letter(r.item.record, "process", r.reason, self.service))
        return dead

    def _decode(self, records: list[ConsumerRecord]) -> tuple[list[Received], list[Envelope]]:
        received: list[Received] = []
        dead: list[Envelope] = []
        for record in records:
            topic = topic_for(record.topic)
            try:
                if record.value is None:
                    raise ValueError("record has no value")
                if b"\\u0000" in record.value:  # before the contract: NUL is what PostgreSQL would refuse
                    where = _nul_in(record.value)
                    if where is not None:
                        raise _NulFound(f"{where}: {NUL_ERROR}")
                event = topic.decode(record.value) if self.decoding == "contract" else topic.decode_envelope(record.value)
                received.append(Received(record, topic, event))
            except ValueError as exc:  # pydantic's ValidationError is one too
                if record.topic in self.watched:
                    self.metrics.skipped.labels(topic.short_name).inc()
                elif isinstance(exc, ValidationError):
                    invalid_json = any(e["type"] == "json_invalid" for e in exc.errors())
                    dead.append(dead_letter(record, "decode" if invalid_json else "validate", describe(exc), self.service))
                elif isinstance(exc, _NulFound):
                    dead.append(dead_letter(record, "validate", str(exc), self.service))
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


class _Stopped(Exception):
    """The loop was asked to stop while waiting out a failure; the batch stays uncommitted."""


class _NulFound(ValueError):
    """A record whose JSON holds a NUL character (PostgreSQL would refuse it)."""


def _nul_in(value: bytes) -> str | None:
    try:
        return find_nul(orjson.loads(value))
    except orjson.JSONDecodeError:
        return None


def _first_line(exc: BaseException) -> str:
    """The database's message without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]
