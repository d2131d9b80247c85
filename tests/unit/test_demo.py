"""The demo event stream (storeops/demo.py): reproducible, valid, and store-like."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from schemas.rules import RuleDefinition
from services.ingest.api import TOPICS
from services.rules.compiler import compile_rule
from services.rules.conditions import MISSING
from services.rules.engine import simulate
from storeops_cli.demo import CATALOGUE, DemoStore

N = 2000
LARGE_ORDER_SKUS = {"CAM-X100", "DRONE-MINI4"}


def stream(seed: int, n: int = N) -> list[tuple[str, dict]]:
    store = DemoStore(seed)
    return [store.next() for _ in range(n)]


@pytest.fixture(scope="module")
def events() -> list[tuple[str, dict]]:
    return stream(7)


def orders(events: list[tuple[str, dict]]) -> list[dict]:
    return [e for _, e in events if e["type"] == "OrderPlaced"]


def test_same_seed_same_sequence():
    def shape(items):
        return [(kind, e["type"], e["source"], e["data"]) for kind, e in items]

    assert shape(stream(11, 300)) == shape(stream(11, 300))


def test_different_seed_different_sequence():
    def shape(items):
        return [(kind, e["type"], e["data"]) for kind, e in items]

    assert shape(stream(11, 50)) != shape(stream(12, 50))


def test_ids_are_unique_and_times_are_aware(events):
    assert len({e["id"] for _, e in events}) == len(events)
    assert all(datetime.fromisoformat(e["time"]).tzinfo is not None for _, e in events)


def test_every_event_validates_against_its_ingest_topic(events):
    for kind, event in events:
        record = TOPICS[kind].adapter.validate_python(event)
        assert record.type == event["type"]


def test_the_mix_has_every_kind(events):
    kinds = Counter(kind for kind, _ in events)
    assert set(kinds) == set(TOPICS)
    assert kinds["orders"] > kinds["stock"] > kinds["prices"] > 0


def test_the_mix_has_every_event_type_it_can_make(events):
    types = {e["type"] for _, e in events}
    assert types == {"OrderPlaced", "RefundRequested", "FulfillmentDelayed", "StockChanged", "PaymentCaptured",
                     "PaymentFailed", "PriceChanged"}


def test_some_orders_are_high_value(events):
    assert any(Decimal(o["data"]["total"]) >= 1000 for o in orders(events))


def test_order_total_is_the_sum_of_its_lines(events):
    for order in orders(events):
        lines = order["data"]["lines"]
        assert Decimal(order["data"]["total"]) == sum(Decimal(li["unit_price"]) * li["quantity"] for li in lines)


def test_order_numbers_increase(events):
    numbers = [int(o["data"]["order_id"].removeprefix("ord-")) for o in orders(events)]
    assert numbers == sorted(set(numbers))


def test_large_order_is_high_value():
    order = DemoStore(3).order(large=True)
    assert {li["sku"] for li in order["data"]["lines"]} == LARGE_ORDER_SKUS
    assert Decimal(order["data"]["total"]) >= 1000


def test_everyday_baskets_leave_out_the_large_order_skus():
    """BUG (reported): storeops/demo.py DemoStore.order picks everyday baskets from
    ``sorted(CATALOGUE)[2:]``, which drops BAG-ROLLTOP and BATT-NP400 (the first
    two names alphabetically) instead of the two expensive large-order skus, so
    CAM-X100 and DRONE-MINI4 land in everyday baskets."""
    store = DemoStore(5)
    skus = {li["sku"] for _ in range(300) for li in store.order(large=False)["data"]["lines"]}
    assert skus.isdisjoint(LARGE_ORDER_SKUS)
    assert skus == set(CATALOGUE) - LARGE_ORDER_SKUS


def test_high_value_orders_are_a_few(events):
    """"Most orders are everyday baskets; a few are large enough to need a person":
    about 8 % are large on purpose. Today it is about 35 % (the bug above)."""
    totals = [Decimal(o["data"]["total"]) for o in orders(events)]
    share = sum(t >= 1000 for t in totals) / len(totals)
    assert share < 0.15


def test_stock_never_goes_negative_and_uses_a_reorder_point(events):
    for kind, event in events:
        if kind == "stock":
            assert event["data"]["on_hand"] >= 0
            assert event["data"]["reorder_point"] == 5
            assert event["data"]["sku"] in CATALOGUE


def test_price_changes_chain_old_to_new(events):
    last: dict[str, str] = {}
    for _, event in events:
        if event["type"] == "PriceChanged":
            data = event["data"]
            assert data["old_price"] == last.get(data["sku"], str(CATALOGUE[data["sku"]]))
            assert data["new_price"] != data["old_price"]
            last[data["sku"]] = data["new_price"]


def test_payments_reference_placed_orders(events):
    placed = set()
    for _, event in events:
        if event["type"] == "OrderPlaced":
            placed.add(event["data"]["order_id"])
        elif event["type"] in ("PaymentCaptured", "PaymentFailed", "RefundRequested", "FulfillmentDelayed"):
            assert event["data"]["order_id"] in placed


def test_payments_expect_the_order_total_and_a_few_capture_something_else(events):
    totals = {e["data"]["order_id"]: e["data"]["total"] for _, e in events if e["type"] == "OrderPlaced"}
    payments = [e["data"] for _, e in events if e["type"] in ("PaymentCaptured", "PaymentFailed")]
    assert all(p["expected_amount"] == totals[p["order_id"]] for p in payments)
    mismatched = sum(p["amount"] != p["expected_amount"] for p in payments)
    assert 0 < mismatched < len(payments) * 0.1


def test_every_seed_rule_has_something_to_do(events):
    """Each seed rule, simulated over the demo stream, matches at least once (the demo shows them all)."""
    seeds = Path(__file__).parents[2] / "services" / "rules" / "seeds"
    rules = [compile_rule(b["id"], 1, "DRY_RUN", RuleDefinition.model_validate(b["definition"]))
             for b in (json.loads(p.read_text()) for p in sorted(seeds.glob("*.json")))]
    decoded = [TOPICS[kind].adapter.validate_python(event) for kind, event in events]
    matched = {r.id for r in rules for e in decoded if simulate(r, e, lambda _: MISSING, datetime.now(UTC))[0]}
    assert matched == {r.id for r in rules} - {"payment-callback-failed"}  # the demo's gateways never fail a callback
