"""Requests other services hand over: which to store, which were stored before, which
to refuse and why, and the in-app notifications one stands for. Pure: no I/O, no clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from schemas.envelope import deterministic_id
from schemas.notifications import (
    InAppMessage,
    NotificationCreated,
    NotificationData,
    NotifyRequest,
    NotifyResult,
    WebhookMessage,
)
from services.notifier.ledger import NewDelivery

# A stored request's delivery status. In-app messages are delivered once stored (the
# feed row is the delivery); e-mail and webhook wait in the delivery ledger
# (services.notifier.ledger), which sets delivered, or dead once its retries are exhausted.
StoredStatus = Literal["accepted", "delivered", "dead"]
WAITING: StoredStatus = "accepted"
DELIVERED: StoredStatus = "delivered"


@dataclass
class Intake:
    """One batch sorted: an answer per request, in order, and the new requests to store."""

    results: list[NotifyResult] = field(default_factory=list)
    to_store: list[NotifyRequest] = field(default_factory=list)

    def settle(self, inserted: set[uuid.UUID]) -> list[NotifyResult]:
        """The answers once stored: one a concurrent hand-over stored first is a duplicate too."""
        return [r.model_copy(update={"status": "duplicate"}) if r.status == "accepted" and r.request_id not in inserted
                else r for r in self.results]


def credentials_named(requests: Iterable[NotifyRequest]) -> set[str]:
    """The credential names the webhook requests refer to."""
    return {r.message.credential for r in requests if isinstance(r.message, WebhookMessage) and r.message.credential}


def refusal(request: NotifyRequest, credentials: set[str], unsafe: Mapping[uuid.UUID, str] | None = None) -> str | None:
    """Why ``request`` cannot be accepted, or None. ``unsafe``: the webhook requests whose URL
    may not be called (storeops.outbound), with the reason."""
    message = request.message
    if unsafe and request.request_id in unsafe:
        return f"message.url: {unsafe[request.request_id]}"
    if isinstance(message, WebhookMessage) and message.credential and message.credential not in credentials:
        return f"unknown credential {message.credential!r}"
    return None


def sort_requests(requests: Sequence[NotifyRequest], stored: set[uuid.UUID], credentials: set[str],
                  unsafe: Mapping[uuid.UUID, str] | None = None) -> Intake:
    """Answer each request: ``duplicate`` if its id is stored (or came earlier in the batch), else refused or accepted."""
    intake, taken = Intake(), set(stored)
    for request in requests:
        if request.request_id in taken:
            intake.results.append(NotifyResult(request_id=request.request_id, status="duplicate"))
        elif (error := refusal(request, credentials, unsafe)) is not None:
            intake.results.append(NotifyResult(request_id=request.request_id, status="refused", error=error))
        else:
            taken.add(request.request_id)
            intake.to_store.append(request)
            intake.results.append(NotifyResult(request_id=request.request_id, status="accepted"))
    return intake


def request_row(request: NotifyRequest, now: datetime) -> dict[str, Any]:
    """The ``notify_requests`` row for a new request: everything a later delivery needs."""
    in_app = request.message.channel == "in_app"
    rule = request.rule
    return {
        "request_id": request.request_id, "channel": request.message.channel,
        "status": DELIVERED if in_app else WAITING, "attempts": 1 if in_app else 0,
        "message": request.message.model_dump(mode="json"),
        "rule_id": rule.rule_id if rule else None, "rule_version": rule.rule_version if rule else None,
        "rule_mode": rule.mode if rule else None, "run_id": request.run_id, "step_id": request.step_id,
        "event_id": request.event_id, "created_at": now,
    }


def delivery_of(request: NotifyRequest, smtp_route: str) -> NewDelivery | None:
    """The delivery an accepted request stands for (None for in-app: the feed row is its delivery).

    Its payload is the message as handed over (an e-mail's ``to``, ``subject``, ``text``, ``html``; a
    webhook's ``method``, ``url``, ``headers``, ``body``, ``credential``) plus ``"kind": "request"`` and
    the ``request_id``;
    its key ``request:<request_id>``, so a request is delivered once however often it is handed over.
    E-mail is tracked per SMTP server (``smtp_route``), a webhook per host (``url:<host>``).
    """
    message = request.message
    if isinstance(message, InAppMessage):
        return None
    payload = {**message.model_dump(mode="json"), "kind": "request", "request_id": str(request.request_id)}
    key = f"request:{request.request_id}"
    if isinstance(message, WebhookMessage):
        return NewDelivery("webhook", key, f"url:{message.url.host}", payload)
    return NewDelivery("email", key, smtp_route, payload, ", ".join(message.to)[:320])


def in_app_notifications(
    request_id: uuid.UUID, message: InAppMessage, created_at: datetime, event_id: uuid.UUID | None
) -> list[NotificationCreated]:
    """One notification per recipient, keyed by (request, channel, recipient): rebuilt identically on a retry."""
    notes = []
    for recipient in dict.fromkeys(message.recipients):  # a recipient named twice hears it once
        notification_id = deterministic_id("notification", request_id, "in_app", recipient)
        notes.append(NotificationCreated(
            id=notification_id, type="NotificationCreated", source="storeops/notifier", time=created_at,
            subject=recipient, causation_id=request_id, correlation_id=event_id or request_id,
            data=NotificationData(
                notification_id=notification_id, recipient=recipient, channel="in_app", title=message.title,
                body=message.body, severity=message.severity, created_at=created_at,
            ),
        ))
    return notes
