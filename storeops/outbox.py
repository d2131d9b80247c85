"""A transactional outbox: the records that announce a change, written in the change's own transaction.

``put(session, topic, records)`` adds them to the service's ``outbox`` table in the caller's
transaction, so they are committed with the change or not at all (pgaudit's maintainers refuse to log
to a table for the opposite reason: a send that is not part of the transaction can be lost, or be
about a change that was rolled back). ``Publisher`` sends what is committed and unpublished, oldest
first, and marks it published: at start-up (what a crash left behind), as soon as a transaction that
``put`` something commits, and every ``poll_seconds``. A record is published at least once; a second
publication (a crash between the send and the mark) carries the same record id, which consumers
dedupe on.

The platform knows no domain: a service makes its ``Outbox(service, metadata)``, names it in
``ServiceSpec(outbox=...)`` and creates its table in a migration (``Outbox.create``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import Column, Index, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas import audit
from schemas.common import Actor, EntityType
from schemas.envelope import Envelope
from schemas.registry import AUDIT, Topic
from storeops.db import BigIntPK, CommitSignal, UTCDateTime

log = logging.getLogger(__name__)

PAGE = 500
# Set by put: the publishers of this process publish as soon as that transaction commits.
PUT = CommitSignal("outbox_put")


class Outbox:
    """One service's outbox: the table ``<service>_outbox`` (services may share one database), in the
    service's ``metadata`` so its schema checks know it; a migration creates it (``create`` / ``drop``)."""

    def __init__(self, service: str, metadata: MetaData) -> None:
        self.service, self.name = service, f"{service}_outbox"
        self.index = f"ix_{self.name}_published_seq"
        self.table = Table(self.name, metadata, *_columns(), Index(self.index, "published_at", "seq"))

    def create(self, op: Any) -> None:
        """In the service's migration: ``OUTBOX.create(op)`` (alembic's ``op``)."""
        op.create_table(self.name, *_columns())
        op.create_index(self.index, self.name, ["published_at", "seq"], unique=False)

    def drop(self, op: Any) -> None:
        op.drop_index(self.index, table_name=self.name)
        op.drop_table(self.name)

    async def put(self, session: AsyncSession, topic: Topic, records: Sequence[Envelope]) -> None:
        """Add ``records`` for ``topic`` in ``session``'s transaction; published once it commits."""
        if not records:
            return
        now = datetime.now(UTC)
        rows = []
        for record in records:
            key, value = topic.encode(record)
            rows.append({"topic": topic.name, "key": key.decode() if key is not None else None, "value": value.decode(),
                         "created_at": now, "published_at": None})
        await session.execute(insert(self.table), rows)
        PUT.mark(session)

    async def audit_change(self, session: AsyncSession, actor: Actor, action: str,
                           entities: Sequence[tuple[EntityType, str]], before: dict[str, Any] | None = None,
                           after: dict[str, Any] | None = None, cause: str | None = None) -> None:
        """The audit entry of a change made in ``session``'s transaction (``schemas.audit.entry``),
        published with it: every API that changes something calls this before its transaction commits."""
        await self.put(session, AUDIT, [audit.entry(source=f"storeops/{self.service}", action=action, actor=actor,
                                                    entities=entities, before=before, after=after, cause=cause)])

    async def unpublished(self, sessions: async_sessionmaker[AsyncSession], limit: int = PAGE) -> list[dict[str, Any]]:
        """The oldest committed records not yet published."""
        t = self.table
        async with sessions() as session:
            rows = await session.execute(select(t.c.seq, t.c.topic, t.c.key, t.c.value)
                                         .where(t.c.published_at.is_(None)).order_by(t.c.seq).limit(limit))
            return [dict(r._mapping) for r in rows]

    async def mark_published(self, session: AsyncSession, seqs: Sequence[int]) -> None:
        await session.execute(update(self.table).where(self.table.c.seq.in_(seqs)).values(published_at=datetime.now(UTC)))


def _columns() -> list[Column[Any]]:
    return [Column("seq", BigIntPK, primary_key=True, autoincrement=True),
            Column("topic", String(200), nullable=False),
            Column("key", String(400)),
            Column("value", Text, nullable=False),  # the record as it goes on the topic (JSON)
            Column("created_at", UTCDateTime(), nullable=False),
            Column("published_at", UTCDateTime())]


class Publisher:
    """Sends a service's committed outbox records to their topics, oldest first."""

    def __init__(self, outbox: Outbox, sessions: async_sessionmaker[AsyncSession], producer: AIOKafkaProducer,
                 poll_seconds: float = 2.0) -> None:
        self.outbox, self.sessions, self.producer, self.poll_seconds = outbox, sessions, producer, poll_seconds
        self._due = asyncio.Event()
        self._lock = asyncio.Lock()
        PUT.listen(self)

    def wake(self) -> None:
        """Something was committed: publish now rather than at the next poll."""
        self._due.set()

    async def flush(self) -> int:
        """Publish everything committed and unpublished; how many records."""
        published = 0
        async with self._lock:
            while rows := await self.outbox.unpublished(self.sessions):
                futures = [await self.producer.send(r["topic"], key=r["key"].encode() if r["key"] is not None else None,
                                                    value=r["value"].encode()) for r in rows]
                await asyncio.gather(*futures)
                async with self.sessions.begin() as session:
                    await self.outbox.mark_published(session, [r["seq"] for r in rows])
                published += len(rows)
        return published

    async def run(self) -> None:
        """For the life of the process: publish at start, when woken, and every ``poll_seconds``; a broker
        or database away is waited out (the records wait in the table)."""
        backoff = 0.5
        while True:
            try:
                await self.flush()
                backoff = 0.5
            except (KafkaError, DBAPIError, OSError) as exc:
                log.warning("outbox: could not publish; trying again", extra={"error": repr(exc), "backoff": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self.poll_seconds)
            self._due.clear()
