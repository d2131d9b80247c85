"""The queue's table and its queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Index, Integer, MetaData, Numeric, String, Uuid, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schemas.exceptions import ExceptionState
from storeops.db import JSONType, UTCDateTime, insert_ignore


class Base(DeclarativeBase):
    metadata = MetaData()


class ExceptionRow(Base):
    __tablename__ = "exceptions"
    __table_args__ = (Index("ix_exceptions_rank", "status", "severity_rank", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    severity: Mapped[str] = mapped_column(String(10))
    severity_rank: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    title: Mapped[str] = mapped_column(String(300))
    entity_type: Mapped[str] = mapped_column(String(20))
    entity_id: Mapped[str] = mapped_column(String(200), index=True)
    impact: Mapped[Decimal | None] = mapped_column(Numeric(18, 4))
    currency: Mapped[str | None] = mapped_column(String(3))
    rule_id: Mapped[str | None] = mapped_column(String(200))
    rule_version: Mapped[int | None] = mapped_column(Integer)
    rule_mode: Mapped[str | None] = mapped_column(String(10))
    evidence: Mapped[list] = mapped_column(JSONType)
    assignee: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)

    def state(self) -> ExceptionState:
        source = (
            {"rule_id": self.rule_id, "rule_version": self.rule_version, "mode": self.rule_mode} if self.rule_id else None
        )
        return ExceptionState.model_validate(
            {
                "id": self.id, "type": self.type, "severity": self.severity, "status": self.status,
                "title": self.title, "entity_type": self.entity_type, "entity_id": self.entity_id,
                "impact": self.impact, "currency": self.currency, "source": source,
                "evidence": self.evidence, "assignee": self.assignee, "created_at": self.created_at,
            }
        )


def _row(state: ExceptionState) -> dict:
    return {
        "id": state.id, "type": state.type.value, "severity": state.severity.value,
        "severity_rank": state.severity.rank, "status": state.status, "title": state.title,
        "entity_type": state.entity_type.value, "entity_id": state.entity_id, "impact": state.impact,
        "currency": state.currency, "rule_id": state.source.rule_id if state.source else None,
        "rule_version": state.source.rule_version if state.source else None,
        "rule_mode": state.source.mode if state.source else None,
        "evidence": [str(e) for e in state.evidence], "assignee": state.assignee,
        "created_at": state.created_at, "version": 1,
    }


async def add_exceptions(session: AsyncSession, states: Sequence[ExceptionState]) -> int:
    """Store new exceptions; one already stored (redelivered action) is skipped."""
    return await insert_ignore(session, ExceptionRow.__table__, (_row(s) for s in states))


async def list_exceptions(
    session: AsyncSession, status: str | None, limit: int, entity_id: str | None = None
) -> Sequence[ExceptionRow]:
    """Most severe first, then oldest first."""
    query = select(ExceptionRow).order_by(ExceptionRow.severity_rank, ExceptionRow.created_at, ExceptionRow.id).limit(limit)
    if status:
        query = query.where(ExceptionRow.status == status)
    if entity_id:
        query = query.where(ExceptionRow.entity_id == entity_id)
    return (await session.scalars(query)).all()


async def get_exception(session: AsyncSession, exception_id: uuid.UUID) -> ExceptionRow | None:
    return await session.get(ExceptionRow, exception_id)
