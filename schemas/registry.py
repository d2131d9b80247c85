"""The topic registry: name, key, partitions, cleanup policy and value model.

This is the one place topic names live. The broker launcher creates these
topics; services look them up here; JSON Schemas are exported from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import TypeAdapter

from schemas.actions import Action, Command, RuleRun
from schemas.audit import AuditEvent
from schemas.deadletter import DeadLetterEvent
from schemas.envelope import Envelope
from schemas.events import OrderEvent, PaymentEvent, PriceEvent, StockEvent
from schemas.exceptions import ExceptionEvent
from schemas.notifications import NotificationEvent


@dataclass(frozen=True)
class Topic:
    """One topic's contract. Records are keyed by ``Envelope.subject``."""

    name: str
    key: str
    partitions: int
    value: Any
    cleanup_policy: Literal["delete", "compact"] = "delete"
    description: str = ""
    config: dict[str, str] = field(default_factory=dict)

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.value)

    @property
    def short_name(self) -> str:
        """``storeops.events.orders.v1`` → ``events.orders``."""
        return self.name.removeprefix("storeops.").rsplit(".v", 1)[0]

    def decode(self, value: bytes) -> Envelope:
        """Parse and validate one record's value against its contract; raises pydantic.ValidationError."""
        return self.adapter.validate_json(value)

    @staticmethod
    def decode_envelope(value: bytes) -> Envelope:
        """Parse the envelope only (``data`` left as JSON): about a third of ``decode``'s cost."""
        return _ENVELOPE.validate_json(value)

    @cached_property
    def record_types(self) -> tuple[type[Envelope], ...]:
        """The envelope classes this topic carries (the members of its value union)."""
        union = get_args(self.value)[0] if get_origin(self.value) is Annotated else self.value
        return get_args(union) or (union,)

    def encode(self, record: Envelope) -> tuple[bytes, bytes]:
        """The (key, value) bytes for producing ``record`` on this topic.

        ``record`` is a validated model already; a class check refuses a record of
        another topic's type without paying for a second validation.
        """
        if type(record) not in self.record_types:
            raise TypeError(f"{type(record).__name__} does not belong on {self.name}")
        return record.subject.encode(), record.model_dump_json().encode()

    def json_schema(self) -> dict[str, Any]:
        schema = self.adapter.json_schema(mode="serialization")
        schema["$id"] = f"https://storeops.dev/schemas/{self.name}.json"
        schema["title"] = self.name
        schema["description"] = f"{self.description} Key: {self.key}."
        return schema


_ENVELOPE: TypeAdapter[Envelope] = TypeAdapter(Envelope)

ORDERS = Topic("storeops.events.orders.v1", "order id", 6, OrderEvent, description="Order events.")
PRICES = Topic("storeops.events.prices.v1", "sku", 6, PriceEvent, description="Price events.")
STOCK = Topic("storeops.events.stock.v1", "sku", 6, StockEvent, description="Stock level events.")
PAYMENTS = Topic("storeops.events.payments.v1", "order id", 6, PaymentEvent, description="Payment events.")
ACTIONS = Topic("storeops.actions.v1", "entity id", 6, Action, description="Actions emitted by rules.")
COMMANDS = Topic(
    "storeops.commands.v1", "entity id", 3, Command, description="Price and stock commands for store connectors."
)
RULE_RUNS = Topic("storeops.rule-runs.v1", "rule id", 3, RuleRun, description="Every matching rule evaluation.")
EXCEPTIONS = Topic("storeops.exceptions.v1", "exception id", 6, ExceptionEvent, description="Exception queue changes.")
NOTIFICATIONS = Topic(
    "storeops.notifications.v1", "recipient", 3, NotificationEvent, description="Notifications stored or sent."
)
AUDIT = Topic("storeops.audit.v1", "entity id", 3, AuditEvent, description="Manual changes made through any API.")
DEADLETTER = Topic(
    "storeops.deadletter.v1", "original key", 1, DeadLetterEvent, description="Records a consumer could not process."
)

EVENT_TOPICS: tuple[Topic, ...] = (ORDERS, PRICES, STOCK, PAYMENTS)
REGISTRY: tuple[Topic, ...] = (
    *EVENT_TOPICS,
    ACTIONS,
    COMMANDS,
    RULE_RUNS,
    EXCEPTIONS,
    NOTIFICATIONS,
    AUDIT,
    DEADLETTER,
)
_BY_NAME = {t.name: t for t in REGISTRY}


def topic_for(name: str) -> Topic:
    """The registered topic called ``name``; KeyError names the unknown topic."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}") from None
