"""The rules service's tables: a record of every run, unique per (event, rule, version)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Index, Integer, MetaData, String, UniqueConstraint, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.actions import RuleRunCompleted
from storeops.db import JSONType, UTCDateTime, insert_ignore


class Base(DeclarativeBase):
    metadata = MetaData()


class RuleRunRow(Base):
    __tablename__ = "rule_runs"
    __table_args__ = (
        UniqueConstraint("event_id", "rule_id", "rule_version", name="uq_rule_runs_event_rule_version"),
        Index("ix_rule_runs_rule_time", "rule_id", "event_time"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(200))
    rule_version: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(10))
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    event_type: Mapped[str] = mapped_column(String(100))
    event_time: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(20))
    action_ids: Mapped[list] = mapped_column(JSONType)


async def record_runs(session: AsyncSession, runs: Sequence[RuleRunCompleted]) -> int:
    """Store runs; a run already stored (redelivered event) is skipped."""
    return await insert_ignore(
        session,
        RuleRunRow.__table__,
        (
            {
                "run_id": r.data.run_id,
                "rule_id": r.data.rule.rule_id,
                "rule_version": r.data.rule.rule_version,
                "mode": r.data.rule.mode,
                "event_id": r.data.event_id,
                "event_type": r.data.event_type,
                "event_time": r.time,
                "status": r.data.status,
                "action_ids": [str(a) for a in r.data.action_ids],
            }
            for r in runs
        ),
    )


async def list_runs(session: AsyncSession, rule_id: str | None, limit: int) -> Sequence[RuleRunRow]:
    query = select(RuleRunRow).order_by(RuleRunRow.event_time.desc(), RuleRunRow.run_id).limit(limit)
    if rule_id:
        query = query.where(RuleRunRow.rule_id == rule_id)
    return (await session.scalars(query)).all()
