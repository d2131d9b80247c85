"""Vocabulary shared by several contracts: severities, exception types, actors."""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainSerializer

from schemas.envelope import Contract


class Severity(StrEnum):
    CRITICAL = "Critical"
    HIGH = "High"
    MEDIUM = "Medium"
    LOW = "Low"

    @property
    def rank(self) -> int:
        """0 is the most urgent; the queue sorts on it."""
        return _SEVERITY_RANK[self]

    @property
    def higher(self) -> Severity | None:
        """The next more urgent severity (one escalation up); None for Critical, the most urgent."""
        return next((s for s in Severity if s.rank == self.rank - 1), None)


_SEVERITY_RANK = {Severity.CRITICAL: 0, Severity.HIGH: 1, Severity.MEDIUM: 2, Severity.LOW: 3}


class ExceptionType(StrEnum):
    """The queue's buckets, in store terms."""

    PRICING = "pricing"
    INVENTORY = "inventory"
    LISTING = "listing"
    ORDER = "order"
    PAYMENT_MISMATCH = "payment_mismatch"
    PAYMENT_CALLBACK_FAILURE = "payment_callback_failure"
    FRAUD_RISK = "fraud_risk"
    ADDRESS_PROBLEM = "address_problem"
    RETURN_OR_DAMAGE = "return_or_damage"
    VIP = "vip"


class EntityType(StrEnum):
    ORDER = "order"
    SKU = "sku"
    CUSTOMER = "customer"
    SHIPMENT = "shipment"
    PAYMENT = "payment"
    EXCEPTION = "exception"
    RULE = "rule"
    CREDENTIAL = "credential"
    RULE_RUN = "rule_run"
    TOKEN = "token"
    WEBHOOK_ENDPOINT = "webhook_endpoint"
    DELIVERY = "delivery"
    SUBSCRIPTION = "subscription"
    TEAM = "team"
    NOTIFICATION = "notification"
    PRINCIPAL = "principal"
    AUDIT_EXPORT = "audit_export"


class Actor(Contract):
    """Who made a change: a person (by name) or a part of the system.

    A change made over an API names the authenticated principal: its name, its role
    and the token that proved it (``token_id``: a storeops token's id, or the identity
    provider's token or subject id). A system actor names the part that acted (``rules``, ``sweep``,
    ``notifier``...) and, when it acted for a rule, the rule and its version."""

    kind: Literal["person", "system"]
    name: str = Field(min_length=1, max_length=200)
    role: Literal["viewer", "operator", "admin", "service"] | None = None
    token_id: str | None = Field(default=None, max_length=200)
    rule_id: str | None = Field(default=None, max_length=200)
    rule_version: int | None = Field(default=None, ge=1, le=2**31 - 1)


def _decode_b64(value: Any) -> Any:
    if isinstance(value, str):
        return base64.b64decode(value.encode("ascii"), validate=True)
    return value


# Raw bytes on the wire as standard base64 on one line.
B64Bytes = Annotated[
    bytes,
    BeforeValidator(_decode_b64),
    PlainSerializer(lambda v: base64.b64encode(v).decode("ascii"), return_type=str, when_used="json"),
]
