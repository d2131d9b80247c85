"""The rules service's tables and queries.

``rules`` holds each rule's current state (version, status, mode);
``rule_versions`` every definition ever saved, immutable; ``rule_changes`` who
changed what and when. ``rule_runs`` records each matching evaluation, unique per
(event, rule, version), so a redelivered event cannot run a rule twice.
``rule_values`` keeps the previous value of a field per entity for the stateful
operators, and ``price_moves`` each sku's first and last price of a day for the
daily price-move limit. Every query runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python
from sqlalchemy import (
    CursorResult,
    Date,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    and_,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.actions import RuleRunData
from schemas.rules import RuleDefinition, RuleId, RuleSummary
from storeops.db import BigIntPK, JSONType, RawJSON, UTCDateTime, insert_new, table_of
from storeops.outbox import Outbox

SEEDS = Path(__file__).resolve().parent / "seeds"


class Base(DeclarativeBase):
    metadata = MetaData()


OUTBOX = Outbox("rules", Base.metadata)  # audit entries of rule changes, in the change's transaction (storeops.outbox)


class RuleRow(Base):
    __tablename__ = "rules"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    mode: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(200))
    dry_run_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    live_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    live_by: Mapped[str | None] = mapped_column(String(200))


class RuleVersionRow(Base):
    __tablename__ = "rule_versions"

    rule_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[Any] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))


class RuleChangeRow(Base):
    __tablename__ = "rule_changes"
    __table_args__ = (Index("ix_rule_changes_rule", "rule_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    rule_id: Mapped[str] = mapped_column(String(80))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    before: Mapped[Any | None] = mapped_column(JSONType)
    after: Mapped[Any | None] = mapped_column(JSONType)
    note: Mapped[str | None] = mapped_column(String(2000))


class RuleRunRow(Base):
    __tablename__ = "rule_runs"
    __table_args__ = (
        UniqueConstraint("event_id", "rule_id", "rule_version", name="uq_rule_runs_event_rule_version"),
        Index("ix_rule_runs_rule_time", "rule_id", "event_time"),
        Index("ix_rule_runs_rule_status_time", "rule_id", "status", "event_time"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(80))
    rule_version: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(10))
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    event_type: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    record: Mapped[Any] = mapped_column(JSONType)

    def model(self) -> RuleRunData:
        return RuleRunData.model_validate(self.record)


class RuleValueRow(Base):
    __tablename__ = "rule_values"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    path: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONType)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)


class PriceMoveRow(Base):
    __tablename__ = "price_moves"

    sku: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    reference_price: Mapped[Decimal] = mapped_column(Numeric(18, 4))
    last_price: Mapped[Decimal] = mapped_column(Numeric(18, 4))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


RULES = table_of(RuleRow)
RUNS = table_of(RuleRunRow)
VALUES = table_of(RuleValueRow)
PRICES = table_of(PriceMoveRow)


def _chunks(values: Iterable[Any], size: int = 500) -> Iterator[list[Any]]:
    """Distinct values, sorted, in slices small enough for one IN list."""
    ordered = sorted(set(values))
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


def _upsert(session: AsyncSession, table: Table) -> Any:
    """An INSERT that can say ON CONFLICT ... DO UPDATE, in the session's dialect."""
    assert session.bind is not None  # every session comes from the service's sessionmaker, bound to its engine
    dialect = session.bind.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {dialect!r}")  # pragma: no cover


# --- rules, versions, changes ---------------------------------------------------


def summary(row: RuleRow, definition: Any) -> RuleSummary:
    """The API's view of a rule: its row and its current version's definition."""
    return RuleSummary(
        id=row.id, version=row.version, status=row.status, mode=row.mode,
        definition=RuleDefinition.model_validate(definition), created_at=row.created_at, updated_at=row.updated_at,
        updated_by=row.updated_by, dry_run_since=row.dry_run_since, live_since=row.live_since, live_by=row.live_by,
    )


async def get_rule(session: AsyncSession, rule_id: str) -> RuleRow | None:
    return await session.get(RuleRow, rule_id, populate_existing=True)


async def get_summary(session: AsyncSession, rule_id: str) -> RuleSummary | None:
    query = _with_definition().where(RuleRow.id == rule_id)
    found = (await session.execute(query)).first()
    return None if found is None else summary(*found)


async def list_rules(session: AsyncSession, status: str | None = None, mode: str | None = None,
                     after: str | None = None, limit: int | None = None) -> list[RuleSummary]:
    """Rules by id, those after the id ``after`` (a page's last), at most ``limit`` of them."""
    query = _with_definition().order_by(RuleRow.id)
    if status is not None:
        query = query.where(RuleRow.status == status)
    if mode is not None:
        query = query.where(RuleRow.mode == mode)
    if after is not None:
        query = query.where(RuleRow.id > after)
    if limit is not None:
        query = query.limit(limit)
    return [summary(row, definition) for row, definition in (await session.execute(query)).all()]


def _with_definition() -> Any:
    # populate_existing: a row read earlier in the session may have been updated since (by a core UPDATE)
    return select(RuleRow, RuleVersionRow.definition).join(
        RuleVersionRow, and_(RuleVersionRow.rule_id == RuleRow.id, RuleVersionRow.version == RuleRow.version),
    ).execution_options(populate_existing=True)


async def active_definitions(session: AsyncSession) -> list[tuple[RuleRow, RuleDefinition]]:
    """Every active rule with its current version's definition."""
    query = _with_definition().where(RuleRow.status == "active").order_by(RuleRow.id)
    return [(row, RuleDefinition.model_validate(d)) for row, d in (await session.execute(query)).all()]


async def latest_change(session: AsyncSession) -> datetime | None:
    """When any rule last changed: a worker that saw an older time reloads its rules."""
    return await session.scalar(select(func.max(RuleRow.updated_at)))


async def add_rule(session: AsyncSession, row: dict[str, Any], definition: RuleDefinition) -> bool:
    """Insert a new rule at its first version; False (nothing written) if the id is taken."""
    if not await insert_new(session, RULES, [row]):
        return False
    await add_version(session, row["id"], row["version"], definition, row["created_by"], row["created_at"])
    return True


async def add_version(session: AsyncSession, rule_id: str, version: int, definition: RuleDefinition, actor: str,
                      at: datetime) -> None:
    await session.execute(table_of(RuleVersionRow).insert().values(
        rule_id=rule_id, version=version, definition=RawJSON(definition.model_dump_json()), created_at=at,
        created_by=actor))


async def update_rule(session: AsyncSession, rule_id: str, expected: dict[str, Any], values: dict[str, Any]) -> bool:
    """Set ``values`` on the rule only if it still holds ``expected``; False if another change came first."""
    where = [RULES.c.id == rule_id, *(RULES.c[name] == value for name, value in expected.items())]
    result = await session.execute(update(RULES).where(*where).values(**values))
    assert isinstance(result, CursorResult)  # an UPDATE's result; Session.execute is typed as returning any Result
    return result.rowcount == 1


async def add_changes(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """History rows: rule_id, version, kind, actor, at, before, after, note."""
    if rows:
        await session.execute(table_of(RuleChangeRow).insert(), list(rows))


async def versions(session: AsyncSession, rule_id: str, before: int | None = None,
                   limit: int | None = None) -> Sequence[RuleVersionRow]:
    """A rule's versions, newest first: those below ``before`` (a page's last), at most ``limit``."""
    query = select(RuleVersionRow).where(RuleVersionRow.rule_id == rule_id).order_by(RuleVersionRow.version.desc())
    if before is not None:
        query = query.where(RuleVersionRow.version < before)
    if limit is not None:
        query = query.limit(limit)
    return (await session.scalars(query)).all()


async def get_version(session: AsyncSession, rule_id: str, version: int) -> RuleVersionRow | None:
    return await session.get(RuleVersionRow, (rule_id, version))


async def history(session: AsyncSession, rule_id: str, before: int | None = None,
                  limit: int | None = None) -> Sequence[RuleChangeRow]:
    """A rule's changes, newest first: those below the seq ``before`` (a page's last), at most ``limit``."""
    query = select(RuleChangeRow).where(RuleChangeRow.rule_id == rule_id).order_by(RuleChangeRow.seq.desc())
    if before is not None:
        query = query.where(RuleChangeRow.seq < before)
    if limit is not None:
        query = query.limit(limit)
    return (await session.scalars(query)).all()


# --- seeds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    id: str
    definition: RuleDefinition


_RULE_ID: TypeAdapter[str] = TypeAdapter(RuleId)


SeedCheck = Callable[[str, RuleDefinition], object]


def read_seeds(folder: Path = SEEDS, check: SeedCheck | None = None) -> list[Seed]:
    """The shipped rules, ``{"id": ..., "definition": {...}}`` per file; ValueError names a bad file.

    ``check`` (the compiler, say) may raise to refuse a definition the shape alone lets through.
    """
    seeds = []
    for path in sorted(folder.glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            seed = Seed(_RULE_ID.validate_python(raw["id"]), RuleDefinition.model_validate(raw["definition"]))
            if check is not None:
                check(seed.id, seed.definition)
        except Exception as exc:
            raise ValueError(f"seed rule {path.name} is not valid: {exc}") from exc
        seeds.append(seed)
    return seeds


async def load_seeds(session: AsyncSession, actor: str = "storeops", folder: Path = SEEDS,
                     check: SeedCheck | None = None, now: datetime | None = None) -> list[str]:
    """Store each seed rule not stored yet (active, DRY_RUN, version 1); an existing rule is never touched.

    Returns the ids added. Safe for two instances starting at once: the insert skips taken ids.
    """
    now = now or datetime.now(UTC)
    added = []
    for seed in read_seeds(folder, check):
        row = new_rule_row(seed.id, "active", actor, now)
        if await add_rule(session, row, seed.definition):
            added.append(seed.id)
    await add_changes(session, [
        {"rule_id": rule_id, "version": 1, "kind": "created", "actor": actor, "at": now, "before": None,
         "after": {"version": 1, "status": "active", "mode": "DRY_RUN"}, "note": "seed"}
        for rule_id in added
    ])
    return added


def new_rule_row(rule_id: str, status: str, actor: str, now: datetime) -> dict[str, Any]:
    """A new rule: version 1, dry-running from now."""
    return {"id": rule_id, "version": 1, "status": status, "mode": "DRY_RUN", "created_at": now, "created_by": actor,
            "updated_at": now, "updated_by": actor, "dry_run_since": now, "live_since": None, "live_by": None}


# --- runs ----------------------------------------------------------------------------


def _run_row(run: RuleRunData) -> dict[str, Any]:
    return {"status": run.status, "reason": run.reason, "finished_at": run.finished_at,
            "record": RawJSON(run.model_dump_json())}


async def run_statuses(
    session: AsyncSession, keys: Sequence[tuple[uuid.UUID, str, int]]
) -> dict[tuple[uuid.UUID, str, int], str]:
    """The status of each (event id, rule id, version) already run."""
    found: dict[tuple[uuid.UUID, str, int], str] = {}
    by_event: dict[uuid.UUID, set[tuple[uuid.UUID, str, int]]] = {}
    for key in keys:
        by_event.setdefault(key[0], set()).add(key)
    for chunk in _chunks(by_event):
        query = select(RUNS.c.event_id, RUNS.c.rule_id, RUNS.c.rule_version, RUNS.c.status).where(
            RUNS.c.event_id.in_(chunk))
        for event_id, rule_id, version, status in (await session.execute(query)).all():
            if (event_id, rule_id, version) in by_event[event_id]:
                found[(event_id, rule_id, version)] = status
    return found


def _new_run_rows(runs: Sequence[RuleRunData], event_times: Sequence[datetime]) -> list[dict[str, Any]]:
    if len(runs) != len(event_times):
        raise ValueError("one event time per run")
    return [
        {"run_id": r.run_id, "rule_id": r.rule.rule_id, "rule_version": r.rule.rule_version, "mode": r.rule.mode,
         "event_id": r.event_id, "event_type": r.event_type, "subject": r.subject, "event_time": t,
         "started_at": r.started_at, **_run_row(r)}
        for r, t in zip(runs, event_times, strict=True)
    ]


async def start_runs(session: AsyncSession, runs: Sequence[RuleRunData], event_times: Sequence[datetime]) -> None:
    """Record runs as they start; one already recorded for its (event, rule, version) is left as it is."""
    await insert_new(session, RUNS, _new_run_rows(runs, event_times))


async def record_runs(session: AsyncSession, runs: Sequence[RuleRunData], event_times: Sequence[datetime]) -> None:
    """Store finished runs in one statement: new ones inserted, ones recorded as running brought up to date."""
    if not runs:
        return
    stmt = _upsert(session, RUNS)
    stmt = stmt.on_conflict_do_update(index_elements=[RUNS.c.run_id], set_={
        "status": stmt.excluded.status, "reason": stmt.excluded.reason, "finished_at": stmt.excluded.finished_at,
        "record": stmt.excluded.record})
    await session.execute(stmt, _new_run_rows(runs, event_times))  # executemany: no limit on parameters


async def get_run(session: AsyncSession, run_id: uuid.UUID) -> RuleRunData | None:
    record = await session.scalar(select(RUNS.c.record).where(RUNS.c.run_id == run_id))
    return None if record is None else RuleRunData.model_validate(record)


@dataclass(frozen=True)
class RunFilters:
    rule_id: str | None = None
    status: str | None = None
    mode: str | None = None
    since: datetime | None = None  # event time at or after
    until: datetime | None = None  # event time before


async def list_runs(session: AsyncSession, filters: RunFilters, limit: int,
                    after: tuple[datetime, uuid.UUID] | None = None) -> list[tuple[datetime, RuleRunData]]:
    """Runs, newest event first, after the cursor position ``after`` (event time, run id)."""
    c = RUNS.c
    where = [c[name] == getattr(filters, name) for name in ("rule_id", "status", "mode")
             if getattr(filters, name) is not None]
    if filters.since is not None:
        where.append(c.event_time >= filters.since)
    if filters.until is not None:
        where.append(c.event_time < filters.until)
    if after is not None:
        time, run_id = after
        where.append(or_(c.event_time < time, and_(c.event_time == time, c.run_id < run_id)))
    query = select(c.event_time, c.record).where(*where).order_by(c.event_time.desc(), c.run_id.desc()).limit(limit)
    return [(t, RuleRunData.model_validate(r)) for t, r in (await session.execute(query)).all()]


# --- previous values ----------------------------------------------------------------


def encode_value(value: Any) -> dict[str, Any]:
    """A field's value as JSON with a type tag, so Decimals and datetimes come back as such."""
    if isinstance(value, Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    return {"type": "json", "value": to_jsonable_python(value)}


def decode_value(stored: dict[str, Any]) -> Any:
    kind, value = stored["type"], stored["value"]
    if kind == "decimal":
        return Decimal(value)
    if kind == "datetime":
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if kind == "date":
        return date.fromisoformat(value)
    return value


async def previous_values(
    session: AsyncSession, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[Any, datetime]]:
    """The remembered value and its event time per (subject, path)."""
    found: dict[tuple[str, str], tuple[Any, datetime]] = {}
    c = VALUES.c
    for chunk in _chunks(pairs):
        query = select(c.subject, c.path, c.value, c.event_time).where(tuple_(c.subject, c.path).in_(chunk))
        for subject, path, value, event_time in (await session.execute(query)).all():
            found[(subject, path)] = (decode_value(value), event_time)
    return found


async def remember_values(session: AsyncSession, rows: Sequence[tuple[str, str, Any, datetime, uuid.UUID]]) -> None:
    """Keep (subject, path, value, event time, event id), unless a value from a later event is kept already."""
    newest: dict[tuple[str, str], tuple[Any, datetime, uuid.UUID]] = {}
    for subject, path, value, event_time, event_id in rows:
        kept = newest.get((subject, path))
        if kept is None or kept[1] < event_time:
            newest[(subject, path)] = (value, event_time, event_id)
    if not newest:
        return
    insert = _upsert(session, VALUES)
    stmt = insert.on_conflict_do_update(
        index_elements=[VALUES.c.subject, VALUES.c.path],
        set_={"value": insert.excluded.value, "event_time": insert.excluded.event_time,
              "event_id": insert.excluded.event_id},
        where=VALUES.c.event_time < insert.excluded.event_time,
    )
    await session.execute(stmt, [
        {"subject": s, "path": p, "value": encode_value(v), "event_time": t, "event_id": e}
        for (s, p), (v, t, e) in sorted(newest.items())  # one lock order for every writer
    ])


# --- daily price moves ------------------------------------------------------------------


async def price_days(session: AsyncSession, keys: Sequence[tuple[str, date]]) -> dict[tuple[str, date], tuple[Decimal, Decimal]]:
    """(reference price, last price) per (sku, day) seen."""
    found: dict[tuple[str, date], tuple[Decimal, Decimal]] = {}
    c = PRICES.c
    for chunk in _chunks(keys):
        query = select(c.sku, c.day, c.reference_price, c.last_price).where(tuple_(c.sku, c.day).in_(chunk))
        for sku, day, reference, last in (await session.execute(query)).all():
            found[(sku, day)] = (Decimal(reference), Decimal(last))
    return found


async def record_prices(session: AsyncSession, rows: Sequence[tuple[str, date, Decimal, Decimal]]) -> None:
    """(sku, day, reference, last): a new day keeps its reference; a known day only moves its last price."""
    merged: dict[tuple[str, date], tuple[Decimal, Decimal]] = {}
    for sku, day, reference, last in rows:
        first = merged.get((sku, day))
        merged[(sku, day)] = (first[0] if first else reference, last)
    if not merged:
        return
    now = datetime.now(UTC)
    insert = _upsert(session, PRICES)
    stmt = insert.on_conflict_do_update(
        index_elements=[PRICES.c.sku, PRICES.c.day],
        set_={"last_price": insert.excluded.last_price, "updated_at": insert.excluded.updated_at},
    )
    await session.execute(stmt, [
        {"sku": sku, "day": day, "reference_price": reference, "last_price": last, "updated_at": now}
        for (sku, day), (reference, last) in sorted(merged.items())
    ])
