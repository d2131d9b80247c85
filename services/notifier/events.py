"""What a record on a topic the notifier reads is, in the words subscriptions and webhook
endpoints use: ``exception.created``, ``rule_run.failed``... Pure: no I/O.

One vocabulary for both: a webhook endpoint names the types it receives (omitted or
empty: every type), a subscription the types a person hears about.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from schemas.actions import RuleRunRecorded
from schemas.events import OrderPlaced, PriceChanged, StockChanged
from schemas.exceptions import ExceptionChangeRecord

# exception.<change kind> for the kinds people act on; "assigned" is also "assigned to me"
# for the new assignee (a subscription's concern, not a type of its own).
EXCEPTION_TYPES = ("exception.created", "exception.escalated", "exception.reopened", "exception.woke",
                   "exception.assigned", "exception.resolved")
EVENT_TYPES: tuple[str, ...] = (
    *EXCEPTION_TYPES,
    "rule_run.failed",      # a rule run that failed
    "violation.detected",   # any rule run that matched (a rule found something)
    "order.received",       # OrderPlaced
    "price.changed",        # PriceChanged
    "stock.low",            # StockChanged at or under its reorder point
    "delivery.failed",      # a delivery of ours exhausted its retries, or its endpoint was disabled
)


@dataclass(frozen=True)
class Occurrence:
    """One thing that happened, as subscriptions and endpoints see it."""

    type: str                      # one of EVENT_TYPES
    id: uuid.UUID                  # the record's id: the idempotency key of everything it causes
    payload: dict[str, Any]        # what a webhook carries as ``data``
    severity: str | None = None    # an exception's severity
    exception_type: str | None = None
    entity: str | None = None      # "<entity type>:<id>", e.g. "order:ord-1"
    assignee: str | None = None


def classify(record: Any, low_stock_default: int = 5) -> list[Occurrence]:
    """The occurrences one decoded record stands for (none for most)."""
    if isinstance(record, ExceptionChangeRecord):
        data = record.data
        kind = f"exception.{data.kind}"
        if kind not in EXCEPTION_TYPES:
            return []
        state = data.after
        return [Occurrence(kind, record.id, data.model_dump(mode="json"), state.severity.value, state.type.value,
                           f"{state.entity_type.value}:{state.entity_id}", state.assignee)]
    if isinstance(record, RuleRunRecorded):
        run = record.data
        payload = run.model_dump(mode="json")
        found = [Occurrence("violation.detected", record.id, payload, entity=f"rule:{run.rule.rule_id}")]
        if run.status == "failed":
            found.append(Occurrence("rule_run.failed", record.id, payload, entity=f"rule:{run.rule.rule_id}"))
        return found
    if isinstance(record, OrderPlaced):
        return [Occurrence("order.received", record.id, record.model_dump(mode="json"), entity=f"order:{record.data.order_id}")]
    if isinstance(record, PriceChanged):
        return [Occurrence("price.changed", record.id, record.model_dump(mode="json"), entity=f"sku:{record.data.sku}")]
    if isinstance(record, StockChanged):
        point = record.data.reorder_point if record.data.reorder_point is not None else low_stock_default
        if record.data.on_hand <= point:
            return [Occurrence("stock.low", record.id, record.model_dump(mode="json"), entity=f"sku:{record.data.sku}")]
    return []
