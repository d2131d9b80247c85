"""Changes to the exception queue, for the notifier and the audit service."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, Union

from pydantic import AwareDatetime, Field

from schemas.actions import RuleRef
from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.envelope import Contract, Currency, Envelope, Key, Money

ExceptionStatus = Literal["New", "In Progress", "Resolved", "Snoozed"]


class ExceptionState(Contract):
    """An exception as the queue holds it at one moment."""

    id: uuid.UUID
    type: ExceptionType
    severity: Severity
    status: ExceptionStatus
    title: str
    entity_type: EntityType
    entity_id: Key
    impact: Money | None = None
    currency: Currency | None = None
    source: RuleRef | None = Field(default=None, description="The rule that raised it; None when a person did")
    evidence: list[uuid.UUID] = Field(default_factory=list)
    assignee: str | None = None
    created_at: AwareDatetime


class ExceptionChange(Contract):
    exception_id: uuid.UUID
    before: ExceptionState | None
    after: ExceptionState
    actor: Actor
    cause: str = Field(description="Why: the action id, request, or rule that led to the change")


class ExceptionCreated(Envelope):
    """Subject: the exception id."""

    type: Literal["ExceptionCreated"]
    data: ExceptionChange


ExceptionEvent = Annotated[Union[ExceptionCreated], Field(discriminator="type")]
