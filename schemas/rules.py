"""Rule definitions as operators write them: a trigger, conditions and ordered actions.

This module checks the shape of a definition. What needs more than the shape
(does a field path exist on the trigger's events, does an operator fit the
field's type, does a template parse, does a credential exist) is checked by the
rules service's compiler, which answers with a pointer to the offending part.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from schemas.actions import RuleMode
from schemas.common import EntityType, ExceptionType, Severity
from schemas.envelope import Contract, Money
from schemas.events import EVENT_CLASSES
from schemas.notifications import CredentialName, HttpMethod

EVENT_TYPES: tuple[str, ...] = tuple(cls.__name__ for cls in EVENT_CLASSES)

# ``data.total``, ``data.lines.0.sku``, ``subject``: a path from the envelope's root.
FieldPath = Annotated[
    str,
    StringConstraints(
        pattern=r"^(data|subject|type|source|id|time|causation_id|correlation_id|depth)(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$",
        max_length=200,
    ),
]
RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,79}$")]
StepId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
# A Jinja template: ``{{ data.order_id }}``, ``{{ steps.raise.output.exception_id }}``.
Template = Annotated[str, StringConstraints(max_length=20000)]

Operator = Literal[
    "eq", "ne", "lt", "le", "gt", "ge", "in", "contains", "exists",
    "changed_by_more_than_pct", "crossed_below", "crossed_above",
]
# Operators that compare with the previous value of the same field for the same entity.
STATEFUL_OPERATORS = frozenset({"changed_by_more_than_pct", "crossed_below", "crossed_above"})
OPERATOR_SYMBOLS = {"=": "eq", "==": "eq", "!=": "ne", "≠": "ne", "<": "lt", "<=": "le", "≤": "le",
                    ">": "gt", ">=": "ge", "≥": "ge"}


class FieldRef(Contract):
    """Another field of the same event, optionally scaled: ``{"path": "data.cost", "factor": "1.10"}``."""

    path: FieldPath
    factor: Decimal | None = Field(default=None, gt=0, description="Multiply a numeric field by this")


class Compare(Contract):
    """``path op value``. ``value`` is a literal (a list for ``in``) or a ``FieldRef``.

    ``exists`` takes no value. ``changed_by_more_than_pct`` takes a percentage and
    compares with the previous value of the same path for the same entity;
    ``crossed_below`` / ``crossed_above`` take a threshold and hold when the
    previous value was on the other side of it.
    """

    path: FieldPath
    op: Operator
    value: FieldRef | Any = None

    @field_validator("op", mode="before")
    @classmethod
    def _symbols(cls, value: Any) -> Any:
        return OPERATOR_SYMBOLS.get(value, value) if isinstance(value, str) else value


class AllOf(Contract):
    all: list[Condition] = Field(min_length=1, max_length=50)


class AnyOf(Contract):
    any: list[Condition] = Field(min_length=1, max_length=50)


class NotOf(Contract):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    not_: Condition = Field(alias="not")


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("all", "any", "not"):
            if key in value:
                return key
        return "compare"
    if isinstance(value, (AllOf, AnyOf, NotOf, Compare)):
        return {AllOf: "all", AnyOf: "any", NotOf: "not", Compare: "compare"}[type(value)]
    return None


Condition = Annotated[
    Union[
        Annotated[AllOf, Tag("all")],
        Annotated[AnyOf, Tag("any")],
        Annotated[NotOf, Tag("not")],
        Annotated[Compare, Tag("compare")],
    ],
    Discriminator(_condition_kind, custom_error_type="condition", custom_error_message=(
        "a condition is an object: {\"all\": [...]}, {\"any\": [...]}, {\"not\": {...}} or {\"path\", \"op\", \"value\"}")),
]


class TagFilter(Contract):
    """On events that carry ``data.tags``: at least one of ``include`` (if given) and none of ``exclude``."""

    include: list[str] = Field(default_factory=list, max_length=50)
    exclude: list[str] = Field(default_factory=list, max_length=50)


class Trigger(Contract):
    event_types: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES))
    entity_type: EntityType | None = Field(default=None, description="Must agree with the event types' entity")
    tags: TagFilter | None = None

    @field_validator("event_types")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type {unknown[0]!r}; one of: {', '.join(EVENT_TYPES)}")
        if len(set(value)) != len(value):
            raise ValueError("event types repeat")
        return value


class DateSpec(Contract):
    """A date: absolute, ``days_from_now`` (from the event's time), or a date an earlier step output."""

    at: AwareDatetime | None = None
    days_from_now: Decimal | None = Field(default=None, ge=-3650, le=3650)
    from_step: StepId | None = None
    field: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]*$", description="The step output's field")
    plus_days: Decimal = Field(default=Decimal(0), ge=-3650, le=3650)

    @model_validator(mode="after")
    def _exactly_one(self) -> DateSpec:
        given = [k for k in ("at", "days_from_now", "from_step") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of at, days_from_now, from_step")
        if (self.from_step is None) != (self.field is None):
            raise ValueError("from_step and field go together")
        return self


# A number: a literal, another field (optionally scaled), or a template that renders to one.
NumberValue = Union[FieldRef, Decimal, Template]


class HealSpec(Contract):
    """The later event that proves the exception's problem gone (see schemas.actions.HealCondition)."""

    event_type: str
    field: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
    at_least: NumberValue | None = None

    @field_validator("event_type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}; one of: {', '.join(EVENT_TYPES)}")
        return value


class _Step(Contract):
    id: StepId | None = Field(default=None, description="Name later steps use: {{ steps.<id>.output... }}")
    when: Condition | None = Field(default=None, description="Run this step only if it holds; else skipped")


class CreateExceptionStep(_Step):
    type: Literal["create_exception"]
    exception_type: ExceptionType
    severity: Severity
    title: Template = Field(min_length=1)
    impact: NumberValue | None = None
    currency: Template | None = None
    due: DateSpec | None = Field(default=None, description="When it must be handled (its SLA)")
    heal: HealSpec | None = None
    capture_callback: bool = Field(default=False, description="Keep a failed payment callback for replay")


class SendNotificationStep(_Step):
    type: Literal["send_notification"]
    recipients: list[Template] = Field(min_length=1, max_length=50)
    title: Template = Field(min_length=1)
    body: Template = ""
    severity: Severity | None = None


class AdjustPriceStep(_Step):
    type: Literal["adjust_price"]
    sku: Template = "{{ subject }}"
    new_price: NumberValue
    currency: Template = "{{ data.currency }}"
    floor: Money = Field(description="Never below this price")
    max_change_pct_per_day: Decimal = Field(gt=0, le=100, description="Total move per sku per day, in %")


class UpdateInventoryStep(_Step):
    type: Literal["update_inventory"]
    sku: Template = "{{ subject }}"
    location: Template = "default"
    set_on_hand: NumberValue


class FlagForReviewStep(_Step):
    type: Literal["flag_for_review"]
    reason: Template = Field(min_length=1)
    exception_type: ExceptionType | None = Field(default=None, description="Default: by the event's entity")
    severity: Severity = Severity.LOW
    review_by: DateSpec | None = None


class CallWebhookStep(_Step):
    type: Literal["call_webhook"]
    method: HttpMethod = "POST"
    url: Template = Field(min_length=1)
    headers: dict[str, Template] = Field(default_factory=dict, max_length=50)
    body: Template | None = None
    credential: CredentialName | None = Field(default=None, description="A stored credential's name, never its value")


class SendEmailStep(_Step):
    type: Literal["send_email"]
    to: list[Template] = Field(min_length=1, max_length=50)
    subject: Template = Field(min_length=1)
    body: Template = Field(min_length=1)
    format: Literal["text", "html", "markdown"] = "text"


Step = Annotated[
    Union[CreateExceptionStep, SendNotificationStep, AdjustPriceStep, UpdateInventoryStep, FlagForReviewStep,
          CallWebhookStep, SendEmailStep],
    Field(discriminator="type"),
]
ACTION_TYPES: tuple[str, ...] = ("create_exception", "send_notification", "adjust_price", "update_inventory",
                                 "flag_for_review", "call_webhook", "send_email")


class RateLimit(Contract):
    """At most ``max_runs`` runs in any ``per_seconds`` window; runs over it are cancelled, on record."""

    max_runs: int = Field(ge=1, le=1_000_000)
    per_seconds: int = Field(ge=1, le=86400)


class RuleDefinition(Contract):
    """What an operator writes. Every saved edit becomes a new version."""

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    trigger: Trigger
    conditions: Condition | None = Field(default=None, description="None: every triggering event matches")
    actions: list[Step] = Field(min_length=1, max_length=20)
    rate_limit: RateLimit | None = Field(default=None, description="Default: the service's setting")
    max_chain_depth: int | None = Field(default=None, ge=0, le=20, description="Default: the service's setting")

    @model_validator(mode="after")
    def _unique_step_ids(self) -> RuleDefinition:
        seen: set[str] = set()
        for i, step in enumerate(self.actions):
            name = step.id or f"step{i + 1}"
            if name in seen:
                raise ValueError(f"actions[{i}].id: step id {name!r} repeats")
            seen.add(name)
        return self

    def step_ids(self) -> list[str]:
        return [s.id or f"step{i + 1}" for i, s in enumerate(self.actions)]


RuleStatus = Literal["draft", "active", "paused", "archived"]


class RuleSummary(Contract):
    """A stored rule as the API shows it."""

    id: RuleId
    version: int
    status: RuleStatus
    mode: RuleMode
    definition: RuleDefinition
    created_at: datetime
    updated_at: datetime
    updated_by: str
    dry_run_since: datetime | None = None
    live_since: datetime | None = None
    live_by: str | None = None
