"""The exception queue's state and its changes, for the notifier, the audit service
and anyone rebuilding the queue by replaying the exceptions topic."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import AwareDatetime, Field, model_validator

from schemas.actions import CallbackCapture, HealCondition, RuleRef
from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.envelope import Contract, Currency, Envelope, Key, Money


class ExceptionStatus(StrEnum):
    """The queue's small, fixed set of states."""

    NEW = "New"
    IN_PROGRESS = "In Progress"
    SNOOZED = "Snoozed"
    RESOLVED = "Resolved"


class ResolutionReason(StrEnum):
    """Why an exception was closed: a fixed taxonomy, so reports can count them."""

    FIXED = "fixed"
    FALSE_POSITIVE = "false_positive"
    DUPLICATE = "duplicate"
    CUSTOMER_CONTACTED = "customer_contacted"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"
    OTHER = "other"


class Resolution(Contract):
    reason: ResolutionReason
    note: str | None = Field(default=None, max_length=2000)
    automatic: bool = Field(default=False, description="Closed by the system because an event proved it healed")
    evidence: uuid.UUID | None = Field(default=None, description="The event that proved it healed (automatic only)")
    callback: Literal["accepted"] | None = Field(default=None, description="A failed callback accepted as it is")

    @model_validator(mode="after")
    def _guardrails(self) -> Resolution:
        if self.reason is ResolutionReason.OTHER and not (self.note and self.note.strip()):
            raise ValueError("note: a resolution with reason 'other' needs a note")
        if self.automatic and self.evidence is None:
            raise ValueError("evidence: an automatic resolution needs the event that proved the problem healed")
        return self


class Snooze(Contract):
    """Out of the queue until a time, or until an event of a type arrives for the same entity."""

    until: AwareDatetime | None = None
    until_event: str | None = Field(default=None, min_length=1, max_length=100, description="A store event type")

    @model_validator(mode="after")
    def _needs_a_wake_up(self) -> Snooze:
        if self.until is None and self.until_event is None:
            raise ValueError("snooze needs 'until', 'until_event' or both")
        return self


class CallbackReplay(Contract):
    replay_id: uuid.UUID
    requested_by: Actor
    requested_at: AwareDatetime


class ExceptionState(Contract):
    """An exception as the queue holds it at one version."""

    id: uuid.UUID
    version: int = Field(default=1, ge=1)
    type: ExceptionType
    severity: Severity
    status: ExceptionStatus
    title: str
    entity_type: EntityType
    entity_id: Key
    impact: Money | None = Field(default=None, description="Revenue at risk, in the store's currency")
    currency: Currency | None = None
    source: RuleRef | None = Field(default=None, description="The rule that raised it; None when a person did")
    raised_by: Actor | None = Field(default=None, description="The person who raised it by hand")
    evidence: list[uuid.UUID] = Field(default_factory=list, description="The latest events that raised it")
    occurrences: int = Field(default=1, ge=1)
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    assignee: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    sla_due_at: AwareDatetime | None = Field(default=None, description="Escalated one level if still New by then")
    escalations: int = Field(default=0, ge=0)
    snooze: Snooze | None = None
    resolution: Resolution | None = None
    flap_count: int = Field(default=0, ge=0, description="Times it came back after an automatic resolution")
    heal: HealCondition | None = None
    callback: CallbackCapture | None = None
    replays: list[CallbackReplay] = Field(default_factory=list)


ChangeKind = Literal[
    "created", "updated", "assigned", "status_changed", "escalated", "snoozed", "woke", "resolved", "reopened"
]


class ExceptionChange(Contract):
    exception_id: uuid.UUID
    kind: ChangeKind
    before: ExceptionState | None
    after: ExceptionState
    actor: Actor
    cause: str = Field(description="Why: the action, event, request or rule that led to the change")


class _Changed(Envelope):
    """Subject: the exception id. ``data.after.version`` orders the changes of one exception."""

    data: ExceptionChange


class ExceptionCreated(_Changed):
    type: Literal["ExceptionCreated"]


class ExceptionUpdated(_Changed):
    """A new occurrence, or a person changed its severity, title or impact."""

    type: Literal["ExceptionUpdated"]


class ExceptionAssigned(_Changed):
    type: Literal["ExceptionAssigned"]


class ExceptionStatusChanged(_Changed):
    type: Literal["ExceptionStatusChanged"]


class ExceptionEscalated(_Changed):
    type: Literal["ExceptionEscalated"]


class ExceptionSnoozed(_Changed):
    type: Literal["ExceptionSnoozed"]


class ExceptionWoke(_Changed):
    type: Literal["ExceptionWoke"]


class ExceptionResolved(_Changed):
    type: Literal["ExceptionResolved"]


class ExceptionReopened(_Changed):
    type: Literal["ExceptionReopened"]


CHANGE_RECORDS: dict[str, type[_Changed]] = {
    "created": ExceptionCreated,
    "updated": ExceptionUpdated,
    "assigned": ExceptionAssigned,
    "status_changed": ExceptionStatusChanged,
    "escalated": ExceptionEscalated,
    "snoozed": ExceptionSnoozed,
    "woke": ExceptionWoke,
    "resolved": ExceptionResolved,
    "reopened": ExceptionReopened,
}

ExceptionEvent = Annotated[
    Union[
        ExceptionCreated,
        ExceptionUpdated,
        ExceptionAssigned,
        ExceptionStatusChanged,
        ExceptionEscalated,
        ExceptionSnoozed,
        ExceptionWoke,
        ExceptionResolved,
        ExceptionReopened,
    ],
    Field(discriminator="type"),
]
ExceptionChangeRecord = _Changed
