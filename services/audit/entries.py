"""Every record the audit service keeps, read as one audit entry: action, actor, entities, before,
after, cause (``schemas.audit.AuditEntryData``'s shape), so the trail is searched and exported the
same way whether a person changed something through an API or the system did it.

An ``AuditEntryRecorded`` is one already. Every other record is described from its topic and type:
an exception's change by its kind, its actor and the fields it changed; a rule's run, its commands
and its actions with the rule (id and version) as the actor; a store event with its source; a
notification, a dead letter. Pure and cheap: it reads the parsed payload as a dict (the recorder
does not validate records against their contracts, which cost half its time), so a field that is
missing or of another type gives less, never an error: the record is kept whatever its shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from schemas.registry import (
    ACTIONS,
    AUDIT,
    COMMANDS,
    DEADLETTER,
    EXCEPTIONS,
    NOTIFICATIONS,
    ORDERS,
    PAYMENTS,
    PRICES,
    RULE_RUNS,
    STOCK,
)

MAX_ENTITIES = 20
_KEY = 200  # the longest entity id and actor name kept for search (schemas.envelope.Key)


@dataclass(frozen=True, slots=True)
class Entry:
    """One record as an audit entry. ``entities``: (type, id), the entity changed first."""

    action: str
    actor_kind: str  # "person" or "system"
    actor: str
    entities: list[tuple[str, str]] = field(default_factory=list)
    actor_detail: dict[str, Any] = field(default_factory=dict)  # role, token_id, rule_id, rule_version
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    cause: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The entry as the API and the exports give it."""
        return {"action": self.action,
                "actor": {"kind": self.actor_kind, "name": self.actor, **self.actor_detail},
                "entities": [{"type": t, "id": i} for t, i in self.entities],
                "before": self.before, "after": self.after, "cause": self.cause}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _text(value: Any) -> str | None:
    return value[:_KEY] if isinstance(value, str) and value else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _actor(value: Any, default: str) -> tuple[str, str, dict[str, Any]]:
    actor = _dict(value)
    kind = "person" if actor.get("kind") == "person" else "system"
    detail = {k: actor[k] for k in ("role", "token_id", "rule_id", "rule_version") if actor.get(k) is not None}
    return kind, _text(actor.get("name")) or default, detail


def _rule_actor(rule: Any) -> tuple[str, str, dict[str, Any]]:
    rule = _dict(rule)
    detail = {k: rule[k] for k in ("rule_id", "rule_version") if rule.get(k) is not None}
    return "system", "rules", detail


def _entities(*pairs: tuple[str, Any]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for kind, value in pairs:
        if (text := _text(value if not isinstance(value, int) else str(value))) and (kind, text) not in seen:
            seen.append((kind, text))
    return seen[:MAX_ENTITIES]


def _pick(data: dict[str, Any], *keys: str) -> dict[str, Any] | None:
    return {k: data[k] for k in keys if k in data} or None


def _changed(before: Any, after: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Only the fields that differ (all of ``after`` where there was no ``before``)."""
    before, after = (b if isinstance(b, dict) else None for b in (before, after))
    if before is None or after is None:
        return before, after
    keys = [k for k in {**before, **after} if before.get(k) != after.get(k)]
    return {k: before.get(k) for k in keys}, {k: after.get(k) for k in keys}


# The topic each kind of store event is about, and what its subject is.
_EVENT_ENTITY = {ORDERS.name: "order", PAYMENTS.name: "order", PRICES.name: "sku", STOCK.name: "sku"}
_EVENT_ACTION = {"OrderPlaced": "order.placed", "OrderPaid": "order.paid", "OrderCancelled": "order.cancelled",
                 "RefundRequested": "order.refund_requested", "FulfillmentDelayed": "order.fulfillment_delayed",
                 "PriceChanged": "price.changed", "StockChanged": "stock.changed",
                 "PaymentCaptured": "payment.captured", "PaymentFailed": "payment.failed",
                 "PaymentCallbackFailed": "payment.callback_failed",
                 "PaymentCallbackReplayRequested": "payment.callback_replay_requested"}
_COMMAND_ACTION = {"AdjustPrice": "price.command_emitted", "UpdateInventory": "stock.command_emitted"}
_RULE_ACTION = {"CreateException": "exception.requested"}


def _event_entity(event_type: Any) -> str:
    """What a store event of this type is about (a rule run names its event's type and subject)."""
    if isinstance(event_type, str):
        if event_type.startswith(("Order", "Payment", "Refund", "Fulfillment")):
            return "order"
        if event_type.startswith(("Price", "Stock")):
            return "sku"
    return "entity"


def describe(topic: str, record: dict[str, Any]) -> Entry:
    """``record`` (an envelope, parsed) read from ``topic`` as an audit entry; one that names no
    entity its fields give concerns its subject (its key)."""
    entry = _describe(topic, record)
    if not entry.entities and (subject := _text(record.get("subject"))):
        return replace(entry, entities=[("entity", subject)])
    return entry


def _describe(topic: str, record: dict[str, Any]) -> Entry:
    kind, subject, data = record.get("type"), _text(record.get("subject")) or "", _dict(record.get("data"))
    source = _text(record.get("source")) or "unknown"
    record_type = kind if isinstance(kind, str) else "unknown"
    if topic == AUDIT.name:
        return _audit(record_type, subject, data, source)
    if topic == EXCEPTIONS.name:
        change = _text(data.get("kind")) or _snake(record_type.removeprefix("Exception"))
        state = _dict(data.get("after"))
        actor_kind, actor, detail = _actor(data.get("actor"), "exceptions")
        was, now = _changed(data.get("before"), state)
        return Entry(f"exception.{change}", actor_kind, actor,
                     _entities(("exception", data.get("exception_id") or subject),
                               (str(state.get("entity_type") or "entity"), state.get("entity_id"))),
                     detail, was, now, _text(data.get("cause")))
    if topic == RULE_RUNS.name:
        rule = _dict(data.get("rule"))
        status = _text(data.get("status")) or "recorded"
        return Entry(f"rule_run.{status}", *_rule_actor(rule)[:2],
                     _entities(("rule_run", data.get("run_id")), ("rule", rule.get("rule_id")),
                               (_event_entity(data.get("event_type")), data.get("subject"))),
                     _rule_actor(rule)[2], None,
                     _pick(data, "status", "reason", "mode", "action_ids"),
                     _text(data.get("event_id")))
    if topic in (COMMANDS.name, ACTIONS.name):
        rule = _dict(data.get("rule"))
        action = _COMMAND_ACTION.get(record_type) or _RULE_ACTION.get(record_type) or f"rule.{_snake(record_type)}"
        spec = _dict(data.get("exception"))
        pairs = [("sku", data.get("sku")), (str(spec.get("entity_type") or "entity"), spec.get("entity_id")),
                 ("rule_run", data.get("run_id")), ("rule", rule.get("rule_id"))]
        if not any(v for _, v in pairs[:2]):
            pairs.insert(0, ("entity", subject))
        before = {"price": data["old_price"]} if "old_price" in data else None
        after = _pick(data, "new_price", "currency", "location", "set_on_hand") or _pick(spec, "type", "severity", "title")
        actor_kind, actor, detail = _rule_actor(rule)
        cause = _text(data.get("run_id")) or _text(record.get("causation_id"))
        return Entry(action, actor_kind, actor, _entities(*pairs), detail, before, after, cause)
    if topic == NOTIFICATIONS.name:
        return Entry(f"notification.{_snake(record_type.removeprefix('Notification'))}", "system", "notifier",
                     _entities(("notification", data.get("notification_id")), ("principal", data.get("recipient")),
                               ("exception", data.get("exception_id"))),
                     after=_pick(data, "channel", "severity", "title"),
                     cause=_text(record.get("causation_id")))
    if topic == DEADLETTER.name:
        origin = f"{data.get('topic')}:{data.get('partition')}:{data.get('offset')}"
        return Entry("record.dead_lettered", "system", _text(data.get("service")) or source,
                     _entities(("entity", subject)),
                     after=_pick(data, "stage", "error", "topic"), cause=origin)
    entity = _EVENT_ENTITY.get(topic, "entity")
    return Entry(_EVENT_ACTION.get(record_type, f"event.{_snake(record_type)}"), "system", source,
                 _entities((entity, subject), ("customer", data.get("customer_id"))),
                 cause=_text(record.get("causation_id")))


def _audit(record_type: str, subject: str, data: dict[str, Any], source: str) -> Entry:
    actor_kind, actor, detail = _actor(data.get("actor"), source)
    if record_type == "AuditEntryRecorded":
        refs = [e for e in data.get("entities") or [] if isinstance(e, dict)]
        pairs = [(str(e.get("type") or "entity"), e.get("id")) for e in refs] or [("entity", subject)]
    else:  # ManualChangeRecorded: one entity
        pairs = [(str(data.get("entity_type") or "entity"), data.get("entity_id") or subject)]
    before, after = data.get("before"), data.get("after")
    return Entry(_text(data.get("action")) or "unknown", actor_kind, actor, _entities(*pairs), detail,
                 before if isinstance(before, dict) else None, after if isinstance(after, dict) else None,
                 _text(data.get("cause")))
