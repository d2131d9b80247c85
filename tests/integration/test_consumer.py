"""The batch consumer loop against the real broker: commit after effect, dead letters, retries, crashes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry
from sqlalchemy import BigInteger, Column, MetaData, String, Table, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.actions import AdjustPrice, AdjustPriceData, RuleRef
from schemas.registry import COMMANDS, DEADLETTER
from storeops.consumer import BatchConsumer, Emitter, Received, Rejected
from storeops.db import make_engine
from storeops.deadletter import dead_letter
from storeops.kafka import make_consumer, make_producer
from storeops.metrics import ConsumerMetrics
from storeops.settings import KafkaSettings
from tests.helpers import eventually, read_topic

pytestmark = pytest.mark.integration


def kafka(broker) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers, flavor=broker.flavor)


def command(tag: str, n: int) -> AdjustPrice:
    sku = f"{tag}-{n}"
    return AdjustPrice(type="AdjustPrice", subject=sku, data=AdjustPriceData(
        rule=RuleRef(rule_id="test", rule_version=1, mode="LIVE"), run_id=uuid.uuid4(), sku=sku, new_price=Decimal("9.99"),
        currency="EUR"))


async def produce(broker, values: Sequence[tuple[bytes, bytes]]) -> list:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        return [await producer.send_and_wait(COMMANDS.name, value, key=key) for key, value in values]
    finally:
        await producer.stop()


class Harness:
    """A BatchConsumer on the commands topic under a fresh group, with a pluggable handler."""

    def __init__(self, broker, group: str | None = None) -> None:
        self.broker = broker
        self.group = group or f"test-{uuid.uuid4().hex[:8]}"
        self.service = f"svc{uuid.uuid4().hex[:6]}"
        self.metrics = ConsumerMetrics.for_service(self.service, CollectorRegistry())

    async def __aenter__(self) -> Harness:
        self.producer = make_producer(kafka(self.broker), "test")
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def run(self, handler, until, watch: bool = False) -> tuple[BatchConsumer, BaseException | None]:
        topics, watched = ((), (COMMANDS,)) if watch else ((COMMANDS,), ())
        consumer = BatchConsumer(self.service, make_consumer(kafka(self.broker), self.group, self.service), topics,
                                 Emitter(self.producer, self.metrics), handler, self.metrics, watched=watched)
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        error: BaseException | None = None
        try:
            await eventually(lambda: _done(until, task), timeout=30)
        finally:
            consumer.stop()
            try:
                await asyncio.wait_for(task, 10)
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                error = exc
            await consumer.close()
        return consumer, error

    async def committed(self, partitions: set[int]) -> dict[int, int | None]:
        probe = make_consumer(kafka(self.broker), self.group, "probe")
        await probe.start()
        try:
            return {p: await probe.committed(TopicPartition(COMMANDS.name, p)) for p in partitions}
        finally:
            await probe.stop()


def mine(records: list, service: str, key: bytes) -> list:
    """Dead letters written by ``service`` for records keyed ``key``."""
    letters = (DEADLETTER.decode(r.value).data for r in records)
    return [d for d in letters if d.service == service and d.original_key == key]


async def _done(until, task: asyncio.Task) -> bool:
    return until() or task.done()


async def test_every_record_is_handled_and_committed_after_the_handler(broker) -> None:
    tag = uuid.uuid4().hex[:8]
    sent = await produce(broker, [COMMANDS.encode(command(tag, n)) for n in range(50)])
    seen: list[str] = []

    async def handle(batch: list[Received]) -> list[Rejected]:
        seen.extend(i.event.subject for i in batch if i.event.subject.startswith(tag))
        return []

    async with Harness(broker) as h:
        consumer, error = await h.run(handle, until=lambda: len(seen) >= 50)
        assert error is None
        assert sorted(seen) == sorted(f"{tag}-{n}" for n in range(50))
        last = {}
        for md in sent:
            last[md.partition] = max(last.get(md.partition, -1), md.offset)
        committed = await h.committed(set(last))
        assert all(committed[p] is not None and committed[p] > off for p, off in last.items())
        assert consumer.joined


async def test_bad_records_are_dead_lettered_and_later_records_still_handled(broker) -> None:
    tag = uuid.uuid4().hex[:8]
    key = f"{tag}-0".encode()
    good = command(tag, 0)  # same key as the bad ones: same partition, after them
    sent = await produce(broker, [(key, b"\xff\xfe not json"), (key, b'{"type": "AdjustPrice"}'), COMMANDS.encode(good)])
    seen: list[uuid.UUID] = []

    async def handle(batch: list[Received]) -> list[Rejected]:
        seen.extend(i.event.id for i in batch if i.event.subject.startswith(tag))
        return []

    async with Harness(broker) as h:
        _, error = await h.run(handle, until=lambda: good.id in seen)
        assert error is None
        records = await read_topic(broker.bootstrap_servers, DEADLETTER.name,
                                   until=lambda rs: len(mine(rs, h.service, key)) >= 2)
    dead = sorted(mine(records, h.service, key), key=lambda d: d.offset)
    assert [(d.stage, d.offset, d.original_value) for d in dead] == [
        ("decode", sent[0].offset, b"\xff\xfe not json"), ("validate", sent[1].offset, b'{"type": "AdjustPrice"}')]
    assert dead[1].original_key == key and "data: Field required" in dead[1].error


async def test_unreadable_records_on_a_watched_topic_are_skipped_and_counted_not_dead_lettered(broker) -> None:
    tag = uuid.uuid4().hex[:8]
    key = f"{tag}-0".encode()
    good = command(tag, 0)
    await produce(broker, [(key, b"not json"), (key, b'{"type": "AdjustPrice"}'), COMMANDS.encode(good)])
    seen: list[uuid.UUID] = []

    async def handle(batch: list[Received]) -> list[Rejected]:
        seen.extend(i.event.id for i in batch if i.event.subject.startswith(tag))
        return []

    async with Harness(broker) as h:
        _, error = await h.run(handle, until=lambda: good.id in seen, watch=True)
        assert error is None
        assert h.metrics.skipped.labels(COMMANDS.short_name)._value.get() >= 2
        # a marker dead letter from this service, written after the run, bounds the read
        origin = ConsumerRecord(COMMANDS.name, 0, 0, 0, 0, key, b"marker", None, len(key), 6, [])
        marker = dead_letter(origin, "process", "marker", h.service)
        await h.producer.send_and_wait(DEADLETTER.name, DEADLETTER.encode(marker)[1], key=key)
        records = await read_topic(broker.bootstrap_servers, DEADLETTER.name,
                                   until=lambda rs: any(d.error == "marker" for d in mine(rs, h.service, key)))
    assert [d.error for d in mine(records, h.service, key)] == ["marker"]


async def test_rejected_records_go_to_dead_letter_with_stage_process(broker) -> None:
    tag = uuid.uuid4().hex[:8]
    victim, other = command(tag, 0), command(tag, 1)
    await produce(broker, [COMMANDS.encode(victim), COMMANDS.encode(other)])
    seen: set[uuid.UUID] = set()

    async def handle(batch: list[Received]) -> list[Rejected]:
        mine = [i for i in batch if i.event.subject.startswith(tag)]
        seen.update(i.event.id for i in mine)
        return [Rejected(i, "price floor would be broken") for i in mine if i.event.id == victim.id]

    async with Harness(broker) as h:
        _, error = await h.run(handle, until=lambda: {victim.id, other.id} <= seen)
        assert error is None
        records = await read_topic(broker.bootstrap_servers, DEADLETTER.name,
                                   until=lambda rs: mine(rs, h.service, victim.subject.encode()))
    [dead] = mine(records, h.service, victim.subject.encode())
    assert dead.stage == "process" and dead.error == "price floor would be broken"
    assert COMMANDS.decode(dead.original_value).id == victim.id


async def test_transient_failure_is_retried_and_nothing_is_lost(broker) -> None:
    tag = uuid.uuid4().hex[:8]
    await produce(broker, [COMMANDS.encode(command(tag, n)) for n in range(10)])
    seen: set[str] = set()
    failures = 0

    async def handle(batch: list[Received]) -> list[Rejected]:
        nonlocal failures
        mine = [i for i in batch if i.event.subject.startswith(tag)]
        if mine and failures < 2:
            failures += 1
            raise OperationalError("INSERT", {}, ConnectionError("database restarting"))
        seen.update(i.event.subject for i in mine)
        return []

    async with Harness(broker) as h:
        _, error = await h.run(handle, until=lambda: len(seen) == 10)
        assert error is None and failures == 2
        assert h.metrics.retries._value.get() == 2


async def test_a_bug_crashes_the_loop_commits_nothing_and_the_records_come_back(broker) -> None:
    tag = uuid.uuid4().hex[:8]
    sent = await produce(broker, [COMMANDS.encode(command(tag, n)) for n in range(5)])
    crashed = False

    async def buggy(batch: list[Received]) -> list[Rejected]:
        nonlocal crashed
        if any(i.event.subject.startswith(tag) for i in batch):
            crashed = True
            raise KeyError("a bug")
        return []

    async with Harness(broker) as h:
        _, error = await h.run(buggy, until=lambda: crashed)
        assert isinstance(error, KeyError)
        partitions = {md.partition for md in sent}
        before = await h.committed(partitions)
        # The same group, after the crash: every one of the records is delivered again.
        seen: set[str] = set()

        async def handle(batch: list[Received]) -> list[Rejected]:
            seen.update(i.event.subject for i in batch if i.event.subject.startswith(tag))
            return []

        async with Harness(broker, h.group) as again:
            _, error = await again.run(handle, until=lambda: len(seen) == 5)
        assert error is None and seen == {f"{tag}-{n}" for n in range(5)}
        first = {}
        for md in sent:
            first[md.partition] = min(first.get(md.partition, md.offset), md.offset)
        assert all(before[p] is None or before[p] <= off for p, off in first.items())


# --- records the database refuses -------------------------------------------------------------------

_TABLES = MetaData()
# A sink shaped like the services' stores: a bounded text column and a 64-bit integer.
SINK = Table("consumer_test_sink", _TABLES, Column("id", String(64), primary_key=True),
             Column("sku", String(24)), Column("nanos", BigInteger))


@pytest.fixture(params=["postgresql", "sqlite"])
async def sink(request: pytest.FixtureRequest, database_url: str, tmp_path) -> AsyncIterator[AsyncEngine]:
    """The sink table on the suite's PostgreSQL and on a SQLite file."""
    url = database_url if request.param == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'sink.db'}"
    if request.param == "postgresql" and not url.startswith("postgresql"):
        pytest.skip("no PostgreSQL for this run (the report header says why)")
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(SINK.drop, checkfirst=True)
        await conn.run_sync(SINK.create)
    yield engine
    async with engine.begin() as conn:
        await conn.run_sync(SINK.drop)
    await engine.dispose()


def storing(engine: AsyncEngine, tag: str, seen: set[str]) -> Callable[[list[Received]], Awaitable[list[Rejected]]]:
    """A handler that writes the batch in one transaction, as the services' stores do."""

    async def handle(batch: list[Received]) -> list[Rejected]:
        mine = [i for i in batch if i.event.subject.startswith(tag)]
        if mine:
            async with engine.begin() as conn:
                await conn.execute(SINK.insert(), [
                    {"id": str(i.event.id), "sku": i.event.data.sku, "nanos": int(i.event.data.new_price * 10**9)}
                    for i in mine])
            seen.update(i.event.subject for i in mine)
        return []

    return handle


def priced(tag: str, n: int, price: str) -> AdjustPrice:
    record = command(tag, n)
    return record.model_copy(update={"data": record.data.model_copy(update={"new_price": Decimal(price)})})


async def stored(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(SINK.c.sku))).scalars())


async def test_a_record_the_database_refuses_is_dead_lettered_alone_and_the_batch_goes_on(broker, sink) -> None:
    tag = uuid.uuid4().hex[:8]
    bad = priced(tag, 7, "9999999999")  # 10**19 nanos: beyond 64 bits, PostgreSQL and SQLite both refuse it
    records = [command(tag, n) for n in range(7)] + [bad] + [command(tag, n) for n in range(8, 20)]
    await produce(broker, [COMMANDS.encode(r) for r in records])
    seen: set[str] = set()

    async with Harness(broker) as h:
        _, error = await h.run(storing(sink, tag, seen), until=lambda: len(seen) == 19)
        assert error is None
        letters = await read_topic(broker.bootstrap_servers, DEADLETTER.name,
                                   until=lambda rs: mine(rs, h.service, bad.subject.encode()))
        assert h.metrics.splits._value.get() >= 1
    [dead] = mine(letters, h.service, bad.subject.encode())
    assert dead.stage == "process" and dead.error.startswith("the database refused the record")
    assert COMMANDS.decode(dead.original_value).id == bad.id
    assert await stored(sink) == {f"{tag}-{n}" for n in range(20) if n != 7}
    assert all(len(mine(letters, h.service, r.subject.encode())) == 0 for r in records if r is not bad)


async def test_text_too_long_for_its_column_is_refused_alone_on_postgresql(broker, sink) -> None:
    tag = uuid.uuid4().hex[:8]
    long_sku = command(tag, 0)
    long_sku = long_sku.model_copy(update={"data": long_sku.data.model_copy(update={"sku": f"{tag}-" + "x" * 40})})
    good = command(tag, 1)
    await produce(broker, [COMMANDS.encode(long_sku), COMMANDS.encode(good)])
    seen: set[str] = set()

    async with Harness(broker) as h:
        _, error = await h.run(storing(sink, tag, seen), until=lambda: good.subject in seen)
        assert error is None
    if sink.dialect.name == "postgresql":  # SQLite does not bound text by its declared length
        assert await stored(sink) == {good.data.sku}
        assert h.metrics.dead_lettered.labels(COMMANDS.short_name, "process")._value.get() == 1
    else:
        assert await stored(sink) == {good.data.sku, long_sku.data.sku}


async def test_a_refused_record_on_a_watched_topic_is_skipped_not_dead_lettered(broker, sink) -> None:
    tag = uuid.uuid4().hex[:8]
    bad, good = priced(tag, 0, "9999999999"), command(tag, 1)
    await produce(broker, [COMMANDS.encode(bad), COMMANDS.encode(good)])
    seen: set[str] = set()

    async with Harness(broker) as h:
        _, error = await h.run(storing(sink, tag, seen), until=lambda: good.subject in seen, watch=True)
        assert error is None
        assert h.metrics.skipped.labels(COMMANDS.short_name)._value.get() >= 1  # with earlier tests' unreadable records
        assert h.metrics.dead_lettered.labels(COMMANDS.short_name, "process")._value.get() == 0
    assert await stored(sink) == {good.data.sku}


async def test_a_nul_character_is_refused_at_decode_naming_its_field(broker) -> None:
    tag = uuid.uuid4().hex[:8]
    key = f"{tag}-0".encode()
    nul = command(tag, 0).model_copy(update={"data": command(tag, 0).data.model_copy(update={"sku": "sku\x00x"})})
    good = command(tag, 0)
    await produce(broker, [COMMANDS.encode(nul), COMMANDS.encode(good)])
    seen: set[uuid.UUID] = set()

    async def handle(batch: list[Received]) -> list[Rejected]:
        seen.update(i.event.id for i in batch if i.event.subject.startswith(tag))
        return []

    async with Harness(broker) as h:
        _, error = await h.run(handle, until=lambda: good.id in seen)
        assert error is None and nul.id not in seen
        letters = await read_topic(broker.bootstrap_servers, DEADLETTER.name, until=lambda rs: mine(rs, h.service, key))
    [dead] = mine(letters, h.service, key)
    assert dead.stage == "validate" and dead.error == "data.sku: NUL characters (\\u0000) are not allowed"


async def test_a_database_error_that_is_not_about_content_crashes_the_loop(broker, sink) -> None:
    tag = uuid.uuid4().hex[:8]
    await produce(broker, [COMMANDS.encode(command(tag, 0))])
    tried = False

    async def broken(batch: list[Received]) -> list[Rejected]:
        nonlocal tried
        if any(i.event.subject.startswith(tag) for i in batch):
            tried = True
            async with sink.begin() as conn:
                await conn.execute(text("SELECT * FROM no_such_table"))  # a bug, not bad input
        return []

    async with Harness(broker) as h:
        _, error = await h.run(broken, until=lambda: tried)
    assert isinstance(error, DBAPIError) and h.metrics.splits._value.get() == 0
