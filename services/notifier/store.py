"""The in-app feed: one row per notification, read by cursor."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Index, MetaData, String, Text, UniqueConstraint, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.notifications import NotificationCreated
from storeops.db import BigIntPK, UTCDateTime, insert_ignore


class Base(DeclarativeBase):
    metadata = MetaData()


class NotificationRow(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("source_event_id", "channel", "recipient", name="uq_notifications_source_channel_recipient"),
        Index("ix_notifications_recipient_seq", "recipient", "seq"),
    )

    # The cursor: strictly increasing in insertion order.
    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    source_event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    channel: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(400))
    body: Mapped[str] = mapped_column(Text)
    severity: Mapped[str | None] = mapped_column(String(10))
    exception_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


async def add_notifications(session: AsyncSession, notifications: Sequence[NotificationCreated]) -> int:
    """Store notifications; one already stored (redelivered change) is skipped."""
    return await insert_ignore(
        session,
        NotificationRow.__table__,
        (
            {
                "id": n.data.notification_id, "source_event_id": n.causation_id, "channel": n.data.channel,
                "recipient": n.data.recipient, "title": n.data.title, "body": n.data.body,
                "severity": n.data.severity.value if n.data.severity else None,
                "exception_id": n.data.exception_id, "created_at": n.data.created_at,
            }
            for n in notifications
        ),
    )


async def notifications_after(session: AsyncSession, after: int, recipient: str | None, limit: int) -> Sequence[NotificationRow]:
    query = select(NotificationRow).where(NotificationRow.seq > after).order_by(NotificationRow.seq).limit(limit)
    if recipient:
        query = query.where(NotificationRow.recipient == recipient)
    return (await session.scalars(query)).all()
