"""Rebuild the queue's tables from the exceptions topic.

Every change record carries the exception's whole state after the change, so the
latest version of each exception is its current state. The change history (the
outbox, marked published) and the applied-action ids come back too, so actions
redelivered after a rebuild are still recognised.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.exceptions import ExceptionChangeRecord, ExceptionState
from schemas.registry import EXCEPTIONS
from services.exceptions import store

# Changes whose cause (the envelope's causation id) is an action the queue applied.
_FROM_ACTIONS = frozenset({"created", "updated", "reopened"})


@dataclass(frozen=True)
class Rebuilt:
    records: int
    exceptions: int
    actions: int


class NotEmpty(Exception):
    """The queue already holds exceptions: a rebuild writes into empty tables only."""


async def read_changes(bootstrap_servers: str, idle_seconds: float = 3.0) -> list[ExceptionChangeRecord]:
    """Every change record on the topic, from the beginning, read until nothing arrives for ``idle_seconds``.

    Not "until the end offset": the embedded broker under-reports end offsets.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(EXCEPTIONS.name, p) for p in sorted(await _partitions(consumer))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ExceptionChangeRecord] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_seconds:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                records += [_decode(m.value) for m in msgs if m.value is not None]
                last = time.monotonic()
        return records
    finally:
        await consumer.stop()


def _decode(value: bytes) -> ExceptionChangeRecord:
    record = EXCEPTIONS.decode(value)
    assert isinstance(record, ExceptionChangeRecord)  # every member of the topic's value union is a change record
    return record


async def _partitions(consumer: AIOKafkaConsumer) -> set[int]:
    await consumer.topics()
    return consumer.partitions_for_topic(EXCEPTIONS.name) or set()


async def rebuild(sessions: async_sessionmaker[AsyncSession], records: Iterable[ExceptionChangeRecord]) -> Rebuilt:
    """Write the latest state of each exception, its history and the applied actions into empty tables."""
    records = list(records)
    latest: dict[uuid.UUID, ExceptionState] = {}
    actions: set[uuid.UUID] = set()
    for record in records:
        after = record.data.after
        if after.id not in latest or latest[after.id].version < after.version:
            latest[after.id] = after
        if record.data.kind in _FROM_ACTIONS and record.data.actor.kind == "system" and record.causation_id:
            actions.add(record.causation_id)
    async with sessions.begin() as session:
        if await session.scalar(select(func.count()).select_from(store.ExceptionRow)):
            raise NotEmpty("the exceptions table is not empty; rebuild into a freshly migrated database")
        for start in range(0, len(latest), 1000):
            chunk = list(latest.values())[start:start + 1000]
            await session.execute(store.EXCEPTIONS_TABLE.insert(), [store.row_of(s) for s in chunk])
        await store.claim_actions(session, actions)
        ordered = sorted(records, key=lambda r: (str(r.data.exception_id), r.data.after.version))
        await store.add_to_outbox(session, (_history_row(r) for r in ordered))
    return Rebuilt(len(records), len(latest), len(actions))


def _history_row(record: ExceptionChangeRecord) -> dict:
    key, value = EXCEPTIONS.encode(record)
    return {"record_id": record.id, "exception_id": record.data.exception_id, "topic": EXCEPTIONS.name,
            "key": key.decode(), "value": value.decode(), "published": True}
