"""Bad records produced straight onto every consumed topic never stop the stream.

For each topic some service reads: bytes that are not JSON, JSON that breaks the
contract, a record carrying a NUL character (PostgreSQL refuses NUL in text and
JSONB), and on the topics audit owns a record whose type is too long for audit's
column (PostgreSQL refuses it; SQLite keeps it). Then, on the event topics, a
good store event under the same key (same partition, after them). Checked:
every service reading the topic commits past all of them; each bad record has
exactly one dead letter; the good event reaches the audit trail; every service
stays ready. Run on the suite's database (PostgreSQL under CI) and on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from schemas.registry import DEADLETTER, EVENT_TOPICS, REGISTRY, Topic
from services import SERVICES, load_spec
from storeops.kafka import make_consumer
from storeops.settings import KafkaSettings
from storeops_cli.bench.stack import BenchStack
from tests.helpers import eventually, isolated_stack, read_topic

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
EXAMPLE_OF = {"orders": "OrderPlaced", "prices": "PriceChanged", "stock": "StockChanged", "payments": "PaymentFailed"}
READERS = {t.name: [n for n in SERVICES if t in (*load_spec(n).consumes, *load_spec(n).watches)] for t in REGISTRY}
CONSUMED = [t for t in REGISTRY if READERS[t.name]]


@pytest.fixture(scope="module", params=["suite database", "sqlite"])
def hostile_stack(request: pytest.FixtureRequest, database_url: str) -> Iterator[BenchStack]:
    """A stack of its own, on the suite's server or SQLite files."""
    with isolated_stack(request.param, database_url, "storeops_hostile") as running:
        yield running


def envelope(topic: Topic, key: str, **changes: object) -> dict:
    """A record shaped like the topic's envelope (valid for the event topics)."""
    short = topic.short_name.removeprefix("events.")
    doc = json.loads((EXAMPLES / f"{EXAMPLE_OF.get(short, 'OrderPlaced')}.json").read_text())
    doc.update(id=str(uuid.uuid4()), subject=key, time=datetime.now(UTC).isoformat())
    for field in ("order_id", "sku"):
        if field in doc["data"]:
            doc["data"][field] = key
    doc.update(changes)
    return doc


def owner(topic: Topic) -> str:
    return next(n for n in SERVICES if topic in load_spec(n).consumes)


def bad_records(topic: Topic, key: str) -> tuple[list[bytes], int | None]:
    """The bad records for ``topic``, and the index of the one only PostgreSQL refuses (if any)."""
    nul = envelope(topic, key)
    nul["data"]["customer_id"] = "bad\u0000value"
    bad = [b"\xff\xfe not json", json.dumps({"type": "Nothing", "subject": key}).encode(), json.dumps(nul).encode()]
    if owner(topic) != "audit":
        return bad, None
    bad.append(json.dumps(envelope(topic, key, type="T" * 150)).encode())  # audit's type column holds 100
    return bad, len(bad) - 1


async def produce(bootstrap: str, topic: Topic, key: str, values: list[bytes]) -> list:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        return [await producer.send_and_wait(topic.name, value, key=key.encode()) for value in values]
    finally:
        await producer.stop()


async def committed(stack: BenchStack, flavor: str, service: str, tp: TopicPartition) -> int | None:
    probe = make_consumer(KafkaSettings(bootstrap_servers=stack.bootstrap_servers, flavor=flavor), f"storeops-{service}",
                          "probe")
    await probe.start()
    try:
        return await probe.committed(tp)
    finally:
        await probe.stop()


@pytest.mark.parametrize("topic", CONSUMED, ids=lambda t: t.short_name)
async def test_bad_records_on_a_topic_are_dead_lettered_once_and_the_stream_goes_on(
        hostile_stack: BenchStack, topic: Topic) -> None:
    stack = hostile_stack
    key = f"hostile-{uuid.uuid4().hex[:10]}"
    good = envelope(topic, key) if topic in EVENT_TOPICS else None
    bad, only_postgresql = bad_records(topic, key)
    sent = await produce(stack.bootstrap_servers, topic, key, bad + ([json.dumps(good).encode()] if good else []))
    last = sent[-1]
    tp = TopicPartition(topic.name, last.partition)

    for service in READERS[topic.name]:
        async def past(service: str = service) -> bool:
            assert stack.broker is not None
            offset = await committed(stack, stack.broker.flavor, service, tp)
            return offset is not None and offset > last.offset
        await eventually(past, timeout=30)

    on_sqlite = stack.database_url_for(owner(topic)).startswith("sqlite")
    origins = {(topic.name, md.partition, md.offset) for i, md in enumerate(sent[:len(bad)])
               if not (on_sqlite and i == only_postgresql)}  # SQLite keeps a long type

    def letters(records: list) -> list:
        found = []
        for r in records:
            with contextlib.suppress(ValueError):  # the bad records of the dead-letter topic's own case
                found.append(DEADLETTER.decode(r.value).data)
        return [d for d in found if (d.topic, d.partition, d.offset) in origins]

    expected = len(origins)
    records = await read_topic(stack.bootstrap_servers, DEADLETTER.name, until=lambda rs: len(letters(rs)) >= expected)
    await asyncio.sleep(1.5)  # a second dead letter for the same record would come from another reader by now
    records = await read_topic(stack.bootstrap_servers, DEADLETTER.name, until=lambda rs: len(letters(rs)) >= expected)
    dead = letters(records)
    assert sorted((d.offset, d.service) for d in dead) == sorted(
        {(d.offset, d.service) for d in dead}), "a bad record was dead-lettered twice"
    assert len({d.offset for d in dead}) == len(dead) == expected, [(d.offset, d.service, d.error) for d in dead]
    assert {d.service for d in dead} == {owner(topic)}
    nul = next(d for d in dead if b"\\u0000" in (d.original_value or b""))
    assert nul.stage == "validate" and "NUL characters" in nul.error

    async with stack.async_client(timeout=10) as client:
        if good:
            async def audited() -> bool:
                page = (await client.get(f"{stack.urls['audit']}/v1/audit", params={"entity": key})).json()
                return any(item["record_id"] == good["id"] for item in page["items"])
            await eventually(audited, timeout=30)
        for name, url in stack.urls.items():
            assert (await client.get(f"{url}/readyz")).status_code == 200, name
