"""A steady, realistic stream of store events, for ``storeops up --demo`` and for tests.

Most orders are everyday baskets; a few are large enough to need a person.
Stock runs down with sales and is restocked; prices move now and then, once
in a while below the margin floor. Payments capture the order's total, now and
then a different amount; a few orders are refunded or ship late. Each seed
rule finds something to do.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

CATALOGUE: dict[str, Decimal] = {
    "CAM-X100": Decimal("1249.00"), "LENS-50MM": Decimal("329.00"), "TRIPOD-PRO": Decimal("189.90"),
    "BAG-ROLLTOP": Decimal("79.00"), "SD-128GB": Decimal("24.99"), "BATT-NP400": Decimal("59.00"),
    "STRAP-LEATHER": Decimal("34.50"), "FILTER-ND8": Decimal("45.00"), "FLASH-TT600": Decimal("149.00"),
    "DRONE-MINI4": Decimal("799.00"),
}

LARGE = frozenset({"CAM-X100", "DRONE-MINI4"})
EVERYDAY = sorted(set(CATALOGUE) - LARGE)


@dataclass
class DemoStore:
    """Generates events with a store's proportions; seeded, so runs repeat."""

    seed: int = 7
    rng: random.Random = field(init=False)
    stock: dict[str, int] = field(init=False)
    prices: dict[str, Decimal] = field(init=False)
    order_no: int = 10000

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.stock = {sku: self.rng.randint(8, 40) for sku in CATALOGUE}
        self.prices = dict(CATALOGUE)
        self.totals: dict[str, Decimal] = {}  # order id -> total, for payments, refunds and delays

    def next(self) -> tuple[str, dict[str, Any]]:
        """(kind, event) where kind is the ingest path segment."""
        roll = self.rng.random()
        if roll < 0.49 or not self.totals:
            return "orders", self.order()
        if roll < 0.52:
            return "orders", self.refund()
        if roll < 0.55:
            return "orders", self.delay()
        if roll < 0.75:
            return "stock", self.stock_change()
        if roll < 0.90:
            return "payments", self.payment()
        return "prices", self.price_change()

    def order(self, large: bool | None = None) -> dict[str, Any]:
        self.order_no += 1
        large = self.rng.random() < 0.08 if large is None else large
        skus = sorted(LARGE) if large else self.rng.sample(EVERYDAY, self.rng.randint(1, 3))
        lines = [{"sku": s, "quantity": self.rng.randint(1, 2), "unit_price": str(self.prices[s])} for s in skus]
        total = sum(Decimal(line["unit_price"]) * line["quantity"] for line in lines)
        for line in lines:
            self.stock[line["sku"]] = max(0, self.stock[line["sku"]] - line["quantity"])
        self.totals[f"ord-{self.order_no}"] = total
        return _event("OrderPlaced", "demo-shop/checkout", {
            "order_id": f"ord-{self.order_no}", "customer_id": f"cus-{self.rng.randint(1000, 9999)}",
            "total": str(total), "currency": "EUR", "lines": lines, "channel": self.rng.choice(["web", "app", "pos"]),
        })

    def stock_change(self, sku: str | None = None) -> dict[str, Any]:
        sku = sku or self.rng.choice(sorted(CATALOGUE))
        if self.stock[sku] < 3 and self.rng.random() < 0.5:
            self.stock[sku] += self.rng.randint(10, 30)  # restock delivery
        return _event("StockChanged", "demo-shop/wms", {"sku": sku, "location": "main", "on_hand": self.stock[sku], "reorder_point": 5})

    def placed(self) -> tuple[str, Decimal]:
        order_id = self.rng.choice(sorted(self.totals))
        return order_id, self.totals[order_id]

    def payment(self) -> dict[str, Any]:
        order_id, total = self.placed()
        amount = total
        if self.rng.random() < 0.03:  # the gateway captured something else
            amount = max(Decimal("0.00"), total - Decimal(self.rng.choice(["0.01", "10.00", "49.90"])))
        data = {"order_id": order_id, "payment_id": f"pay-{uuid.UUID(int=self.rng.getrandbits(128)).hex[:10]}",
                "amount": str(amount), "expected_amount": str(total), "currency": "EUR",
                "gateway": self.rng.choice(["stripe", "adyen"])}
        if self.rng.random() < 0.1:
            return _event("PaymentFailed", "demo-shop/psp", {**data, "reason": "card_declined"})
        return _event("PaymentCaptured", "demo-shop/psp", data)

    def refund(self) -> dict[str, Any]:
        order_id, total = self.placed()
        amount = total if self.rng.random() < 0.5 else (total / 2).quantize(Decimal("0.01"))
        reason = self.rng.choice(["arrived damaged", "wrong size", "changed mind", "not as described"])
        return _event("RefundRequested", "demo-shop/returns",
                      {"order_id": order_id, "amount": str(amount), "currency": "EUR", "reason": reason})

    def delay(self) -> dict[str, Any]:
        order_id, _ = self.placed()
        now = datetime.now(UTC).replace(microsecond=0)
        return _event("FulfillmentDelayed", "demo-shop/wms", {
            "order_id": order_id, "promised_by": (now + timedelta(days=1)).isoformat(),
            "expected_by": (now + timedelta(days=self.rng.randint(2, 5))).isoformat()})

    def price_change(self) -> dict[str, Any]:
        sku = self.rng.choice(sorted(CATALOGUE))
        old = self.prices[sku]
        # now and then a markdown too deep: under cost plus 10%
        factor = "0.75" if self.rng.random() < 0.05 else self.rng.choice(["0.9", "0.95", "1.05"])
        new = (old * Decimal(factor)).quantize(Decimal("0.01"))
        self.prices[sku] = new
        cost = (old * Decimal("0.7")).quantize(Decimal("0.01"))
        return _event("PriceChanged", "demo-shop/catalog", {"sku": sku, "old_price": str(old), "new_price": str(new),
                                                             "currency": "EUR", "cost": str(cost)})


def _event(type_: str, source: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "type": type_, "source": source,
            "time": (datetime.now(UTC) - timedelta(milliseconds=5)).isoformat(), "data": data}
