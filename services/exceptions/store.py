"""The queue's tables and queries.

``exceptions`` holds each exception's whole state as JSON beside the columns the
queue filters and sorts on, all derived from that state by ``row_of``.
``exception_actions`` remembers which actions were applied (a redelivered action
is a no-op). ``exception_outbox`` is the change history and the outbox: every
change is written in the same transaction as the state it produced and published
afterwards, so a crash between the two cannot lose a change record.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CursorResult,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    Uuid,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.envelope import Envelope
from schemas.exceptions import ExceptionState, ExceptionStatus
from schemas.registry import EXCEPTIONS, Topic
from services.exceptions.workflow import OPEN, dedup_key, reopenable
from storeops.db import BigIntPK, JSONType, RawJSON, UTCDateTime, insert_ignore, insert_new, table_of


class Base(DeclarativeBase):
    metadata = MetaData()


OPEN_VALUES = sorted(s.value for s in OPEN)
_OPEN_WHERE = text("status IN (" + ", ".join(f"'{v}'" for v in OPEN_VALUES) + ")")


class ExceptionRow(Base):
    __tablename__ = "exceptions"
    # The queue's default view is the open exceptions in rank order: partial indexes
    # over open rows let it read the first page off an index instead of sorting the
    # table (PostgreSQL, 100k open: 97 ms -> under 1 ms), and stay small as resolved
    # rows pile up. The query must repeat OPEN_SQL exactly for the planner to use them.
    __table_args__ = (
        Index("ix_exceptions_open_rank", "rank_key", postgresql_where=_OPEN_WHERE, sqlite_where=_OPEN_WHERE),
        Index("ix_exceptions_open_type_rank", "type", "rank_key", postgresql_where=_OPEN_WHERE, sqlite_where=_OPEN_WHERE),
        Index("ix_exceptions_open_counts", "type", "severity", postgresql_where=_OPEN_WHERE, sqlite_where=_OPEN_WHERE),
        Index("ix_exceptions_queue", "status", "rank_key"),
        Index("ix_exceptions_assignee_queue", "assignee", "status", "rank_key"),
        Index("ix_exceptions_due", "status", "sla_due_at"),
        Index("ix_exceptions_wake", "status", "snooze_until"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20))
    entity_type: Mapped[str] = mapped_column(String(20))
    entity_id: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(String(300))
    assignee: Mapped[str | None] = mapped_column(String(200))
    impact: Mapped[Decimal | None] = mapped_column(Numeric(18, 4))
    # severity, then impact (largest first), then age, then id: one sortable string, one index
    rank_key: Mapped[str] = mapped_column(String(100))
    dedup_key: Mapped[str] = mapped_column(String(300), index=True)
    # the dedup key while open, NULL once resolved: unique, so one open exception per (type, entity)
    open_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    reopenable: Mapped[bool] = mapped_column(Boolean)
    watch_event: Mapped[str | None] = mapped_column(String(100))
    sla_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    snooze_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    state: Mapped[Any] = mapped_column(JSONType)

    def model(self) -> ExceptionState:
        return ExceptionState.model_validate(self.state)


class ActionApplied(Base):
    __tablename__ = "exception_actions"

    action_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)


class OutboxRow(Base):
    __tablename__ = "exception_outbox"
    __table_args__ = (Index("ix_exception_outbox_history", "exception_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    record_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    exception_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    topic: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(200))
    value: Mapped[str] = mapped_column(Text)
    published: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


EXCEPTIONS_TABLE = table_of(ExceptionRow)
_OUTBOX = table_of(OutboxRow)
_IMPACT_CEILING = 10**18  # Money has at most 14 digits with 4 decimals: 10**14 * 10**4


def rank_key(state: ExceptionState) -> str:
    impact = int((state.impact or Decimal(0)) * 10_000)
    micros = int(state.created_at.timestamp() * 1_000_000)
    return f"{state.severity.rank}{_IMPACT_CEILING - impact:019d}{micros:017d}{state.id.hex}"


def row_of(state: ExceptionState) -> dict[str, Any]:
    key = dedup_key(state.type, state.entity_type, state.entity_id)
    watch = state.snooze.until_event if state.status is ExceptionStatus.SNOOZED and state.snooze else None
    if state.status in OPEN and watch is None and state.heal is not None:
        watch = state.heal.event_type
    return {
        "id": state.id, "version": state.version, "type": state.type.value, "severity": state.severity.value,
        "status": state.status.value, "entity_type": state.entity_type.value, "entity_id": state.entity_id,
        "title": state.title, "assignee": state.assignee, "impact": state.impact, "rank_key": rank_key(state),
        "dedup_key": key, "open_key": key if state.status in OPEN else None, "reopenable": reopenable(state),
        "watch_event": watch, "sla_due_at": state.sla_due_at,
        "snooze_until": state.snooze.until if state.status is ExceptionStatus.SNOOZED and state.snooze else None,
        "created_at": state.created_at, "last_seen": state.last_seen,
        "state": RawJSON(state.model_dump_json()),
    }


class StaleWrite(Exception):
    """The row moved on since it was read (another writer): re-read and try again, or refuse."""


async def insert_states(session: AsyncSession, states: Sequence[ExceptionState]) -> None:
    if states:
        await session.execute(EXCEPTIONS_TABLE.insert(), [row_of(s) for s in states])


async def write_state(session: AsyncSession, state: ExceptionState, expected: int | None = None) -> None:
    """Store ``state`` only if the row still holds version ``expected`` (default: the one
    before it); StaleWrite otherwise. Version 1 is a new row."""
    if state.version == 1:
        await insert_states(session, [state])
        return
    expected = state.version - 1 if expected is None else expected
    result = await session.execute(
        update(EXCEPTIONS_TABLE)
        .where(EXCEPTIONS_TABLE.c.id == state.id, EXCEPTIONS_TABLE.c.version == expected)
        .values(**row_of(state))
    )
    assert isinstance(result, CursorResult)  # an UPDATE's result; Session.execute is typed as returning any Result
    if result.rowcount != 1:
        raise StaleWrite(f"exception {state.id} is no longer at version {expected}")


async def write_states(session: AsyncSession, states: Sequence[ExceptionState]) -> None:
    """Store many changed states in one statement. The caller holds their rows locked
    (``get_states(lock=True)``), so each row is still at the version before."""
    if not states:
        return
    stmt = update(EXCEPTIONS_TABLE).where(EXCEPTIONS_TABLE.c.id == bindparam("b_id"), EXCEPTIONS_TABLE.c.version == bindparam("b_prev"))
    rows = []
    for state in states:
        row = row_of(state)
        del row["id"]
        rows.append({**row, "b_id": state.id, "b_prev": state.version - 1})
    await session.execute(stmt, rows)


def outbox_row(exception_id: uuid.UUID, topic: Topic, record: Envelope) -> dict[str, Any]:
    key, value = topic.encode(record)
    return {"record_id": record.id, "exception_id": exception_id, "topic": topic.name, "key": key.decode(),
            "value": value.decode(), "published": False}


async def add_to_outbox(session: AsyncSession, rows: Iterable[dict[str, Any]]) -> None:
    await insert_ignore(session, _OUTBOX, rows)


async def unpublished(session: AsyncSession, limit: int = 1000) -> Sequence[OutboxRow]:
    query = select(OutboxRow).where(OutboxRow.published.is_(False)).order_by(OutboxRow.seq).limit(limit)
    return (await session.scalars(query)).all()


async def mark_published(session: AsyncSession, seqs: Sequence[int]) -> None:
    await session.execute(update(_OUTBOX).where(_OUTBOX.c.seq.in_(seqs)).values(published=True))


async def history(session: AsyncSession, exception_id: uuid.UUID) -> list[str]:
    """The change records of one exception, oldest first, as their JSON text."""
    query = (
        select(OutboxRow.value)
        .where(OutboxRow.exception_id == exception_id, OutboxRow.topic == EXCEPTIONS.name)
        .order_by(OutboxRow.seq)
    )
    return list((await session.scalars(query)).all())


async def history_page(
    session: AsyncSession, exception_id: uuid.UUID, after: int | None, limit: int
) -> list[tuple[int, str]]:
    """Up to ``limit`` change records of one exception after outbox position ``after``, oldest first: (seq, JSON)."""
    query = select(OutboxRow.seq, OutboxRow.value).where(
        OutboxRow.exception_id == exception_id, OutboxRow.topic == EXCEPTIONS.name
    )
    if after is not None:
        query = query.where(OutboxRow.seq > after)
    return [(seq, value) for seq, value in (await session.execute(query.order_by(OutboxRow.seq).limit(limit))).all()]


async def claim_actions(session: AsyncSession, action_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Record action ids as applied; returns those not applied before."""
    return set(await insert_new(session, table_of(ActionApplied), [{"action_id": a} for a in action_ids]))


async def open_exception(session: AsyncSession, key: str) -> uuid.UUID | None:
    """The open exception for a dedup key, if any."""
    return await session.scalar(select(ExceptionRow.id).where(ExceptionRow.open_key == key))


def _chunks(values: Iterable[Any], size: int = 500) -> Iterator[list[Any]]:
    """Distinct values, sorted, in slices small enough for one IN list."""
    ordered = sorted(set(values))
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


async def candidates(session: AsyncSession, keys: Iterable[str]) -> dict[str, ExceptionState]:
    """Per dedup key, the exception a new occurrence lands on: the open one, else one that may reopen."""
    found: dict[str, ExceptionState] = {}
    for chunk in _chunks(keys):
        query = select(ExceptionRow.state, ExceptionRow.open_key, ExceptionRow.dedup_key).where(
            ExceptionRow.dedup_key.in_(chunk), or_(ExceptionRow.open_key.is_not(None), ExceptionRow.reopenable)
        )
        for state, open_key, key in (await session.execute(query)).all():
            if open_key is not None or key not in found:
                found[key] = ExceptionState.model_validate(state)
    return found


async def watching(session: AsyncSession, entity_ids: Iterable[str], event_types: Iterable[str]) -> list[ExceptionState]:
    """Open exceptions on these entities waiting for one of these event types (snooze or heal)."""
    types = list(set(event_types))
    found: list[ExceptionState] = []
    for chunk in _chunks(entity_ids):
        query = select(ExceptionRow.state).where(ExceptionRow.entity_id.in_(chunk), ExceptionRow.watch_event.in_(types))
        found += [ExceptionState.model_validate(s) for s in (await session.scalars(query)).all()]
    return found


async def due(session: AsyncSession, now: datetime, limit: int = 500) -> list[ExceptionState]:
    """New exceptions past their SLA (or without one yet) and snoozes whose time has passed."""
    query = (
        select(ExceptionRow.state)
        .where(
            or_(
                and_(ExceptionRow.status == ExceptionStatus.NEW.value,
                     or_(ExceptionRow.sla_due_at <= now, ExceptionRow.sla_due_at.is_(None))),
                and_(ExceptionRow.status == ExceptionStatus.SNOOZED.value, ExceptionRow.snooze_until <= now),
            )
        )
        .limit(limit)
    )
    return [ExceptionState.model_validate(s) for s in (await session.scalars(query)).all()]


async def get_states(
    session: AsyncSession, ids: Iterable[uuid.UUID], lock: bool = False
) -> dict[uuid.UUID, ExceptionState]:
    """The states of these ids; ``lock`` holds their rows until the transaction ends (PostgreSQL;
    SQLite has one writer at a time anyway)."""
    found: dict[uuid.UUID, ExceptionState] = {}
    for chunk in _chunks(ids):  # sorted: one lock order for every writer, no deadlock between two bulks
        query = select(ExceptionRow.state).where(ExceptionRow.id.in_(chunk))
        if lock:
            query = query.order_by(ExceptionRow.id).with_for_update()
        for raw in (await session.scalars(query)).all():
            state = ExceptionState.model_validate(raw)
            found[state.id] = state
    return found


async def get_state(session: AsyncSession, exception_id: uuid.UUID) -> ExceptionState | None:
    raw = await session.scalar(select(ExceptionRow.state).where(ExceptionRow.id == exception_id))
    return None if raw is None else ExceptionState.model_validate(raw)


# --- the queue as people read it -------------------------------------------------


def is_rank_key(value: object) -> bool:
    """Whether ``value`` has the shape of a ``rank_key`` (what a queue cursor stands for)."""
    return (
        isinstance(value, str) and len(value) == 69 and value[:37].isdigit() and value[:37].isascii()
        and all(c in "0123456789abcdef" for c in value[37:])
    )


def _filters(f: dict[str, Any]) -> list[Any]:
    c = EXCEPTIONS_TABLE.c
    where: list[Any] = []
    statuses = sorted({getattr(v, "value", v) for v in f.get("status") or ()})
    if statuses == OPEN_VALUES:
        where.append(_OPEN_WHERE)  # the partial indexes' own predicate, so the planner can use them
    elif statuses:
        where.append(c.status.in_(statuses))
    for name in ("type", "severity"):
        if f.get(name):
            where.append(c[name].in_([getattr(v, "value", v) for v in f[name]]))
    for name in ("assignee", "entity_type", "entity_id"):
        if f.get(name) is not None:
            value = f[name]
            where.append(c[name] == (value.value if hasattr(value, "value") else value))
    if f.get("unassigned"):
        where.append(c.assignee.is_(None))
    if f.get("q"):
        pattern = "%" + f["q"].lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(or_(func.lower(c.title).like(pattern, escape="\\"), func.lower(c.entity_id).like(pattern, escape="\\")))
    if f.get("since") is not None:
        where.append(c.last_seen >= f["since"].astimezone(UTC))
    if f.get("until") is not None:
        where.append(c.last_seen < f["until"].astimezone(UTC))
    return where


async def page(session: AsyncSession, filters: dict[str, Any], after: str | None, limit: int) -> list[ExceptionState]:
    """One page of the queue in rank order, after the rank key ``after``."""
    where = _filters(filters)
    if after is not None:
        where.append(EXCEPTIONS_TABLE.c.rank_key > after)
    query = select(ExceptionRow.state).where(*where).order_by(ExceptionRow.rank_key).limit(limit)
    return [ExceptionState.model_validate(s) for s in (await session.scalars(query)).all()]


async def counts(session: AsyncSession, filters: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(type, severity, count) for the exceptions matching ``filters``."""
    query = (
        select(ExceptionRow.type, ExceptionRow.severity, func.count())
        .where(*_filters(filters))
        .group_by(ExceptionRow.type, ExceptionRow.severity)
    )
    return [(t, s, n) for t, s, n in (await session.execute(query)).all()]
