"""The notifier's tables: the in-app feed (read by cursor), the requests other
services hand over, and the encrypted credentials webhooks name."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, Index, Integer, MetaData, String, Text, UniqueConstraint, Uuid, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.notifications import NotificationCreated
from storeops.db import BigIntPK, JSONType, UTCDateTime, insert_ignore, insert_new, table_of


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


class NotifyRequestRow(Base):
    """A request handed over by another service; its id is the hand-over's idempotency key."""

    __tablename__ = "notify_requests"
    __table_args__ = (
        Index("ix_notify_requests_status_created_at", "status", "created_at"),  # the delivery worker's pick-up
        Index("ix_notify_requests_created_at", "created_at"),
    )

    request_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    channel: Mapped[str] = mapped_column(String(20))
    # accepted: waiting for delivery; delivered: done (in-app messages are, once stored)
    status: Mapped[str] = mapped_column(String(20))
    message: Mapped[dict[str, Any]] = mapped_column(JSONType)
    rule_id: Mapped[str | None] = mapped_column(String(200))
    rule_version: Mapped[int | None] = mapped_column(Integer)
    rule_mode: Mapped[str | None] = mapped_column(String(20))
    run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    step_id: Mapped[str | None] = mapped_column(String(100))
    event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer)


class CredentialRow(Base):
    """A named secret; only its Fernet token is stored."""

    __tablename__ = "credentials"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(200))


async def add_notifications(session: AsyncSession, notifications: Sequence[NotificationCreated]) -> int:
    """Store notifications; one already stored (redelivered change) is skipped."""
    return await insert_ignore(
        session,
        table_of(NotificationRow),
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



# --- requests ------------------------------------------------------------------------


async def stored_request_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` are stored already."""
    if not ids:
        return set()
    query = select(NotifyRequestRow.request_id).where(NotifyRequestRow.request_id.in_(set(ids)))
    return set((await session.scalars(query)).all())


async def add_requests(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> set[uuid.UUID]:
    """Store requests; returns the ids inserted (one stored meanwhile by a concurrent hand-over is skipped)."""
    return set(await insert_new(session, table_of(NotifyRequestRow), rows))


async def requests_by_id(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[NotifyRequestRow]:
    if not ids:
        return []
    query = select(NotifyRequestRow).where(NotifyRequestRow.request_id.in_(set(ids)))
    return list((await session.scalars(query)).all())


async def get_request(session: AsyncSession, request_id: uuid.UUID) -> NotifyRequestRow | None:
    return await session.get(NotifyRequestRow, request_id)


async def list_requests(session: AsyncSession, channel: str | None, status: str | None, limit: int) -> Sequence[NotifyRequestRow]:
    """Newest first."""
    query = select(NotifyRequestRow).order_by(NotifyRequestRow.created_at.desc(), NotifyRequestRow.request_id.desc())
    if channel:
        query = query.where(NotifyRequestRow.channel == channel)
    if status:
        query = query.where(NotifyRequestRow.status == status)
    return (await session.scalars(query.limit(limit))).all()


# --- credentials -----------------------------------------------------------------------


async def credential_names(session: AsyncSession, names: Sequence[str]) -> set[str]:
    """Which of ``names`` are stored credentials."""
    if not names:
        return set()
    return set((await session.scalars(select(CredentialRow.name).where(CredentialRow.name.in_(set(names))))).all())


async def get_credential(session: AsyncSession, name: str) -> CredentialRow | None:
    return await session.get(CredentialRow, name)


async def list_credentials(session: AsyncSession) -> Sequence[CredentialRow]:
    return (await session.scalars(select(CredentialRow).order_by(CredentialRow.name))).all()


async def put_credential(session: AsyncSession, name: str, ciphertext: str, actor: str, now: datetime) -> bool:
    """Store or replace a credential; True when it is new. Safe against a concurrent first store."""
    row = {"name": name, "ciphertext": ciphertext, "created_at": now, "updated_at": now, "updated_by": actor}
    if await insert_new(session, table_of(CredentialRow), [row]):
        return True
    await session.execute(
        update(CredentialRow).where(CredentialRow.name == name).values(ciphertext=ciphertext, updated_at=now, updated_by=actor)
    )
    return False


async def delete_credential(session: AsyncSession, name: str) -> bool:
    """Remove a credential; False when there was none."""
    result = await session.execute(delete(CredentialRow).where(CredentialRow.name == name))
    assert isinstance(result, CursorResult)  # a DELETE's result; Session.execute is typed as returning any Result
    return result.rowcount > 0
