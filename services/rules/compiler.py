"""From a rule definition to something that runs: every check a definition must pass
before it is saved, and the compiled conditions and templates the worker uses.

Every problem is reported with a pointer to its part (``actions[1].url``), and
all of them at once, so an operator fixes a rule in one round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from schemas.actions import RuleRef
from schemas.common import EntityType
from schemas.envelope import Envelope
from schemas.events import EVENT_CLASSES
from schemas.rules import (
    AdjustPriceStep,
    CallWebhookStep,
    CreateExceptionStep,
    DateSpec,
    FieldRef,
    FlagForReviewStep,
    RateLimit,
    RuleDefinition,
    SendEmailStep,
    SendNotificationStep,
    Step,
    UpdateInventoryStep,
)
from services.rules.conditions import compile_condition, getter, path_kind
from services.rules.errors import DefinitionError
from services.rules.templates import CompiledTemplate, compile_template

_CLASSES = {cls.__name__: cls for cls in EVENT_CLASSES}
_ENTITY_OF_KEY = {"order_id": EntityType.ORDER, "sku": EntityType.SKU}

# What each kind of step outputs, for templates and dates of later steps.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "create_exception": ("action_id", "exception_type", "severity", "entity_type", "entity_id", "due_at"),
    "send_notification": ("request_id", "recipients", "title"),
    "adjust_price": ("command_id", "sku", "old_price", "new_price", "change_pct"),
    "update_inventory": ("command_id", "sku", "location", "set_on_hand"),
    "flag_for_review": ("action_id", "entity_type", "entity_id", "review_by"),
    "call_webhook": ("request_id", "method", "url"),
    "send_email": ("request_id", "to", "subject"),
}
DATE_OUTPUTS = {("create_exception", "due_at"), ("flag_for_review", "review_by")}


def entity_of(event_type: str) -> EntityType:
    return _ENTITY_OF_KEY[_CLASSES[event_type].key_field]


def _data_fields(event_type: str) -> dict[str, FieldInfo]:
    """The fields of an event type's ``data`` model."""
    data = _CLASSES[event_type].model_fields["data"].annotation
    assert isinstance(data, type) and issubclass(data, BaseModel)  # every store event's data is a model
    return data.model_fields


@dataclass(frozen=True)
class CompiledNumber:
    """A NumberValue ready to resolve: a constant, another field (scaled), or a template."""

    constant: Any = None
    field: Callable[[Envelope], Any] | None = None
    factor: Any = None
    template: CompiledTemplate | None = None
    path: str | None = None


@dataclass(frozen=True)
class CompiledStep:
    index: int
    id: str
    spec: Step
    when: Callable[..., bool] | None
    templates: dict[str, CompiledTemplate] = field(default_factory=dict)  # by field: title, headers.X, to[0]...
    numbers: dict[str, CompiledNumber] = field(default_factory=dict)

    @property
    def action(self) -> str:
        return self.spec.type


@dataclass(frozen=True)
class CompiledRule:
    id: str
    version: int
    mode: str
    definition: RuleDefinition
    event_types: frozenset[str]
    predicate: Callable[..., bool]
    steps: tuple[CompiledStep, ...]
    stateful_paths: frozenset[str]
    include_tags: frozenset[str]
    exclude_tags: frozenset[str]
    rate_limit: RateLimit | None
    max_chain_depth: int | None

    @property
    def ref(self) -> RuleRef:
        return RuleRef(rule_id=self.id, rule_version=self.version, mode=self.mode)

    def triggered(self, event: Envelope) -> bool:
        """The event is of a trigger type and passes the tag filter."""
        if event.type not in self.event_types:
            return False
        if self.include_tags or self.exclude_tags:
            tags = set(getattr(event.data, "tags", ()) or ())
            if self.include_tags and not (tags & self.include_tags):
                return False
            if tags & self.exclude_tags:
                return False
        return True


class _Problems:
    """Collects DefinitionErrors so one answer lists every problem."""

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []

    def check(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except DefinitionError as exc:
            self.errors.extend(exc.errors)
            return None

    def add(self, where: str, error: str) -> None:
        self.errors.append({"field": where, "error": error})


def compile_rule(rule_id: str, version: int, mode: str, definition: RuleDefinition) -> CompiledRule:
    """Check ``definition`` in full and compile it; DefinitionError lists every problem."""
    problems = _Problems()
    trigger = definition.trigger
    types = list(trigger.event_types)
    entities = {entity_of(t) for t in types}
    if trigger.entity_type is not None and entities != {trigger.entity_type}:
        problems.add("trigger.entity_type", f"{trigger.entity_type.value!r} does not match the event types, which are about "
                     f"{', '.join(sorted(e.value for e in entities))}")
    if trigger.tags is not None:
        untagged = [t for t in types if "tags" not in _data_fields(t)]
        if untagged:
            problems.add("trigger.tags", f"{untagged[0]} events carry no tags")
    predicate = problems.check(lambda: compile_condition(definition.conditions, types, "conditions"))
    stateful = set(getattr(predicate, "stateful_paths", ()))

    steps: list[CompiledStep] = []
    step_ids = definition.step_ids()
    kinds: dict[str, str] = {}
    for i, spec in enumerate(definition.actions):
        where = f"actions[{i}]"
        when = None
        if spec.when is not None:
            when = problems.check(partial(compile_condition, spec.when, types, f"{where}.when"))
            stateful |= set(getattr(when, "stateful_paths", ()))
        templates, numbers = _step_parts(spec, where, types, kinds, problems)
        steps.append(CompiledStep(i, step_ids[i], spec, when, templates, numbers))
        kinds[step_ids[i]] = spec.type
    if problems.errors:
        raise DefinitionError(None, errors=problems.errors)
    return CompiledRule(
        id=rule_id, version=version, mode=mode, definition=definition, event_types=frozenset(types),
        predicate=predicate, steps=tuple(steps), stateful_paths=frozenset(stateful),
        include_tags=frozenset(trigger.tags.include) if trigger.tags else frozenset(),
        exclude_tags=frozenset(trigger.tags.exclude) if trigger.tags else frozenset(),
        rate_limit=definition.rate_limit, max_chain_depth=definition.max_chain_depth,
    )


def _step_parts(spec: Step, where: str, types: list[str], earlier: dict[str, str], problems: _Problems
                ) -> tuple[dict[str, CompiledTemplate], dict[str, CompiledNumber]]:
    templates: dict[str, CompiledTemplate] = {}
    numbers: dict[str, CompiledNumber] = {}

    def template(name: str, text: str | None, *, html: bool = False) -> None:
        if text is not None:
            compiled = problems.check(lambda: compile_template(text, f"{where}.{name}", html=html))
            if compiled is not None:
                templates[name] = compiled

    def number(name: str, value: Any, *, integer: bool = False) -> None:
        if value is None:
            return
        if isinstance(value, FieldRef):
            kind = problems.check(lambda: _kind(types, value.path, f"{where}.{name}.path"))
            if kind is not None and kind != "number":
                problems.add(f"{where}.{name}.path", f"{value.path} is a {kind}, not a number")
            numbers[name] = CompiledNumber(field=getter(value.path), factor=value.factor, path=value.path)
        elif isinstance(value, str):
            compiled = problems.check(lambda: compile_template(value, f"{where}.{name}"))
            if compiled is not None:
                numbers[name] = CompiledNumber(template=compiled)
        else:
            if integer and value != value.to_integral_value():
                problems.add(f"{where}.{name}", "must be a whole number")
            numbers[name] = CompiledNumber(constant=value)

    def date(name: str, spec_: DateSpec | None) -> None:
        if spec_ is None or spec_.from_step is None:
            return
        kind = earlier.get(spec_.from_step)
        if kind is None:
            problems.add(f"{where}.{name}.from_step",
                         f"no earlier step called {spec_.from_step!r}; earlier steps: {', '.join(earlier) or 'none'}")
        elif (kind, spec_.field) not in DATE_OUTPUTS:
            dates = [f"{k}.{f}" for k, f in sorted(DATE_OUTPUTS)]
            problems.add(f"{where}.{name}.field", f"a {kind} step outputs no date {spec_.field!r}; dates: {', '.join(dates)}")

    match spec:
        case CreateExceptionStep():
            template("title", spec.title)
            template("currency", spec.currency)
            number("impact", spec.impact)
            date("due", spec.due)
            if spec.heal is not None:
                if spec.heal.field is not None:
                    kind = problems.check(partial(_kind, [spec.heal.event_type], f"data.{spec.heal.field}",
                                                  f"{where}.heal.field"))
                    if kind is not None and kind != "number":
                        problems.add(f"{where}.heal.field", f"data.{spec.heal.field} is a {kind}, not a number")
                if (spec.heal.field is None) != (spec.heal.at_least is None):
                    problems.add(f"{where}.heal", "field and at_least go together: give both or neither")
                number("heal.at_least", spec.heal.at_least)
            if spec.capture_callback and set(types) != {"PaymentCallbackFailed"}:
                problems.add(f"{where}.capture_callback", "only a rule triggered by PaymentCallbackFailed alone has a callback")
        case SendNotificationStep():
            for j, recipient in enumerate(spec.recipients):
                template(f"recipients[{j}]", recipient)
            template("title", spec.title)
            template("body", spec.body)
        case AdjustPriceStep():
            template("sku", spec.sku)
            template("currency", spec.currency)
            number("new_price", spec.new_price)
        case UpdateInventoryStep():
            template("sku", spec.sku)
            template("location", spec.location)
            number("set_on_hand", spec.set_on_hand, integer=True)
        case FlagForReviewStep():
            template("reason", spec.reason)
            date("review_by", spec.review_by)
        case CallWebhookStep():
            template("url", spec.url)
            for name, value in spec.headers.items():
                template(f"headers.{name}", value)
            template("body", spec.body)
        case SendEmailStep():
            for j, address in enumerate(spec.to):
                template(f"to[{j}]", address)
            template("subject", spec.subject)
            template("body", spec.body, html=spec.format == "html")
    return templates, numbers


def _kind(types: list[str], path: str, where: str) -> str:
    try:
        return path_kind(types, path)
    except ValueError as exc:
        raise DefinitionError(where, str(exc)) from None
    except DefinitionError as exc:
        raise DefinitionError(None, errors=[{"field": where, "error": e["error"]} for e in exc.errors]) from None
