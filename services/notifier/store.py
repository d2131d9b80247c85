"""The notifier's tables: the in-app feed (read by cursor) with each principal's state of it, the requests other
services hand over, and the encrypted credentials webhooks name."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    and_,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.notifications import NotificationCreated
from storeops.db import BigIntPK, CommitSignal, JSONType, UTCDateTime, insert_ignore, insert_new, table_of
from storeops.outbox import Outbox


class Base(DeclarativeBase):
    metadata = MetaData()


OUTBOX = Outbox("notifier", Base.metadata)  # audit entries of changes, in the change's transaction (storeops.outbox)


class NotificationRow(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("source_event_id", "channel", "recipient", name="uq_notifications_source_channel_recipient"),
        Index("ix_notifications_recipient_seq", "recipient", "seq"),
        Index("ix_notifications_fallback_state_at", "fallback_state", "fallback_at"),  # the fallback's pick-up
    )

    # The cursor: strictly increasing in commit order (add_notifications serialises the inserts on PostgreSQL).
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
    kind: Mapped[str | None] = mapped_column(String(40))  # the event type (events.EVENT_TYPES); None: a request's message
    # due: critical, waiting to be seen; then seen | sent (e-mailed again) | impossible (no address to fall back on)
    fallback_state: Mapped[str | None] = mapped_column(String(20))
    # when it became due (stored: a replayed old record is not overdue at once), then when it was settled
    fallback_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class NotificationStateRow(Base):
    """One principal's state of one notification: no row is unread and unseen."""

    __tablename__ = "notification_states"

    notification_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("notifications.id", ondelete="CASCADE"),
                                                       primary_key=True)
    principal: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


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


# Any constant both writers agree on: pg_advisory_xact_lock takes one bigint.
NOTIFICATIONS_LOCK = 0x6E6F746966790001
# Marked by add_notifications: the live inbox reads when that session commits (stream.py).
NOTIFICATIONS_ADDED = CommitSignal("notifications_added")
# What add_notifications stored in a session, for a caller that announces them after the commit (to_announce).
_TO_ANNOUNCE = "storeops.notifications_to_announce"


def to_announce(session: AsyncSession) -> list[NotificationCreated]:
    """The notifications ``add_notifications`` stored in ``session`` so far (taken: asked once), for the
    notifications topic once the transaction has committed."""
    taken: list[NotificationCreated] = session.info.pop(_TO_ANNOUNCE, [])
    return taken


async def add_notifications(session: AsyncSession, notifications: Sequence[NotificationCreated],
                            kinds: Mapping[uuid.UUID, str] | None = None, critical: Collection[str] = (),
                            now: datetime | None = None) -> int:
    """Store notifications; one already stored (redelivered change) is skipped.

    On PostgreSQL the insert takes a transaction-scoped advisory lock first, so the
    transactions that add notifications commit one after another and ``seq`` order is
    commit order: a reader past seq 8 can never later find a 7 committed behind it (a
    sequence hands out numbers at insert time, and without the lock a transaction that
    took 7 may commit after one that took 8 was read). The lock is held until commit: call
    this last in the transaction. SQLite has one writer at a time anyway.
    ``kinds`` names each notification's event type; a severity in ``critical`` makes it
    due for the fallback.
    """
    if not notifications:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": NOTIFICATIONS_LOCK})
    NOTIFICATIONS_ADDED.mark(session)
    session.info.setdefault(_TO_ANNOUNCE, []).extend(notifications)
    kinds = kinds or {}
    now = now or datetime.now(UTC)
    return await insert_ignore(
        session,
        table_of(NotificationRow),
        (
            {
                "id": n.data.notification_id, "source_event_id": n.causation_id, "channel": n.data.channel,
                "recipient": n.data.recipient, "title": n.data.title, "body": n.data.body,
                "severity": n.data.severity.value if n.data.severity else None,
                "exception_id": n.data.exception_id, "created_at": n.data.created_at,
                "kind": kinds.get(n.data.notification_id),
                **({"fallback_state": "due", "fallback_at": now} if n.data.severity and n.data.severity.value in critical
                   else {"fallback_state": None, "fallback_at": None}),
            }
            for n in notifications
        ),
    )


@dataclass(frozen=True)
class Audience:
    """Whose notifications a principal reads: their own and their teams' (``recipients``),
    plus the default team's of ``default_severities`` (the baseline every principal hears
    without configuring anything). ``only`` narrows it to one recipient's feed."""

    principal: str
    recipients: frozenset[str]
    default_recipient: str | None = None
    default_severities: frozenset[str] = frozenset()
    only: str | None = None

    def clause(self) -> ColumnElement[bool]:
        n = NotificationRow
        if self.only is not None:
            return n.recipient == self.only
        mine = n.recipient.in_(sorted(self.recipients))
        if self.default_recipient is None or self.default_recipient in self.recipients:
            return mine
        return or_(mine, and_(n.recipient == self.default_recipient, n.severity.in_(sorted(self.default_severities))))

    def sees(self, recipient: str, severity: str | None) -> bool:
        """The clause, in Python: for the live stream's fan-out."""
        if self.only is not None:
            return recipient == self.only
        return recipient in self.recipients or (
            recipient == self.default_recipient and severity in self.default_severities)


STATES = ("unread", "seen", "read", "archived")


def state_of(state: NotificationStateRow | None) -> str:
    """unread (never seen), seen, read or archived: the furthest a principal took it."""
    if state is None:
        return "unread"
    return "archived" if state.archived_at else "read" if state.read_at else "seen" if state.seen_at else "unread"


def _state_clause(state: str) -> ColumnElement[bool]:
    s = NotificationStateRow
    match state:
        case "unread":
            return and_(s.read_at.is_(None), s.archived_at.is_(None))
        case "seen":
            return and_(s.seen_at.is_not(None), s.read_at.is_(None), s.archived_at.is_(None))
        case "read":
            return and_(s.read_at.is_not(None), s.archived_at.is_(None))
    return s.archived_at.is_not(None)


def _joined(audience: Audience) -> Select[NotificationRow, NotificationStateRow]:
    s = NotificationStateRow
    return select(NotificationRow, s).outerjoin(
        s, and_(s.notification_id == NotificationRow.id, s.principal == audience.principal)).where(audience.clause())


async def inbox_after(session: AsyncSession, audience: Audience, after: int, limit: int, state: str | None = None,
                      severity: str | None = None) -> list[tuple[NotificationRow, NotificationStateRow | None]]:
    """The audience's notifications after seq ``after``, oldest first, each with the principal's state."""
    query = _joined(audience).where(NotificationRow.seq > after).order_by(NotificationRow.seq).limit(limit)
    if state == "unread":  # no state row is unread too
        query = query.where(or_(NotificationStateRow.principal.is_(None), _state_clause("unread")))
    elif state is not None:
        query = query.where(_state_clause(state))
    if severity is not None:
        query = query.where(NotificationRow.severity == severity)
    return [(row, st) for row, st in (await session.execute(query)).all()]


async def inbox_counts(session: AsyncSession, audience: Audience) -> dict[str, Any]:
    """Unread and unseen (archived ones count as neither), and unread by severity."""
    s = NotificationStateRow
    unread = or_(s.principal.is_(None), _state_clause("unread"))
    unseen = or_(s.principal.is_(None), and_(s.seen_at.is_(None), s.read_at.is_(None), s.archived_at.is_(None)))
    query = _joined(audience).with_only_columns(
        NotificationRow.severity, func.count().filter(unread), func.count().filter(unseen)).group_by(NotificationRow.severity)
    by_severity: dict[str, int] = {}
    total_unread = total_unseen = 0
    for severity, n_unread, n_unseen in (await session.execute(query)).all():
        total_unread += n_unread
        total_unseen += n_unseen
        if n_unread:
            by_severity[severity or "none"] = by_severity.get(severity or "none", 0) + n_unread
    return {"unread": total_unread, "unseen": total_unseen, "unread_by_severity": by_severity}


async def visible_notification(session: AsyncSession, audience: Audience, notification_id: uuid.UUID) -> NotificationRow | None:
    query = select(NotificationRow).where(NotificationRow.id == notification_id, audience.clause())
    return (await session.scalars(query)).first()


_MARKS = {"seen": ("seen_at",), "read": ("seen_at", "read_at"), "archive": ("seen_at", "archived_at")}


async def mark(session: AsyncSession, principal: str, notification_ids: Sequence[uuid.UUID], how: str, now: datetime) -> None:
    """Mark notifications seen, read (and so seen) or archived for one principal; a time already set is kept."""
    columns = _MARKS[how]
    for start in range(0, len(notification_ids), 1000):  # bounded IN lists and parameter counts
        chunk = list(notification_ids[start:start + 1000])
        await insert_ignore(session, table_of(NotificationStateRow),
                            [{"notification_id": i, "principal": principal, **{c: now for c in columns}} for i in chunk])
        await session.execute(update(NotificationStateRow).where(
            NotificationStateRow.principal == principal, NotificationStateRow.notification_id.in_(chunk),
        ).values({c: func.coalesce(getattr(NotificationStateRow, c), now) for c in columns}))
        # seen by someone it was for: the fallback has nothing left to do
        await session.execute(update(NotificationRow).where(
            NotificationRow.id.in_(chunk), NotificationRow.fallback_state == "due",
        ).values(fallback_state="seen", fallback_at=now))


async def unread_ids(session: AsyncSession, audience: Audience, up_to: int | None, limit: int) -> list[uuid.UUID]:
    """Ids of the audience's notifications the principal has not read (up to seq ``up_to``), oldest first."""
    s = NotificationStateRow
    query = _joined(audience).with_only_columns(NotificationRow.id).where(
        or_(s.principal.is_(None), s.read_at.is_(None))).order_by(NotificationRow.seq).limit(limit)
    if up_to is not None:
        query = query.where(NotificationRow.seq <= up_to)
    return list((await session.scalars(query)).all())


async def last_seq(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.coalesce(func.max(NotificationRow.seq), 0))) or 0)


async def notifications_between(session: AsyncSession, after: int, up_to: int | None, limit: int) -> Sequence[NotificationRow]:
    """Every recipient's notifications after ``after`` (up to ``up_to``), oldest first: the live stream's reader."""
    query = select(NotificationRow).where(NotificationRow.seq > after).order_by(NotificationRow.seq).limit(limit)
    if up_to is not None:
        query = query.where(NotificationRow.seq <= up_to)
    return (await session.scalars(query)).all()


async def notifications_after(session: AsyncSession, after: int, recipient: str | None, limit: int) -> Sequence[NotificationRow]:
    query = select(NotificationRow).where(NotificationRow.seq > after).order_by(NotificationRow.seq).limit(limit)
    if recipient:
        query = query.where(NotificationRow.recipient == recipient)
    return (await session.scalars(query)).all()


async def fallback_due(session: AsyncSession, due_before: datetime, limit: int) -> Sequence[NotificationRow]:
    """Critical notifications still unseen that were stored before ``due_before``, oldest first."""
    query = select(NotificationRow).where(
        NotificationRow.fallback_state == "due", NotificationRow.fallback_at <= due_before,
    ).order_by(NotificationRow.fallback_at, NotificationRow.seq).limit(limit)
    if session.get_bind().dialect.name == "postgresql":  # two notifier processes never fall back on the same one
        query = query.with_for_update(skip_locked=True)
    return (await session.scalars(query)).all()


async def record_fallback(session: AsyncSession, notification_id: uuid.UUID, result: str, now: datetime) -> None:
    await session.execute(update(NotificationRow).where(NotificationRow.id == notification_id)
                          .values(fallback_state=result, fallback_at=now))


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
