"""What rules emit: actions for other services, commands for store connectors, runs."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, Field, model_validator

from schemas.common import EntityType, ExceptionType, Severity
from schemas.envelope import Contract, Currency, Envelope, Key, Money

RuleMode = Literal["DRY_RUN", "LIVE"]
# A rule's version is a 32-bit integer in every table that keeps one.
RULE_VERSION_MAX = 2**31 - 1


class RuleRef(Contract):
    """Which rule, at which version, in which mode produced a record."""

    rule_id: Key
    rule_version: int = Field(ge=1, le=RULE_VERSION_MAX)
    mode: RuleMode


class HealCondition(Contract):
    """The later event that proves the problem healed, so the queue may close it on its own.

    It heals when an event of ``event_type`` arrives for the same entity and, if
    ``field`` is given, ``data.<field>`` is at least ``at_least``
    (stock restored: ``StockChanged``, ``on_hand`` at least the reorder point).
    """

    event_type: str = Field(min_length=1, max_length=100)
    field: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
    at_least: Decimal | None = None

    @model_validator(mode="after")
    def _field_and_bound_together(self) -> HealCondition:
        if (self.field is None) != (self.at_least is None):
            raise ValueError("field and at_least go together: give both or neither")
        return self


class CallbackCapture(Contract):
    """A payment gateway callback that could not be processed, kept verbatim for replay."""

    gateway: str = Field(min_length=1, max_length=100)
    error: str = Field(min_length=1, max_length=2000)
    raw_callback: str


class ExceptionSpec(Contract):
    """The exception a rule asks the queue to raise."""

    type: ExceptionType
    severity: Severity
    title: str = Field(min_length=1, max_length=300)
    entity_type: EntityType
    entity_id: Key
    impact: Money | None = Field(default=None, description="Revenue at risk")
    currency: Currency | None = None
    heal: HealCondition | None = None
    callback: CallbackCapture | None = None
    due_at: AwareDatetime | None = Field(default=None, description="When it must be handled; default: the severity's SLA")


class CreateExceptionData(Contract):
    rule: RuleRef
    exception: ExceptionSpec
    evidence: list[uuid.UUID] = Field(min_length=1, description="Ids of the events that raised it")


class CreateException(Envelope):
    """Action: raise (or add an occurrence to) an exception. Subject: the entity id."""

    type: Literal["CreateException"]
    data: CreateExceptionData


Action = Annotated[Union[CreateException], Field(discriminator="type")]


class AdjustPriceData(Contract):
    rule: RuleRef
    run_id: uuid.UUID
    sku: Key
    old_price: Money | None = Field(default=None, description="The price the rule saw")
    new_price: Money
    currency: Currency


class AdjustPrice(Envelope):
    """Command for the store's connector: set a sku's price. Subject: the sku."""

    type: Literal["AdjustPrice"]
    data: AdjustPriceData


class UpdateInventoryData(Contract):
    rule: RuleRef
    run_id: uuid.UUID
    sku: Key
    location: str = Field(default="default", min_length=1, max_length=100)
    set_on_hand: int = Field(ge=0)


class UpdateInventory(Envelope):
    """Command for the store's connector: set a sku's stock at a location. Subject: the sku."""

    type: Literal["UpdateInventory"]
    data: UpdateInventoryData


Command = Annotated[Union[AdjustPrice, UpdateInventory], Field(discriminator="type")]

RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
StepStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"]


class StepRecord(Contract):
    """One action of a run: what it was given (templates resolved), what it produced, and how it went."""

    step_id: str
    action: str
    status: StepStatus
    simulated: bool = Field(default=False, description="DRY_RUN: worked out in full, executed nothing")
    inputs: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, Any] | None = None
    error: str | None = None
    logs: list[str] = Field(default_factory=list)
    attempts: int = Field(default=0, ge=0)


class RuleRunData(Contract):
    run_id: uuid.UUID
    rule: RuleRef
    event_id: uuid.UUID
    event_type: str
    subject: str
    status: RunStatus
    reason: str | None = Field(default=None, description="Why it failed or was cancelled")
    started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    action_ids: list[uuid.UUID] = Field(default_factory=list, description="Actions and commands it emitted (LIVE)")


class RuleRunRecorded(Envelope):
    """One matching evaluation of a rule against an event, with every step. Subject: the rule id."""

    type: Literal["RuleRunRecorded"]
    data: RuleRunData


RuleRun = Annotated[Union[RuleRunRecorded], Field(discriminator="type")]
