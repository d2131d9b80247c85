"""The rules engine without I/O: golden definitions (valid and invalid), the seed
rules, templates, the price guardrails and the run's step bookkeeping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.actions import AdjustPrice, CreateException, UpdateInventory
from schemas.events import EVENT_CLASSES
from schemas.notifications import NotifyRequest
from schemas.rules import RuleDefinition
from services.rules.compiler import compile_rule
from services.rules.conditions import MISSING
from services.rules.engine import PreviousValues, plan, price_refusal, run_id_of, simulate
from services.rules.errors import DefinitionError
from services.rules.registry import RateLimiter
from services.rules.templates import RenderError, compile_template

GOLDEN = Path(__file__).parent.parent / "golden" / "rules"
SEEDS = Path(__file__).parent.parent.parent / "services" / "rules" / "seeds"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CLASSES = {cls.__name__: cls for cls in EVENT_CLASSES}


def event_of(body: dict[str, Any]):
    return CLASSES[body["type"]].model_validate(body)


def compile_body(definition: dict[str, Any], rule_id: str = "golden", mode: str = "DRY_RUN"):
    try:
        parsed = RuleDefinition.model_validate(definition)
    except ValidationError as exc:
        raise DefinitionError.of(exc, definition) from None
    return compile_rule(rule_id, 1, mode, parsed)


def previous(values: dict[str, Any]):
    def lookup(path: str) -> Any:
        return Decimal(str(values[path])) if path in values else MISSING
    return lookup


def subset(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and subset(actual[k], v) for k, v in expected.items())
    return actual == expected


@pytest.mark.parametrize("path", sorted((GOLDEN / "valid").glob("*.json")), ids=lambda p: p.stem)
def test_golden_valid_definitions_do_what_their_cases_say(path: Path) -> None:
    golden = json.loads(path.read_text())
    rule = compile_body(golden["definition"])
    for i, case in enumerate(golden["cases"]):
        run, reason = simulate(rule, event_of(case["event"]), previous(case.get("previous", {})), NOW)
        expect = case["expect"]
        if not expect["matched"]:
            assert run is None and expect["reason"] in reason, f"case {i}: {reason}"
            continue
        assert run is not None, f"case {i}: {reason}"
        assert run.status == expect["status"], f"case {i}: {run.reason}"
        assert {s.step_id: s.status for s in run.steps} == expect["steps"], f"case {i}"
        steps = {s.step_id: s for s in run.steps}
        for step_id, inputs in expect.get("inputs", {}).items():
            assert subset(steps[step_id].inputs, inputs), f"case {i} {step_id}: {steps[step_id].inputs}"
        for step_id, output in expect.get("outputs", {}).items():
            assert subset(steps[step_id].output, output), f"case {i} {step_id}: {steps[step_id].output}"
        for step_id, error in expect.get("errors", {}).items():
            assert error in (steps[step_id].error or ""), f"case {i} {step_id}: {steps[step_id].error}"
        assert all(s.simulated for s in run.steps if s.status in ("succeeded", "failed"))
        assert run.action_ids == []  # a dry run hands nothing on


@pytest.mark.parametrize("path", sorted((GOLDEN / "invalid").glob("*.json")), ids=lambda p: p.stem)
def test_golden_invalid_definitions_are_refused_with_a_pointer_to_each_part(path: Path) -> None:
    golden = json.loads(path.read_text())
    with pytest.raises(DefinitionError) as caught:
        compile_body(golden["definition"])
    got = {e["field"]: e["error"] for e in caught.value.errors}
    assert set(got) == {e["field"] for e in golden["errors"]}, got
    for expected in golden["errors"]:
        assert expected["contains"] in got[expected["field"]], got


_SHAPE = {"name": "x", "trigger": {"event_types": ["OrderPlaced"]},
          "actions": [{"type": "flag_for_review", "reason": "r"}]}


@pytest.mark.parametrize(("part", "field"), [
    ({"conditions": {"all": []}}, "conditions.all"),
    ({"conditions": {"any": [{"all": {}}]}}, "conditions.any[0].all"),
    ({"conditions": {"not": 7}}, "conditions.not"),
    ({"conditions": {"not": {"not": 7}}}, "conditions.not.not"),
    ({"conditions": {"not": {"not": {"path": "data.total", "op": "about"}}}}, "conditions.not.not.op"),
    ({"conditions": {"all": [{"path": "data total", "op": "eq"}]}}, "conditions.all[0].path"),
    ({"actions": [{"type": "teleport"}]}, "actions[0]"),
    ({"actions": [{"reason": "no type"}]}, "actions[0]"),
    ({"actions": [{"type": "flag_for_review", "reason": "r", "when": {"all": []}}]}, "actions[0].when.all"),
    ({"conditions": {"path": "data.total", "op": "gt", "value": {"path": "bad path"}}}, "conditions.value.path"),
    ({"conditions": {"path": "data.total", "op": "gt", "value": {"path": "data.total", "factor": 0}}},
     "conditions.value.factor"),
])
def test_a_definition_of_the_wrong_shape_names_the_part(part: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        compile_body({**_SHAPE, **part})
    assert [e["field"] for e in caught.value.errors] == [field], caught.value.errors


def test_a_definition_error_is_answered_as_invalid() -> None:
    from storeops.errors import Invalid
    from storeops.http import status_of

    with pytest.raises(DefinitionError) as caught:
        compile_body({**_SHAPE, "conditions": {"path": "data.totl", "op": "gt", "value": 1}})
    assert isinstance(caught.value, Invalid) and status_of(caught.value) == 422
    assert caught.value.body()["errors"][0]["field"] == "conditions.path"


# --- the seed rules -------------------------------------------------------------


def seeds() -> dict[str, Any]:
    out = {}
    for path in sorted(SEEDS.glob("*.json")):
        body = json.loads(path.read_text())
        assert body["id"] == path.stem
        out[body["id"]] = compile_body(body["definition"], body["id"])
    return out


def test_the_seed_rules_cover_the_common_store_workflows_and_compile() -> None:
    assert set(seeds()) == {"high-value-order", "refund-escalation", "delayed-fulfillment", "low-stock",
                            "price-below-margin", "payment-mismatch", "payment-callback-failed"}


SEED_CASES = [
    ("high-value-order", {"type": "OrderPlaced", "data": {"order_id": "o1", "customer_id": "c", "total": "1000.00",
                                                          "currency": "EUR"}}, {"raise": "succeeded"}),
    ("high-value-order", {"type": "OrderPlaced", "data": {"order_id": "o1", "customer_id": "c", "total": "10.00",
                                                          "currency": "EUR", "tags": ["vip"]}}, {"raise": "succeeded"}),
    ("high-value-order", {"type": "OrderPlaced", "data": {"order_id": "o1", "customer_id": "c", "total": "999.99",
                                                          "currency": "EUR"}}, None),
    ("refund-escalation", {"type": "RefundRequested", "data": {"order_id": "o1", "amount": "600", "currency": "EUR",
                                                               "reason": "broken"}}, {"raise": "succeeded", "tell_lead": "succeeded"}),
    ("refund-escalation", {"type": "RefundRequested", "data": {"order_id": "o1", "amount": "150", "currency": "EUR",
                                                               "reason": "broken"}}, {"raise": "succeeded", "tell_lead": "skipped"}),
    ("refund-escalation", {"type": "RefundRequested", "data": {"order_id": "o1", "amount": "99.99", "currency": "EUR",
                                                               "reason": "broken"}}, None),
    ("delayed-fulfillment", {"type": "FulfillmentDelayed", "data": {"order_id": "o1", "promised_by": "2026-11-24T00:00:00Z"}},
     {"raise": "succeeded"}),
    ("low-stock", {"type": "StockChanged", "data": {"sku": "s", "on_hand": 0}}, {"out_of_stock": "succeeded", "running_low": "skipped"}),
    ("low-stock", {"type": "StockChanged", "data": {"sku": "s", "on_hand": 4}}, {"out_of_stock": "skipped", "running_low": "succeeded"}),
    ("low-stock", {"type": "StockChanged", "data": {"sku": "s", "on_hand": 5}}, None),
    ("low-stock", {"type": "StockChanged", "data": {"sku": "s", "on_hand": 15, "reorder_point": 20}},
     {"out_of_stock": "skipped", "running_low": "succeeded"}),
    ("low-stock", {"type": "StockChanged", "data": {"sku": "s", "on_hand": 3, "reorder_point": 2}}, None),
    ("price-below-margin", {"type": "PriceChanged", "data": {"sku": "s", "new_price": "9", "cost": "10", "currency": "EUR"}},
     {"below_cost": "succeeded", "thin_margin": "skipped"}),
    ("price-below-margin", {"type": "PriceChanged", "data": {"sku": "s", "new_price": "10.5", "cost": "10", "currency": "EUR"}},
     {"below_cost": "skipped", "thin_margin": "succeeded"}),
    ("price-below-margin", {"type": "PriceChanged", "data": {"sku": "s", "new_price": "11", "cost": "10", "currency": "EUR"}}, None),
    ("price-below-margin", {"type": "PriceChanged", "data": {"sku": "s", "new_price": "1", "currency": "EUR"}}, None),
    ("payment-mismatch", {"type": "PaymentCaptured", "data": {"order_id": "o", "payment_id": "p", "amount": "90", "currency": "EUR",
                                                              "gateway": "g", "expected_amount": "100"}}, {"raise": "succeeded"}),
    ("payment-mismatch", {"type": "PaymentCaptured", "data": {"order_id": "o", "payment_id": "p", "amount": "100.00",
                                                              "currency": "EUR", "gateway": "g", "expected_amount": "100"}}, None),
    ("payment-mismatch", {"type": "PaymentCaptured", "data": {"order_id": "o", "payment_id": "p", "amount": "90", "currency": "EUR",
                                                              "gateway": "g"}}, None),
    ("payment-callback-failed", {"type": "PaymentCallbackFailed", "data": {"order_id": "o", "gateway": "g", "error": "e",
                                                                           "raw_callback": "{}"}}, {"raise": "succeeded"}),
]


@pytest.mark.parametrize(("rule_id", "event", "steps"), SEED_CASES)
def test_seed_rules(rule_id: str, event: dict[str, Any], steps: dict[str, str] | None) -> None:
    run, reason = simulate(seeds()[rule_id], event_of(event), previous({}), NOW)
    if steps is None:
        assert run is None, run
    else:
        assert run is not None, reason
        assert {s.step_id: s.status for s in run.steps} == steps
        assert run.status == "completed"


def test_low_stock_seed_heals_at_the_threshold_it_was_raised_under() -> None:
    rule = seeds()["low-stock"]
    event = event_of({"type": "StockChanged", "data": {"sku": "s", "on_hand": 3, "reorder_point": 8}})
    planned = plan(rule, event, previous({}), NOW, live=True)
    action = next(s.effect for s in planned.steps if s.effect is not None)
    assert isinstance(action, CreateException)
    assert action.data.exception.heal.model_dump() == {"event_type": "StockChanged", "field": "on_hand", "at_least": Decimal(8)}
    assert action.data.exception.title == "Low stock for s at default: 3 on hand, threshold 8"


# --- LIVE plans: what is handed on, with ids that survive a replay ----------------


def test_a_live_plan_has_pending_steps_with_effects_and_the_same_ids_every_time() -> None:
    golden = json.loads((GOLDEN / "valid" / "vip-order-with-notification.json").read_text())
    rule = compile_body(golden["definition"], mode="LIVE")
    event = event_of(golden["cases"][0]["event"])
    first = plan(rule, event, previous({}), NOW, live=True)
    again = plan(rule, event, previous({}), NOW, live=True)
    assert [s.record.status for s in first.steps] == ["pending"] * 4
    kinds = [type(s.effect) for s in first.steps]
    assert kinds == [CreateException, NotifyRequest, NotifyRequest, CreateException]
    ids = [getattr(s.effect, "id", None) or s.effect.request_id for s in first.steps]
    assert ids == [getattr(s.effect, "id", None) or s.effect.request_id for s in again.steps]
    assert len(set(ids)) == 4
    assert first.run.run_id == run_id_of(event.id, "golden", 1)
    action = first.steps[0].effect
    assert action.causation_id == event.id and action.depth == event.depth + 1
    assert first.steps[3].effect.data.exception.title == "Review: check VIP order ord-1"


def test_commands_carry_the_rule_and_the_run() -> None:
    golden = json.loads((GOLDEN / "valid" / "price-drop-adjusts-with-guardrails.json").read_text())
    rule = compile_body(golden["definition"], mode="LIVE")
    event = event_of(golden["cases"][0]["event"])
    planned = plan(rule, event, previous({"data.new_price": "120"}), NOW, live=True)
    command = planned.steps[0].effect
    assert isinstance(command, AdjustPrice)
    assert (command.subject, command.data.new_price, command.data.old_price) == ("S1", Decimal("97.00"), Decimal("100.00"))
    assert command.data.run_id == planned.run.run_id and command.data.rule.mode == "LIVE"
    assert planned.steps[0].guard.floor == Decimal("80.00")

    stock = compile_body(json.loads((GOLDEN / "valid" / "stock-crossed-below.json").read_text())["definition"], mode="LIVE")
    restock = plan(stock, event_of({"type": "StockChanged", "data": {"sku": "S9", "on_hand": 2}}), previous({"data.on_hand": 11}),
                   NOW, live=True)
    assert isinstance(restock.steps[0].effect, UpdateInventory) and restock.steps[0].effect.data.set_on_hand == 52


def test_previous_values_answer_only_from_older_events_and_keep_the_newest() -> None:
    rule = compile_body(json.loads((GOLDEN / "valid" / "stock-crossed-below.json").read_text())["definition"])
    def stock(on_hand: int, minute: int):
        return event_of({"type": "StockChanged", "time": f"2026-11-23T10:{minute:02d}:00Z",
                         "data": {"sku": "S", "on_hand": on_hand}})
    values = PreviousValues()
    first, late, older = stock(12, 10), stock(8, 20), stock(3, 5)
    assert values.lookup(first)("data.on_hand") is MISSING
    values.remember(first, rule.stateful_paths)
    assert values.lookup(late)("data.on_hand") == 12
    assert values.lookup(first)("data.on_hand") is MISSING  # not from itself or a later event
    values.remember(older, rule.stateful_paths)  # arrives late: the newer value stays
    assert values.values[("S", "data.on_hand")] == (12, first.time)
    assert values.changed == {("S", "data.on_hand"): (12, first.time, first.id)}
    assert run_id_of(late.id, "golden", 1) == simulate(rule, late, values.lookup(late), NOW)[0].run_id


# --- guardrails and templates -------------------------------------------------------


@pytest.mark.parametrize(("new", "floor", "pct", "reference", "refused"), [
    ("95", "90", "10", "100", None),
    ("89.99", "90", "10", "100", "below the floor"),
    ("89", "50", "10", "100", "11.00%, over the limit of 10%"),
    ("111", "50", "10", "100", "11.00%, over the limit of 10%"),
    ("50", "50", "10", None, None),  # no reference: only the floor applies
])
def test_price_refusal(new: str, floor: str, pct: str, reference: str | None, refused: str | None) -> None:
    reason = price_refusal(Decimal(new), Decimal(floor), Decimal(pct), Decimal(reference) if reference else None)
    assert (reason is None) if refused is None else (refused in reason)


def test_a_template_error_on_an_event_fails_the_step_and_cancels_the_rest() -> None:
    rule = compile_body({"name": "x", "trigger": {"event_types": ["OrderPlaced"]}, "actions": [
        {"id": "a", "type": "send_notification", "recipients": ["x"], "title": "{{ data.lines[5].sku }}"},
        {"id": "b", "type": "flag_for_review", "reason": "r"}]}, mode="LIVE")
    event = event_of({"type": "OrderPlaced", "data": {"order_id": "o", "customer_id": "c", "total": "1", "currency": "EUR"}})
    planned = plan(rule, event, previous({}), NOW, live=True)
    assert [s.record.status for s in planned.steps] == ["failed", "cancelled"]
    assert "template" in planned.steps[0].record.error and planned.steps[1].effect is None


def test_a_number_template_that_renders_no_number_fails_its_step() -> None:
    rule = compile_body({"name": "x", "trigger": {"event_types": ["StockChanged"]}, "actions": [
        {"type": "update_inventory", "set_on_hand": "{{ data.sku }}"}]})
    run, _ = simulate(rule, event_of({"type": "StockChanged", "data": {"sku": "abc", "on_hand": 1}}), previous({}), NOW)
    assert run.status == "failed" and "rendered 'abc', not a number" in run.steps[0].error


def test_an_invalid_webhook_url_after_rendering_fails_its_step_naming_the_field() -> None:
    rule = compile_body({"name": "x", "trigger": {"event_types": ["StockChanged"]}, "actions": [
        {"type": "call_webhook", "url": "{{ data.sku }}"}]})
    run, _ = simulate(rule, event_of({"type": "StockChanged", "data": {"sku": "not a url", "on_hand": 1}}), previous({}), NOW)
    assert run.status == "failed" and "invalid call_webhook: url" in run.steps[0].error


def test_templates_in_html_e_mail_escape_event_fields() -> None:
    html = compile_template("<p>{{ data.reason }}</p>", "body", html=True)
    assert html.render({"data": {"reason": "<script>x</script>"}}) == "<p>&lt;script&gt;x&lt;/script&gt;</p>"
    text = compile_template("{{ data.reason }}", "body")
    assert text.render({"data": {"reason": "<b>"}}) == "<b>"


def test_templates_are_sandboxed() -> None:
    template = compile_template("{{ data.__class__.__mro__ }}", "title")
    with pytest.raises(RenderError):
        template.render({"data": {}})


def test_a_template_may_only_use_the_names_it_is_given() -> None:
    with pytest.raises(DefinitionError) as caught:
        compile_template("{{ os.environ }}", "actions[0].title")
    assert caught.value.errors == [{"field": "actions[0].title",
                                    "error": "bad template: unknown name 'os'; a template may use data, event, now, rule, steps, subject"}]


def test_the_rate_limiter_is_a_sliding_window_per_rule() -> None:
    limiter = RateLimiter()
    assert [limiter.allow("a", 2, 10, t) for t in (0, 1, 2)] == [True, True, False]
    assert limiter.allow("b", 2, 10, 2)  # another rule has its own window
    assert limiter.allow("a", 2, 10, 10.5)  # the first run left the window
