"""The audit table: one row per distinct record per topic, with where it was read."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, MetaData, String, UniqueConstraint, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from storeops.consumer import Received
from storeops.db import BigIntPK, JSONType, RawJSON, UTCDateTime, insert_ignore, table_of


class Base(DeclarativeBase):
    metadata = MetaData()


class AuditRow(Base):
    __tablename__ = "audit_records"
    __table_args__ = (
        # A record read again (redelivery) or produced again with the same id
        # (a service re-announcing after a crash) is stored once. The origin is
        # not unique: offsets start again at 0 when a topic is re-created or the
        # in-memory embedded broker restarts, and those new records must be kept.
        UniqueConstraint("topic", "record_id", name="uq_audit_topic_record"),
        Index("ix_audit_origin", "topic", "partition", "offset"),
        Index("ix_audit_subject_time", "subject", "time"),
        Index("ix_audit_time", "time"),
    )

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str | None] = mapped_column(String(400))
    record_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    type: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(200))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[dict] = mapped_column(JSONType)

    def fields(self) -> dict[str, Any]:
        """The fields of the record as the API serves it (``schemas.audit.AuditRecord``)."""
        return {
            "topic": self.topic, "partition": self.partition, "offset": self.offset, "key": self.key,
            "record_id": self.record_id, "type": self.type, "subject": self.subject, "time": self.time,
            "recorded_at": self.recorded_at, "payload": self.payload,
        }


def _row(item: Received, now: datetime) -> dict:
    r, e = item.record, item.event
    return {
        "topic": r.topic, "partition": r.partition, "offset": r.offset,
        "key": r.key.decode("utf-8", errors="replace") if r.key else None,
        "record_id": e.id, "type": e.type, "subject": e.subject, "time": e.time, "recorded_at": now,
        "payload": RawJSON(r.value.decode()),  # the record exactly as it was on the topic
    }


async def add_records(session: AsyncSession, items: Sequence[Received]) -> int:
    now = datetime.now(UTC)
    return await insert_ignore(session, table_of(AuditRow), (_row(i, now) for i in items))


async def search(
    session: AsyncSession,
    *,
    entity: str | None,
    since: datetime | None,
    until: datetime | None,
    topic: str | None,
    after: int,
    limit: int,
) -> Sequence[AuditRow]:
    """Up to ``limit`` records matching every given filter kept after position ``after``
    (the ``seq`` of the last one read; 0 for the start), in the order they were kept."""
    query = select(AuditRow).where(AuditRow.seq > after).order_by(AuditRow.seq).limit(limit)
    if entity:
        query = query.where(AuditRow.subject == entity)
    if since:
        query = query.where(AuditRow.time >= since)
    if until:
        query = query.where(AuditRow.time < until)
    if topic:
        query = query.where(AuditRow.topic == topic)
    return (await session.scalars(query)).all()
