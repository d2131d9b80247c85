"""Database engine, sessions, migrations and the few SQL helpers every store shares."""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, BigInteger, DateTime, Integer, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)


class RawJSON(str):
    """JSON text to store as it is in a JSON column (no parse and re-serialize)."""


def _json_serializer(value: Any) -> str:
    return value if isinstance(value, RawJSON) else json.dumps(value)


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine; SQLite gets WAL and a busy timeout so an API read never blocks a writer."""
    kwargs.setdefault("json_serializer", _json_serializer)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=5, pool_pre_ping=True, **kwargs)


def table_of(model: type[Any]) -> Table:
    """A declarative model's Table (``__table__`` is typed as any FromClause; a model declared
    with ``__tablename__`` has a Table)."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a Table")
    return table


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def database_reachable(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        log.warning("database not reachable", exc_info=True)
        return False


async def insert_ignore(conn: AsyncConnection | AsyncSession, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert rows, skipping any that collide with a unique key; returns rows inserted.

    Replays and redeliveries turn into no-ops this way: every effect is keyed.
    """
    return len(await insert_new(conn, table, rows))


async def insert_new(conn: AsyncConnection | AsyncSession, table: Table, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Like ``insert_ignore``, returning the primary keys of the rows actually inserted."""
    rows = list(rows)
    if not rows:
        return []
    bind = conn.bind if isinstance(conn, AsyncSession) else conn
    dialect = bind.dialect.name if bind is not None else None
    stmt: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two supported databases
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    # rowcount is -1 for executemany on asyncpg; RETURNING names exactly the rows inserted.
    key = list(table.primary_key.columns)[0]
    result = await conn.execute(stmt.returning(key), rows)
    return list(result.scalars().all())


def alembic_config(service: str, migrations: Path, url: str) -> Config:
    """Alembic config for one service: its own scripts (``migrations``) and its own version table."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["service"] = service
    return cfg


def upgrade(service: str, migrations: Path, url: str, revision: str = "head") -> None:
    """Apply a service's migrations (synchronous; run it before the service's loop starts)."""
    command.upgrade(alembic_config(service, migrations, url), revision)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both databases (SQLite keeps no zone itself)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: storeops stores UTC with its zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Wakeable(Protocol):
    def wake(self) -> None: ...


class CommitSignal:
    """Wakes its listeners when a session ``mark``-ed in its transaction commits (nothing on a rollback).

    For work that must follow a commit at once rather than at its next poll: the notifier's live inbox
    after notifications were added, an outbox's publisher after records were put. A commit runs on the
    event loop's thread (SQLAlchemy's greenlet), so a listener's ``wake`` may set an asyncio.Event.
    Listeners are held weakly: one per runtime, and tests run several.
    """

    def __init__(self, name: str) -> None:
        self.key = f"storeops.commit_signal.{name}"
        self._listeners: weakref.WeakSet[Wakeable] = weakref.WeakSet()
        event.listen(Session, "after_commit", self._committed)
        event.listen(Session, "after_rollback", self._rolled_back)

    def mark(self, session: AsyncSession | Session) -> None:
        session.info[self.key] = True

    def listen(self, listener: Wakeable) -> None:
        self._listeners.add(listener)

    def _committed(self, session: Session) -> None:
        if session.info.pop(self.key, False):
            for listener in list(self._listeners):
                listener.wake()

    def _rolled_back(self, session: Session) -> None:
        session.info.pop(self.key, None)
