"""Changes for the audit trail (one shape for every change), and the audit service's public record.

Every API that changes something writes an ``AuditEntryRecorded`` in the transaction of the change
(``storeops.outbox``), so it reaches ``storeops.audit.v1`` even if the process dies right after
answering. ``ManualChangeRecorded`` is the earlier shape, still read from the topic.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, Field, field_validator

from schemas.common import Actor, EntityType
from schemas.envelope import Contract, Envelope, Key, utcnow

# The fixed vocabulary of actions: "<what>.<what happened to it>". A change is named by one of these.
ACTIONS: frozenset[str] = frozenset({
    # rules (rules.lifecycle: created, edited, status, mode)
    "rule.created", "rule.edited", "rule.status", "rule.mode",
    # exceptions (their changes on storeops.exceptions.v1 carry the rest)
    "exception.created", "exception.assigned", "exception.status_changed", "exception.snoozed", "exception.resolved",
    "exception.edited", "exception.callback_replayed", "exception.callback_accepted",
    # the notifier
    "credential.created", "credential.replaced", "credential.deleted",
    "webhook.endpoint_created", "webhook.endpoint_changed", "webhook.endpoint_deleted", "webhook.secret_rotated",
    "webhook.endpoint_disabled", "webhook.recovered", "delivery.replayed",
    "subscription.created", "subscription.changed", "subscription.deleted",
    "team.member_added", "team.member_removed",
    "notification.seen", "notification.read", "notification.archived", "notification.read_all",
    # identity
    "token.created", "token.revoked",
    # the audit service
    "audit.exported",
})

# What the system did, as the audit service reads it off the topics (services.audit.entries): store
# events with their source as the actor, and the effects of rules (the rule and its version the actor),
# of the exception queue and of the notifier. With ACTIONS, the whole vocabulary of the trail.
AUTOMATED_ACTIONS: frozenset[str] = frozenset({
    "order.placed", "order.paid", "order.cancelled", "order.refund_requested", "order.fulfillment_delayed",
    "price.changed", "stock.changed",
    "payment.captured", "payment.failed", "payment.callback_failed", "payment.callback_replay_requested",
    "exception.requested", "price.command_emitted", "stock.command_emitted",
    "rule_run.pending", "rule_run.running", "rule_run.completed", "rule_run.failed", "rule_run.cancelled",
    "exception.updated", "exception.escalated", "exception.woke", "exception.reopened",
    "notification.created", "record.dead_lettered",
})


class EntityRef(Contract):
    """An entity an entry concerns: its type and id (``order`` / ``ord-1``)."""

    type: EntityType
    id: Key


class AuditEntryData(Contract):
    """One change: what was done (``action``), by whom, to which entities (the first is the one changed;
    the others are what it concerns, so a search by any of them finds it), the fields before and after
    (those that changed; None where the entity did not exist before or no longer does), and what led to
    it (``cause``: the request's or the record's id)."""

    action: str = Field(max_length=100)
    actor: Actor
    entities: list[EntityRef] = Field(min_length=1, max_length=20)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    cause: str | None = Field(default=None, max_length=200)

    @field_validator("action")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ACTIONS:
            raise ValueError(f"not one of the audit actions ({', '.join(sorted(ACTIONS))})")
        return value


class AuditEntryRecorded(Envelope):
    """Subject: the id of the entity changed (the first of ``entities``)."""

    type: Literal["AuditEntryRecorded"]
    data: AuditEntryData


def entry(*, source: str, action: str, actor: Actor, entities: Sequence[tuple[EntityType, str]],
          before: dict[str, Any] | None = None, after: dict[str, Any] | None = None, cause: str | None = None,
          at: datetime | None = None) -> AuditEntryRecorded:
    """The audit entry of one change (``source``: the service, e.g. ``storeops/rules``)."""
    refs = [EntityRef(type=t, id=i) for t, i in entities]
    return AuditEntryRecorded(type="AuditEntryRecorded", source=source, time=at or utcnow(), subject=refs[0].id,
                              data=AuditEntryData(action=action, actor=actor, entities=refs, before=before, after=after,
                                                  cause=cause))


class ManualChangeData(Contract):
    actor: Actor
    entity_type: EntityType
    entity_id: Key
    action: str = Field(min_length=1, max_length=100)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class ManualChangeRecorded(Envelope):
    """Subject: the entity id."""

    type: Literal["ManualChangeRecorded"]
    data: ManualChangeData


AuditEvent = Annotated[Union[AuditEntryRecorded, ManualChangeRecorded], Field(discriminator="type")]


class EntryView(Contract):
    """A kept record read as an audit entry (the shape of ``AuditEntryData`` for every record, from
    any topic): what was done, by whom, to which entities, what changed and why."""

    action: str = Field(description="From the trail's vocabulary (ACTIONS, AUTOMATED_ACTIONS)")
    actor: dict[str, Any] = Field(description="kind (person or system), name; role and token_id for a person, "
                                              "rule_id and rule_version for a rule")
    entities: list[dict[str, str]] = Field(description="type and id of each entity it concerns; the changed one first")
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    cause: str | None


class AuditRecord(Contract):
    """One record as the audit service stores and serves it, with its origin and its audit entry."""

    topic: str
    partition: int
    offset: int
    key: str | None
    record_id: uuid.UUID
    type: str
    subject: str
    time: AwareDatetime
    recorded_at: AwareDatetime
    payload: dict[str, Any]
    entry: EntryView
    conflict: bool = Field(default=False, description="Kept again: it came back with its id and other content")
