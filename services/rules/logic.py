"""The built-in rules and what a match produces. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.actions import (
    CallbackCapture,
    CreateException,
    CreateExceptionData,
    ExceptionSpec,
    HealCondition,
    RuleRef,
    RuleRunCompleted,
    RuleRunData,
)
from schemas.common import EntityType, ExceptionType, Severity
from schemas.envelope import Envelope, deterministic_id
from schemas.events import OrderPlaced, PaymentCallbackFailed, StockChanged
from services.rules.settings import RulesConfig

Check = Callable[[Envelope, RulesConfig], ExceptionSpec | None]


@dataclass(frozen=True)
class BuiltinRule:
    id: str
    version: int
    event_type: str
    description: str
    check: Check

    @property
    def ref(self) -> RuleRef:
        return RuleRef(rule_id=self.id, rule_version=self.version, mode="LIVE")


def _title(text: str) -> str:
    """Keys run to 200 characters; a title built from two of them must still fit ExceptionSpec's 300."""
    return text if len(text) <= 300 else text[:299] + "…"


def high_value_order(event: Envelope, config: RulesConfig) -> ExceptionSpec | None:
    """An order at or above the threshold needs a person's eye before it ships."""
    assert isinstance(event, OrderPlaced)
    order = event.data
    if order.total < config.high_value_threshold:
        return None
    return ExceptionSpec(
        type=ExceptionType.VIP,
        severity=Severity.HIGH,
        title=f"High-value order {order.order_id}: {order.total} {order.currency}",
        entity_type=EntityType.ORDER,
        entity_id=order.order_id,
        impact=order.total,
        currency=order.currency,
    )


def low_stock(event: Envelope, config: RulesConfig) -> ExceptionSpec | None:
    """Stock under the sku's reorder point (or the default threshold); out of stock is High.

    Heals when a later StockChanged brings on_hand back to the same threshold.
    """
    assert isinstance(event, StockChanged)
    stock = event.data
    threshold = stock.reorder_point if stock.reorder_point is not None else config.low_stock_threshold
    if stock.on_hand >= threshold:
        return None
    return ExceptionSpec(
        type=ExceptionType.INVENTORY,
        severity=Severity.HIGH if stock.on_hand == 0 else Severity.MEDIUM,
        title=_title(f"Low stock for {stock.sku} at {stock.location}: {stock.on_hand} on hand, threshold {threshold}"),
        entity_type=EntityType.SKU,
        entity_id=stock.sku,
        heal=HealCondition(event_type="StockChanged", field="on_hand", at_least=threshold),
    )


def payment_callback_failed(event: Envelope, config: RulesConfig) -> ExceptionSpec | None:
    """A gateway callback we could not process: kept for replay; heals once the payment is captured."""
    assert isinstance(event, PaymentCallbackFailed)
    failed = event.data
    return ExceptionSpec(
        type=ExceptionType.PAYMENT_CALLBACK_FAILURE,
        severity=Severity.HIGH,
        title=_title(f"Payment callback from {failed.gateway} failed for order {failed.order_id}"),
        entity_type=EntityType.ORDER,
        entity_id=failed.order_id,
        callback=CallbackCapture(gateway=failed.gateway, error=failed.error, raw_callback=failed.raw_callback),
        heal=HealCondition(event_type="PaymentCaptured"),
    )


BUILTIN_RULES: tuple[BuiltinRule, ...] = (
    BuiltinRule("high-value-order", 1, "OrderPlaced", "Order total at or above the configured threshold", high_value_order),
    BuiltinRule("low-stock", 1, "StockChanged", "Stock level below its threshold", low_stock),
    BuiltinRule("payment-callback-failed", 1, "PaymentCallbackFailed", "A payment gateway callback could not be processed",
                payment_callback_failed),
)
_BY_EVENT: dict[str, tuple[BuiltinRule, ...]] = {}
for _rule in BUILTIN_RULES:
    _BY_EVENT[_rule.event_type] = (*_BY_EVENT.get(_rule.event_type, ()), _rule)


@dataclass(frozen=True)
class Outcome:
    """What one matching evaluation emits: the action and the record of the run."""

    action: CreateException
    run: RuleRunCompleted


def evaluate(event: Envelope, config: RulesConfig) -> list[Outcome]:
    """Every built-in rule that matches ``event``, with ids derived from (event, rule, version).

    Evaluating the same event again yields records with the same ids, so a
    redelivered event cannot produce a second run or a second action.
    """
    outcomes = []
    for rule in _BY_EVENT.get(event.type, ()):
        spec = rule.check(event, config)
        if spec is not None:
            outcomes.append(_outcome(event, rule, spec))
    return outcomes


def _outcome(event: Envelope, rule: BuiltinRule, spec: ExceptionSpec) -> Outcome:
    action_id = deterministic_id("action", event.id, rule.id, rule.version)
    action = CreateException(
        **event.child(
            id=action_id,
            type="CreateException",
            source=f"storeops/rules/{rule.id}",
            time=event.time,
            subject=spec.entity_id,
            data=CreateExceptionData(rule=rule.ref, exception=spec, evidence=[event.id]),
        )
    )
    run = RuleRunCompleted(
        **event.child(
            id=deterministic_id("run", event.id, rule.id, rule.version),
            type="RuleRunCompleted",
            source="storeops/rules",
            time=event.time,
            subject=rule.id,
            data=RuleRunData(
                run_id=deterministic_id("run", event.id, rule.id, rule.version),
                rule=rule.ref,
                event_id=event.id,
                event_type=event.type,
                status="completed",
                action_ids=[action_id],
            ),
        )
    )
    return Outcome(action, run)
