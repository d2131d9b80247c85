"""What a matching rule does with an event, worked out in full before anything runs.

``plan`` resolves every step of a run (templates, numbers, dates, the price
guardrails) into a step record and, for a LIVE rule, the record it will hand
on: an action for the exceptions service, a command for the store's
connectors, or a request for the notifier. It does no I/O and reads no clock:
every id is derived from (event, rule, version, step), so planning the same
event again gives the same records. The worker executes plans; ``simulate``
finishes one as a DRY_RUN would, for ``/v1/rules/test`` and backtests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import ValidationError

from schemas.actions import (
    AdjustPrice,
    AdjustPriceData,
    CallbackCapture,
    CreateException,
    CreateExceptionData,
    ExceptionSpec,
    HealCondition,
    RuleRunData,
    StepRecord,
    UpdateInventory,
    UpdateInventoryData,
)
from schemas.common import EntityType, ExceptionType
from schemas.envelope import Envelope, deterministic_id
from schemas.notifications import EmailMessage, InAppMessage, NotifyRequest, WebhookMessage
from schemas.rules import (
    AdjustPriceStep,
    CallWebhookStep,
    CreateExceptionStep,
    DateSpec,
    FlagForReviewStep,
    SendEmailStep,
    SendNotificationStep,
    UpdateInventoryStep,
)
from services.rules.compiler import CompiledNumber, CompiledRule, CompiledStep, entity_of
from services.rules.conditions import MISSING, getter
from services.rules.templates import RenderError, markdown_to_html
from storeops.errors import describe

Effect = CreateException | AdjustPrice | UpdateInventory | NotifyRequest
PrevLookup = Callable[[str], Any]
CENT = Decimal("0.01")
FINISHED = frozenset({"completed", "failed", "cancelled"})
REVIEW_TYPE = {EntityType.ORDER: ExceptionType.ORDER, EntityType.SKU: ExceptionType.LISTING}
TITLE_MAX = 300
KEY_MAX = 200


class StepFailed(Exception):
    """A step that cannot run on this event; the message is the step's error, on record."""


@dataclass(frozen=True)
class PriceGuard:
    """The limits an AdjustPrice must keep, checked again when the command is emitted."""

    sku: str
    old_price: Decimal | None
    new_price: Decimal
    floor: Decimal
    max_change_pct: Decimal


@dataclass
class PlannedStep:
    step: CompiledStep
    record: StepRecord
    effect: Effect | None = None
    guard: PriceGuard | None = None


@dataclass
class PlannedRun:
    rule: CompiledRule
    event: Envelope
    run: RuleRunData
    steps: list[PlannedStep] = field(default_factory=list)

    @property
    def effects(self) -> list[Effect]:
        return [s.effect for s in self.steps if s.effect is not None and s.record.status in ("pending", "succeeded")]


def run_id_of(event_id: uuid.UUID, rule_id: str, version: int) -> uuid.UUID:
    """At most one run per (event, rule, version): the id says so."""
    return deterministic_id("run", event_id, rule_id, version)


def matches(rule: CompiledRule, event: Envelope, prev: PrevLookup) -> bool:
    return rule.triggered(event) and rule.predicate(event, prev)


class PreviousValues:
    """The previous value of each (subject, path), moved forward event by event.

    ``prev`` answers only with a value from an older event; ``remember`` keeps
    the newer of what it knows and what the event says, and notes it in
    ``changed`` (value, event time, event id) for whoever stores it.
    """

    def __init__(self, known: Mapping[tuple[str, str], tuple[Any, datetime]] | None = None) -> None:
        self.values: dict[tuple[str, str], tuple[Any, datetime]] = dict(known or {})
        self.changed: dict[tuple[str, str], tuple[Any, datetime, uuid.UUID]] = {}

    def lookup(self, event: Envelope) -> PrevLookup:
        def prev(path: str) -> Any:
            found = self.values.get((event.subject, path))
            return found[0] if found is not None and found[1] < event.time else MISSING
        return prev

    def remember(self, event: Envelope, paths: Iterable[str]) -> None:
        for path in paths:
            value = getter(path)(event)
            key = (event.subject, path)
            known = self.values.get(key)
            if value is MISSING or (known is not None and known[1] >= event.time):
                continue
            self.values[key] = (value, event.time)
            self.changed[key] = (value, event.time, event.id)


def new_run(rule: CompiledRule, event: Envelope, now: datetime, status: str = "running", reason: str | None = None
            ) -> RuleRunData:
    return RuleRunData(
        run_id=run_id_of(event.id, rule.id, rule.version), rule=rule.ref, event_id=event.id, event_type=event.type,
        subject=event.subject, status=status, reason=reason, started_at=now,
        finished_at=now if status in FINISHED else None,
    )


def cancelled(rule: CompiledRule, event: Envelope, now: datetime, reason: str) -> RuleRunData:
    """A run the guardrails stopped before any step: on record, with every step cancelled."""
    steps = [StepRecord(step_id=s.id, action=s.action, status="cancelled", logs=[reason]) for s in rule.steps]
    return new_run(rule, event, now, "cancelled", reason).model_copy(update={"steps": steps})


def plan(rule: CompiledRule, event: Envelope, prev: PrevLookup, now: datetime, *, live: bool,
         dump: dict[str, Any] | None = None) -> PlannedRun:
    """Resolve every step. LIVE steps that will hand something on are ``pending``; DRY_RUN
    ones are ``succeeded`` and ``simulated``. A step that fails fails the run; the
    steps after it are cancelled."""
    data = dump if dump is not None else event.model_dump(mode="python")
    outputs: dict[str, dict[str, Any]] = {}
    context = {"event": data, "data": data["data"], "subject": event.subject, "now": event.time, "steps": outputs,
               "rule": {"id": rule.id, "version": rule.version, "mode": rule.mode, "name": rule.definition.name}}
    planned = PlannedRun(rule, event, new_run(rule, event, now))
    failed: str | None = None
    for step in rule.steps:
        if failed is not None:
            record = StepRecord(step_id=step.id, action=step.action, status="cancelled",
                                logs=[f"cancelled: step {failed} failed"])
            planned.steps.append(PlannedStep(step, record))
            continue
        if step.when is not None and not step.when(event, prev):
            record = StepRecord(step_id=step.id, action=step.action, status="skipped", logs=["when: condition not met"])
            outputs[step.id] = {"status": "skipped", "output": {}}
            planned.steps.append(PlannedStep(step, record))
            continue
        try:
            inputs, output, effect, guard = _resolve(rule, step, event, context, planned.run.run_id)
        except StepFailed as exc:
            failed = step.id
            record = StepRecord(step_id=step.id, action=step.action, status="failed", error=str(exc), attempts=1,
                                simulated=not live)
            planned.steps.append(PlannedStep(step, record))
            continue
        outputs[step.id] = {"status": "succeeded", "output": output}
        if live:
            record = StepRecord(step_id=step.id, action=step.action, status="pending", inputs=inputs, output=output)
        else:
            what = type(effect).__name__ if effect is not None else "nothing"
            record = StepRecord(step_id=step.id, action=step.action, status="succeeded", simulated=True, inputs=inputs,
                                output=output, logs=[f"DRY_RUN: would hand on {what}"], attempts=0)
        planned.steps.append(PlannedStep(step, record, effect, guard))
    return planned


def finish(planned: PlannedRun, now: datetime) -> RuleRunData:
    """The run's final record from its steps' outcomes."""
    steps = [s.record for s in planned.steps]
    failed = next((s for s in steps if s.status == "failed"), None)
    emitted = [s.effect for s in planned.steps
               if s.record.status == "succeeded" and not s.record.simulated and isinstance(s.effect, Envelope)]
    return planned.run.model_copy(update={
        "status": "failed" if failed else "completed",
        "reason": f"step {failed.step_id} failed: {failed.error}" if failed else None,
        "finished_at": now, "steps": steps, "action_ids": [e.id for e in emitted],
    })


def simulate(rule: CompiledRule, event: Envelope, prev: PrevLookup, now: datetime) -> tuple[RuleRunData | None, str | None]:
    """What a DRY_RUN of ``rule`` would record for ``event``: (run, None), or (None, why it does not match)."""
    if event.type not in rule.event_types:
        return None, f"trigger: {event.type} is not one of {', '.join(sorted(rule.event_types))}"
    if not rule.triggered(event):
        return None, "trigger: the event's tags do not pass the tag filter"
    if not rule.predicate(event, prev):
        return None, "conditions: not met"
    return finish(plan(rule, event, prev, now, live=False), now), None


# --- resolving one step ---------------------------------------------------------


def _render(step: CompiledStep, name: str, context: Mapping[str, Any], limit: int | None = None) -> str:
    try:
        text = step.templates[name].render(context)
    except RenderError as exc:
        raise StepFailed(f"{name}: {exc}") from None
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _number(step: CompiledStep, name: str, event: Envelope, context: Mapping[str, Any]) -> Decimal | None:
    value: CompiledNumber | None = step.numbers.get(name)
    if value is None:
        return None
    if value.template is not None:
        try:
            return value.template.render_number(context)
        except RenderError as exc:
            raise StepFailed(f"{name}: {exc}") from None
    if value.field is not None:
        found = value.field(event)
        if found is MISSING:
            raise StepFailed(f"{name}: {value.path} has no value on this event")
        return Decimal(found) * value.factor if value.factor is not None else Decimal(found)
    return value.constant


def _date(spec: DateSpec | None, event: Envelope, outputs: Mapping[str, Any], name: str) -> datetime | None:
    if spec is None:
        return None
    if spec.at is not None:
        return spec.at
    if spec.days_from_now is not None:
        return event.time + timedelta(days=float(spec.days_from_now))
    assert spec.from_step is not None  # a DateSpec gives exactly one of at, days_from_now, from_step
    value = outputs.get(spec.from_step, {}).get("output", {}).get(spec.field)
    if value is None:
        raise StepFailed(f"{name}: step {spec.from_step} gave no {spec.field}")
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value + timedelta(days=float(spec.plus_days))


def _resolve(rule: CompiledRule, step: CompiledStep, event: Envelope, context: dict[str, Any], run_id: uuid.UUID
             ) -> tuple[dict[str, Any], dict[str, Any], Effect | None, PriceGuard | None]:
    """(inputs, output, effect, guard) for one step; StepFailed says why it cannot run."""
    spec = step.spec
    outputs = context["steps"]
    effect_id = deterministic_id("effect", event.id, rule.id, rule.version, step.id)
    try:
        match spec:
            case CreateExceptionStep():
                title = _render(step, "title", context, TITLE_MAX)
                impact = _number(step, "impact", event, context)
                currency = _render(step, "currency", context) if "currency" in step.templates else getattr(
                    event.data, "currency", None) if impact is not None else None
                due = _date(spec.due, event, outputs, "due")
                heal = None
                if spec.heal is not None:
                    heal = HealCondition(event_type=spec.heal.event_type, field=spec.heal.field,
                                         at_least=_number(step, "heal.at_least", event, context))
                callback = None
                if spec.capture_callback:
                    d = event.data
                    callback = CallbackCapture(gateway=d.gateway, error=d.error, raw_callback=d.raw_callback)
                entity = entity_of(event.type)
                exception = ExceptionSpec(type=spec.exception_type, severity=spec.severity, title=title, entity_type=entity,
                                          entity_id=event.subject, impact=impact, currency=currency, heal=heal,
                                          callback=callback, due_at=due)
                action = _action(rule, event, effect_id, exception)
                inputs = exception.model_dump(mode="json", exclude={"callback"}, exclude_none=True)
                output = {"action_id": str(action.id), "exception_type": spec.exception_type.value,
                          "severity": spec.severity.value, "entity_type": entity.value, "entity_id": event.subject,
                          "due_at": due.isoformat() if due else None}
                return inputs, output, action, None
            case FlagForReviewStep():
                reason = _render(step, "reason", context, TITLE_MAX - 8)
                review_by = _date(spec.review_by, event, outputs, "review_by")
                entity = entity_of(event.type)
                exception = ExceptionSpec(type=spec.exception_type or REVIEW_TYPE[entity], severity=spec.severity,
                                          title=f"Review: {reason}", entity_type=entity, entity_id=event.subject,
                                          due_at=review_by)
                action = _action(rule, event, effect_id, exception)
                inputs = {"reason": reason, "review_by": review_by.isoformat() if review_by else None,
                          "exception_type": exception.type.value, "severity": spec.severity.value}
                output = {"action_id": str(action.id), "entity_type": entity.value, "entity_id": event.subject,
                          "review_by": review_by.isoformat() if review_by else None}
                return inputs, output, action, None
            case AdjustPriceStep():
                return _adjust_price(rule, step, spec, event, context, effect_id, run_id)
            case UpdateInventoryStep():
                sku = _render(step, "sku", context)
                location = _render(step, "location", context)
                on_hand = _number(step, "set_on_hand", event, context)
                if on_hand is None or on_hand < 0 or on_hand != on_hand.to_integral_value():
                    raise StepFailed(f"set_on_hand: {on_hand} is not a whole number of at least 0")
                command = UpdateInventory(**event.child(
                    id=effect_id, type="UpdateInventory", source=f"storeops/rules/{rule.id}", time=event.time, subject=sku,
                    data=UpdateInventoryData(rule=rule.ref, run_id=run_id, sku=sku, location=location,
                                             set_on_hand=int(on_hand))))
                inputs = {"sku": sku, "location": location, "set_on_hand": int(on_hand)}
                return inputs, {"command_id": str(command.id), **inputs}, command, None
            case SendNotificationStep():
                recipients = [_render(step, f"recipients[{j}]", context) for j in range(len(spec.recipients))]
                message = InAppMessage(channel="in_app", recipients=recipients, title=_render(step, "title", context, 400),
                                       body=_render(step, "body", context), severity=spec.severity)
                request = _request(rule, event, effect_id, run_id, step, message)
                inputs = message.model_dump(mode="json", exclude_none=True)
                return inputs, {"request_id": str(request.request_id), "recipients": recipients,
                                "title": message.title}, request, None
            case SendEmailStep():
                to = [_render(step, f"to[{j}]", context) for j in range(len(spec.to))]
                body = _render(step, "body", context)
                text, html = (body, None) if spec.format == "text" else (None, body) if spec.format == "html" else (
                    body, markdown_to_html(body))
                email = EmailMessage(channel="email", to=to, subject=_render(step, "subject", context, 300), text=text,
                                     html=html)
                request = _request(rule, event, effect_id, run_id, step, email)
                inputs = {**email.model_dump(mode="json", exclude_none=True), "format": spec.format}
                return inputs, {"request_id": str(request.request_id), "to": to, "subject": email.subject}, request, None
            case CallWebhookStep():
                url = _render(step, "url", context)
                headers = {name: _render(step, f"headers.{name}", context) for name in spec.headers}
                payload = _render(step, "body", context) if "body" in step.templates else None
                webhook = WebhookMessage(channel="webhook", method=spec.method, url=url, headers=headers, body=payload,
                                         credential=spec.credential)
                request = _request(rule, event, effect_id, run_id, step, webhook)
                inputs = webhook.model_dump(mode="json", exclude_none=True)
                return inputs, {"request_id": str(request.request_id), "method": spec.method, "url": url}, request, None
    except ValidationError as exc:
        raise StepFailed(f"invalid {step.action}: {describe(exc)}") from None
    raise AssertionError(f"unhandled step type {spec.type}")  # the Step union is closed


def _adjust_price(rule: CompiledRule, step: CompiledStep, spec: AdjustPriceStep, event: Envelope,
                  context: dict[str, Any], effect_id: uuid.UUID, run_id: uuid.UUID
                  ) -> tuple[dict[str, Any], dict[str, Any], AdjustPrice, PriceGuard]:
    sku = _render(step, "sku", context)
    currency = _render(step, "currency", context)
    new_price = _number(step, "new_price", event, context)
    if new_price is None:
        raise StepFailed("new_price: no value")
    new_price = new_price.quantize(CENT, rounding=ROUND_HALF_UP)
    old_price = event.data.new_price if event.type == "PriceChanged" and event.subject == sku else None
    guard = PriceGuard(sku, old_price, new_price, spec.floor, spec.max_change_pct_per_day)
    refusal = price_refusal(guard.new_price, guard.floor, guard.max_change_pct, old_price)
    inputs = {"sku": sku, "currency": currency, "old_price": str(old_price) if old_price is not None else None,
              "new_price": str(new_price), "floor": str(spec.floor),
              "max_change_pct_per_day": str(spec.max_change_pct_per_day)}
    if refusal:
        raise StepFailed(f"guardrail: {refusal}")
    command = AdjustPrice(**event.child(
        id=effect_id, type="AdjustPrice", source=f"storeops/rules/{rule.id}", time=event.time, subject=sku,
        data=AdjustPriceData(rule=rule.ref, run_id=run_id, sku=sku, old_price=old_price, new_price=new_price,
                             currency=currency)))
    output = {"command_id": str(command.id), "sku": sku, "old_price": inputs["old_price"], "new_price": str(new_price),
              "change_pct": str(change_pct(old_price, new_price)) if old_price else None}
    return inputs, output, command, guard


def change_pct(reference: Decimal, price: Decimal) -> Decimal:
    return ((price - reference) / reference * 100).quantize(CENT, rounding=ROUND_HALF_UP)


def price_text(value: Decimal) -> str:
    """A price as people write it: cents, or more places only where it has them (a stored 100.0000 is 100.00)."""
    cents = value.quantize(CENT)
    return str(cents if cents == value else value.normalize())


def price_refusal(new_price: Decimal, floor: Decimal, max_pct: Decimal, reference: Decimal | None) -> str | None:
    """Why a price move breaks its limits, or None. ``reference``: the price it moves from."""
    if new_price < floor:
        return f"new price {price_text(new_price)} is below the floor {price_text(floor)}"
    if reference is not None and reference > 0:
        moved = abs(change_pct(reference, new_price))
        if moved > max_pct:
            return (f"a move from {price_text(reference)} to {price_text(new_price)} is {moved}%, "
                    f"over the limit of {max_pct}% a day")
    return None


def _action(rule: CompiledRule, event: Envelope, action_id: uuid.UUID, exception: ExceptionSpec) -> CreateException:
    return CreateException(**event.child(
        id=action_id, type="CreateException", source=f"storeops/rules/{rule.id}", time=event.time,
        subject=exception.entity_id,
        data=CreateExceptionData(rule=rule.ref, exception=exception, evidence=[event.id])))


def _request(rule: CompiledRule, event: Envelope, request_id: uuid.UUID, run_id: uuid.UUID, step: CompiledStep,
             message: InAppMessage | EmailMessage | WebhookMessage) -> NotifyRequest:
    return NotifyRequest(request_id=request_id, message=message, rule=rule.ref, run_id=run_id, step_id=step.id,
                         event_id=event.id)
