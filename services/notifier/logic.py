"""What to tell whom about an exception change, and the words of every occurrence. Pure: no I/O, no clock."""

from __future__ import annotations

import uuid
from typing import Any

from schemas.envelope import Envelope, deterministic_id
from schemas.exceptions import ExceptionChangeRecord
from schemas.notifications import Channel, NotificationCreated, NotificationData
from services.notifier.events import Occurrence

# Kinds the default recipient (and the assignee, if any) hears about. "assigned"
# goes to the new assignee only; the rest (updated, status_changed, snoozed,
# resolved) are left to the audit trail.
BROADCAST = frozenset({"created", "escalated", "reopened", "woke"})
TITLE_LIMIT = 400  # the feed's title column


def recipients(change: ExceptionChangeRecord, default_recipient: str) -> list[str]:
    """Who hears about ``change``, in a fixed order; empty when nobody needs to."""
    kind, assignee = change.data.kind, change.data.after.assignee
    if kind == "assigned":
        return [assignee] if assignee else []
    if kind in BROADCAST:
        return [default_recipient] + ([assignee] if assignee and assignee != default_recipient else [])
    return []


def headline(change: ExceptionChangeRecord) -> tuple[str, str]:
    """Title and body saying what happened."""
    data = change.data
    state = data.after
    where = f"{state.type.value} exception on {state.entity_type.value} {state.entity_id}"
    match data.kind:
        case "created":
            what, body = "", f"New {where}."
        case "escalated":
            was = f" (was {data.before.severity.value})" if data.before and data.before.severity != state.severity else ""
            what, body = "Escalated: ", f"Escalated to {state.severity.value}{was}: {where}. Cause: {data.cause}."
        case "reopened":
            flap = f" (flap {state.flap_count})" if state.flap_count else ""
            by = f" by {data.actor.name}" if data.actor.kind == "person" else ""
            what, body = f"Reopened{flap}: ", f"Reopened{by}: {where}. Cause: {data.cause}."
        case "woke":
            what, body = "Back from snooze: ", f"Snooze ended for {where}. Cause: {data.cause}."
        case "assigned":
            what, body = "Assigned to you: ", f"Assigned to {state.assignee} by {data.actor.name}: {where}."
        case kind:
            what, body = f"{kind}: ", f"{kind} {where}. Cause: {data.cause}."
    return f"[{state.severity.value}] {what}{state.title}"[:TITLE_LIMIT], body


def in_app_notification(change: ExceptionChangeRecord, recipient: str) -> NotificationCreated:
    """The in-app notification for one change; keyed by (change, channel, recipient)."""
    channel: Channel = "in_app"
    state = change.data.after
    notification_id = deterministic_id("notification", change.id, channel, recipient)
    title, body = headline(change)
    return NotificationCreated(
        **change.child(
            id=notification_id,
            type="NotificationCreated",
            source="storeops/notifier",
            time=change.time,
            subject=recipient,
            data=NotificationData(
                notification_id=notification_id,
                recipient=recipient,
                channel=channel,
                title=title,
                body=body,
                severity=state.severity,
                exception_id=state.id,
                created_at=change.time,
            ),
        )
    )


def notifications_for(change: ExceptionChangeRecord, default_recipient: str) -> list[NotificationCreated]:
    """Every in-app notification one change calls for (none for most kinds)."""
    return [in_app_notification(change, r) for r in recipients(change, default_recipient)]


# --- any occurrence (events.classify) --------------------------------------------------------


def occurrence_text(record: Envelope, occurrence: Occurrence) -> tuple[str, str]:
    """Title and body for an occurrence; an exception change reads as ``headline`` says."""
    if isinstance(record, ExceptionChangeRecord):
        return headline(record)
    data: Any = getattr(record, "data", None)  # the record type goes with the occurrence type
    match occurrence.type:
        case "rule_run.failed":
            title, body = f"Rule run failed: {data.rule.rule_id}", f"Run {data.run_id} of {data.rule.rule_id} " \
                f"on {data.subject} failed: {data.reason or 'no reason given'}."
        case "violation.detected":
            title, body = f"Rule matched: {data.rule.rule_id}", f"{data.rule.rule_id} matched {data.event_type} {data.subject}."
        case "order.received":
            title, body = f"Order received: {data.order_id}", f"Order {data.order_id}: {data.total} {data.currency}."
        case "price.changed":
            title, body = f"Price changed: {data.sku}", f"{data.sku}: {data.old_price} → {data.new_price} {data.currency}."
        case "stock.low":
            title, body = f"Stock low: {data.sku}", f"{data.sku} at {data.location}: {data.on_hand} on hand."
        case kind:
            title, body = kind, f"{kind} ({occurrence.entity or record.id})."
    return title[:TITLE_LIMIT], body


def notification_for(record: Envelope, occurrence: Occurrence, recipient: str) -> NotificationCreated:
    """The in-app notification of one occurrence for one feed; keyed by (record, channel, recipient),
    the key an exception change's notification always had."""
    if isinstance(record, ExceptionChangeRecord):
        return in_app_notification(record, recipient)
    channel: Channel = "in_app"
    notification_id = deterministic_id("notification", record.id, channel, recipient)
    title, body = occurrence_text(record, occurrence)
    return NotificationCreated(**record.child(
        id=notification_id, type="NotificationCreated", source="storeops/notifier", time=record.time, subject=recipient,
        data=NotificationData(notification_id=notification_id, recipient=recipient, channel=channel, title=title,
                              body=body, severity=occurrence.severity, created_at=record.time),
    ))


def email_id(record: Envelope, occurrence: Occurrence, address: str) -> uuid.UUID:
    """The id an e-mail of one occurrence to one address is kept under (its idempotency key)."""
    return deterministic_id("notification", record.id, occurrence.type, "email", address)
