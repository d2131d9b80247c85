"""Realistic store events with a controlled share that raises an exception.

Every event is an order (300–800 bytes as JSON) or a stock change; exactly
``every``-th event raises an exception through a built-in rule (a high-value
order), so the expected exceptions and notifications are known in advance.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storeops_cli.demo import CATALOGUE, EVERYDAY

HIGH_TOTAL = "2500.00"  # above the default 1000 threshold


@dataclass
class Mix:
    """``exception_share`` of events raise an exception (0.1 = one in ten)."""

    exception_share: float = 0.1
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.exception_share <= 1:
            raise ValueError("exception_share must be between 0 and 1")
        self.rng = random.Random(self.seed)
        self._every = round(1 / self.exception_share) if self.exception_share else 0

    def raises(self, n: int) -> bool:
        return bool(self._every) and n % self._every == 0

    def event(self, n: int) -> tuple[str, dict[str, Any]]:
        """(ingest kind, event) for the n-th event of a run."""
        if self.raises(n):
            return "orders", self.order(high=True)
        if n % 3 == 1:
            return "stock", self.stock()
        return "orders", self.order(high=False)

    def order(self, high: bool) -> dict[str, Any]:
        skus = self.rng.sample(EVERYDAY, self.rng.randint(1, 3))
        lines = [{"sku": s, "quantity": 1, "unit_price": str(CATALOGUE[s])} for s in skus]
        total = HIGH_TOTAL if high else str(sum(CATALOGUE[s] for s in skus))
        return _event("OrderPlaced", {"order_id": f"ord-{uuid.uuid4().hex[:16]}", "customer_id": f"cus-{self.rng.randint(1, 99999)}",
                                      "total": total, "currency": "EUR", "lines": lines,
                                      "channel": self.rng.choice(["web", "app"]), "tags": ["bench"]})

    def stock(self) -> dict[str, Any]:
        return _event("StockChanged", {"sku": self.rng.choice(EVERYDAY) + f"-{self.rng.randint(1, 500)}",
                                       "location": "main", "on_hand": self.rng.randint(20, 200), "reorder_point": 10})


def _event(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "type": type_, "source": "bench", "time": datetime.now(UTC).isoformat(), "data": data}
