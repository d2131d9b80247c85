"""The built-in rules (services/rules/logic.py): what matches, and what a match emits."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.actions import CallbackCapture, CreateException, HealCondition, RuleRunCompleted
from schemas.common import EntityType, ExceptionType, Severity
from schemas.export import EXAMPLES_DIR
from schemas.registry import ACTIONS, ORDERS, PAYMENTS, PRICES, RULE_RUNS, STOCK
from services.rules.logic import BUILTIN_RULES, evaluate, high_value_order, low_stock, payment_callback_failed
from services.rules.settings import RulesConfig

DEFAULT = RulesConfig()
ORDER_ID = uuid.UUID("11111111-1111-4111-8111-111111111111")
STOCK_ID = uuid.UUID("22222222-2222-4222-8222-222222222222")
CALLBACK_ID = uuid.UUID("55555555-5555-4555-8555-555555555555")
RAW_CALLBACK = '{"pspReference":"8535","eventCode":"AUTHORISATION","success":"true"}'


def order(total: str | Decimal = "1249.00", *, id: uuid.UUID = ORDER_ID, **envelope: Any):
    return ORDERS.adapter.validate_python({
        "id": str(id), "type": "OrderPlaced", "source": "test", "time": "2026-11-23T09:30:00Z",
        "data": {"order_id": "ord-1", "customer_id": "cus-1", "total": str(total), "currency": "EUR"},
        **envelope,
    })


def stock(on_hand: int, reorder_point: int | None = None, *, id: uuid.UUID = STOCK_ID):
    data: dict[str, Any] = {"sku": "LENS-50MM", "location": "berlin-1", "on_hand": on_hand}
    if reorder_point is not None:
        data["reorder_point"] = reorder_point
    return STOCK.adapter.validate_python(
        {"id": str(id), "type": "StockChanged", "source": "test", "time": "2026-11-23T09:30:00Z", "data": data})


def callback_failed(order_id: str = "ord-10048", gateway: str = "adyen", *, id: uuid.UUID = CALLBACK_ID):
    return PAYMENTS.adapter.validate_python({
        "id": str(id), "type": "PaymentCallbackFailed", "source": "test", "time": "2026-11-23T09:30:00Z",
        "data": {"order_id": order_id, "gateway": gateway, "error": "signature mismatch", "raw_callback": RAW_CALLBACK},
    })


# --- high-value order -------------------------------------------------------


@pytest.mark.parametrize(("total", "matches"), [("999.99", False), ("1000", True), ("1000.00", True), ("1000.01", True), ("0", False)])
def test_high_value_order_matches_at_or_above_default_threshold(total: str, matches: bool):
    assert (high_value_order(order(total), DEFAULT) is not None) is matches


def test_high_value_order_respects_configured_threshold():
    config = RulesConfig(high_value_threshold=Decimal("250"))
    assert high_value_order(order("250"), config) is not None
    assert high_value_order(order("249.9999"), config) is None
    assert high_value_order(order("999"), config) is not None
    assert high_value_order(order("999"), DEFAULT) is None


def test_high_value_order_spec():
    spec = high_value_order(order("1249.00"), DEFAULT)
    assert spec is not None
    assert spec.type is ExceptionType.VIP
    assert spec.severity is Severity.HIGH
    assert spec.entity_type is EntityType.ORDER
    assert spec.entity_id == "ord-1"
    assert spec.impact == Decimal("1249.00")
    assert spec.currency == "EUR"
    assert "ord-1" in spec.title and "1249.00" in spec.title


@settings(max_examples=300, deadline=None, database=None)
@given(
    total=st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False),
    threshold=st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False),
)
def test_high_value_order_matches_iff_total_reaches_threshold(total: Decimal, threshold: Decimal):
    config = RulesConfig(high_value_threshold=threshold)
    assert (high_value_order(order(total), config) is not None) is (total >= threshold)


def test_threshold_cannot_be_negative():
    with pytest.raises(ValueError):
        RulesConfig(high_value_threshold=Decimal("-1"))


# --- low stock --------------------------------------------------------------


@pytest.mark.parametrize(("on_hand", "reorder_point", "severity"), [
    (9, 10, Severity.MEDIUM),
    (1, 10, Severity.MEDIUM),
    (0, 10, Severity.HIGH),
    (10, 10, None),
    (11, 10, None),
    (4, None, Severity.MEDIUM),   # default threshold 5
    (0, None, Severity.HIGH),
    (5, None, None),
    (6, None, None),
    (2, 1, None),                 # reorder point wins over the default, both ways
    (7, 8, Severity.MEDIUM),
])
def test_low_stock(on_hand: int, reorder_point: int | None, severity: Severity | None):
    spec = low_stock(stock(on_hand, reorder_point), DEFAULT)
    assert (spec.severity if spec else None) == severity


def test_low_stock_uses_configured_default_threshold():
    config = RulesConfig(low_stock_threshold=20)
    assert low_stock(stock(19), config) is not None
    assert low_stock(stock(20), config) is None
    assert low_stock(stock(19, reorder_point=3), config) is None


def test_low_stock_spec():
    spec = low_stock(stock(3, 10), DEFAULT)
    assert spec is not None
    assert spec.type is ExceptionType.INVENTORY
    assert spec.entity_type is EntityType.SKU
    assert spec.entity_id == "LENS-50MM"
    assert spec.impact is None and spec.currency is None
    assert "LENS-50MM" in spec.title and "berlin-1" in spec.title and "threshold 10" in spec.title


@pytest.mark.parametrize(("on_hand", "reorder_point", "config", "threshold"), [
    (3, 10, DEFAULT, 10),                                 # the sku's reorder point
    (0, None, DEFAULT, 5),                                # the default threshold
    (19, None, RulesConfig(low_stock_threshold=20), 20),  # a configured default threshold
])
def test_low_stock_heals_when_stock_reaches_the_same_threshold(on_hand: int, reorder_point: int | None,
                                                                config: RulesConfig, threshold: int):
    spec = low_stock(stock(on_hand, reorder_point), config)
    assert spec is not None
    assert spec.heal == HealCondition(event_type="StockChanged", field="on_hand", at_least=Decimal(threshold))
    assert spec.callback is None
    # the threshold that raised it is the one that heals it: on_hand at the threshold raises nothing
    assert low_stock(stock(threshold, reorder_point), config) is None
    assert low_stock(stock(threshold - 1, reorder_point), config) is not None


def test_low_stock_title_fits_even_with_long_keys():
    spec = low_stock(STOCK.adapter.validate_python({"type": "StockChanged", "data": {
        "sku": "S" * 200, "location": "L" * 100, "on_hand": 0}}), DEFAULT)
    assert spec is not None and len(spec.title) <= 300


# --- payment callback failed ------------------------------------------------


def test_payment_callback_failed_spec():
    spec = payment_callback_failed(callback_failed(), DEFAULT)
    assert spec is not None
    assert spec.type is ExceptionType.PAYMENT_CALLBACK_FAILURE
    assert spec.severity is Severity.HIGH
    assert spec.entity_type is EntityType.ORDER
    assert spec.entity_id == "ord-10048"
    assert spec.impact is None and spec.currency is None
    assert "adyen" in spec.title and "ord-10048" in spec.title
    assert spec.callback == CallbackCapture(gateway="adyen", error="signature mismatch", raw_callback=RAW_CALLBACK)
    assert spec.heal == HealCondition(event_type="PaymentCaptured")


def test_payment_callback_failed_keeps_the_callback_verbatim():
    event = PAYMENTS.decode((EXAMPLES_DIR / "PaymentCallbackFailed.json").read_bytes())
    spec = payment_callback_failed(event, DEFAULT)
    assert spec is not None and spec.callback is not None
    assert spec.callback.raw_callback == event.data.raw_callback
    assert spec.callback.gateway == event.data.gateway
    assert spec.callback.error == event.data.error


def test_payment_callback_failed_title_fits_even_with_long_keys():
    spec = payment_callback_failed(callback_failed("o" * 200, "g" * 100), DEFAULT)
    assert spec is not None and len(spec.title) <= 300


def test_payment_callback_failed_is_a_live_v1_builtin_on_its_event():
    [rule] = [r for r in BUILTIN_RULES if r.id == "payment-callback-failed"]
    assert (rule.version, rule.event_type, rule.ref.mode) == (1, "PaymentCallbackFailed", "LIVE")


# --- evaluate ---------------------------------------------------------------


def test_builtin_rule_ids_are_unique():
    assert len({r.id for r in BUILTIN_RULES}) == len(BUILTIN_RULES)


def test_evaluate_ignores_non_matching_events():
    assert evaluate(order("10"), DEFAULT) == []
    assert evaluate(stock(50), DEFAULT) == []


@pytest.mark.parametrize(("topic", "name"), [(PRICES, "PriceChanged"), (PAYMENTS, "PaymentCaptured"), (ORDERS, "OrderPaid")])
def test_evaluate_ignores_event_types_without_rules(topic, name: str):
    event = topic.decode((EXAMPLES_DIR / f"{name}.json").read_bytes())
    assert evaluate(event, RulesConfig(high_value_threshold=Decimal("0"), low_stock_threshold=10**6)) == []


def test_evaluate_high_value_order_outcome():
    event = order("1249.00")
    [outcome] = evaluate(event, DEFAULT)
    action, run = outcome.action, outcome.run
    assert isinstance(action, CreateException) and isinstance(run, RuleRunCompleted)
    assert action.subject == "ord-1"
    assert action.source == "storeops/rules/high-value-order"
    assert action.time == event.time
    assert action.causation_id == event.id
    assert action.correlation_id == event.id
    assert action.data.evidence == [event.id]
    assert action.data.rule.rule_id == "high-value-order"
    assert action.data.rule.rule_version == 1
    assert action.data.rule.mode == "LIVE"
    assert action.data.exception.severity is Severity.HIGH


def test_evaluate_run_record():
    event = order("1249.00")
    [outcome] = evaluate(event, DEFAULT)
    run = outcome.run
    assert run.subject == "high-value-order"
    assert run.data.run_id == run.id
    assert run.data.event_id == event.id
    assert run.data.event_type == "OrderPlaced"
    assert run.data.status == "completed"
    assert run.data.action_ids == [outcome.action.id]
    assert run.data.rule == outcome.action.data.rule
    assert run.causation_id == event.id
    assert run.id != outcome.action.id


def test_evaluate_keeps_an_existing_correlation_id():
    root = uuid.UUID("33333333-3333-4333-8333-333333333333")
    [outcome] = evaluate(order(correlation_id=str(root)), DEFAULT)
    assert outcome.action.correlation_id == root
    assert outcome.run.correlation_id == root
    assert outcome.action.causation_id == ORDER_ID


def test_evaluate_low_stock_outcome():
    [outcome] = evaluate(stock(0, 10), DEFAULT)
    assert outcome.action.subject == "LENS-50MM"
    assert outcome.action.data.exception.severity is Severity.HIGH
    assert outcome.run.subject == "low-stock"


def test_evaluate_low_stock_action_carries_the_heal_condition():
    [outcome] = evaluate(stock(2, 10), DEFAULT)
    heal = outcome.action.data.exception.heal
    assert heal == HealCondition(event_type="StockChanged", field="on_hand", at_least=Decimal(10))
    assert ACTIONS.decode(ACTIONS.encode(outcome.action)[1]) == outcome.action


def test_evaluate_payment_callback_failed_outcome():
    event = callback_failed()
    [outcome] = evaluate(event, DEFAULT)
    action, run = outcome.action, outcome.run
    assert action.id == uuid.uuid5(uuid.NAMESPACE_URL, f"storeops:action/{CALLBACK_ID}/payment-callback-failed/1")
    assert action.subject == "ord-10048"
    assert action.source == "storeops/rules/payment-callback-failed"
    assert action.data.evidence == [event.id]
    assert action.data.rule.model_dump() == {"rule_id": "payment-callback-failed", "rule_version": 1, "mode": "LIVE"}
    assert action.data.exception.callback is not None
    assert action.data.exception.callback.raw_callback == RAW_CALLBACK
    assert run.subject == "payment-callback-failed"
    assert run.data.event_type == "PaymentCallbackFailed"
    assert run.data.action_ids == [action.id]
    assert ACTIONS.decode(ACTIONS.encode(action)[1]) == action
    assert RULE_RUNS.decode(RULE_RUNS.encode(run)[1]) == run
    assert [o.action.id for o in evaluate(callback_failed(), DEFAULT)] == [action.id]  # redelivered: same ids


def test_evaluate_is_deterministic():
    first = evaluate(order("5000"), DEFAULT)
    second = evaluate(order("5000"), DEFAULT)
    assert [o.action.id for o in first] == [o.action.id for o in second]
    assert [o.run.id for o in first] == [o.run.id for o in second]
    assert [ACTIONS.encode(o.action) for o in first] == [ACTIONS.encode(o.action) for o in second]
    assert [RULE_RUNS.encode(o.run) for o in first] == [RULE_RUNS.encode(o.run) for o in second]


def test_different_events_give_different_ids():
    [a] = evaluate(order("5000"), DEFAULT)
    [b] = evaluate(order("5000", id=uuid.UUID("44444444-4444-4444-8444-444444444444")), DEFAULT)
    assert a.action.id != b.action.id
    assert a.run.id != b.run.id


def test_outcomes_encode_on_their_topics():
    [outcome] = evaluate(order("5000"), DEFAULT)
    assert ACTIONS.encode(outcome.action)[0] == b"ord-1"
    assert RULE_RUNS.encode(outcome.run)[0] == b"high-value-order"
    assert ACTIONS.decode(ACTIONS.encode(outcome.action)[1]) == outcome.action
    assert RULE_RUNS.decode(RULE_RUNS.encode(outcome.run)[1]) == outcome.run
