"""Thin: records in (exception changes, rule runs, store events), occurrences classified,
routed by the subscriptions, stored and sent in one transaction, in-app ones announced."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from schemas.envelope import Envelope
from schemas.notifications import NotificationCreated
from schemas.registry import NOTIFICATIONS
from services.notifier import ledger, mail, metrics, subscriptions, webhooks
from services.notifier.events import Occurrence, classify
from services.notifier.logic import email_id, notification_for, occurrence_text
from services.notifier.settings import notifier_config
from services.notifier.state import NotifierState, state_of
from services.notifier.store import add_notifications
from storeops.consumer import Handler, Received, Rejected
from storeops.service import Runtime


def handler(rt: Runtime[NotifierState]) -> Handler:
    config = notifier_config(rt.settings)

    async def handle(batch: list[Received]) -> Sequence[Rejected]:
        found = [(i.event, o) for i in batch for o in classify(i.event, config.low_stock_default)]
        if not found:  # most records concern nobody
            return []
        records = {o.id: record for record, o in found}
        now = datetime.now(UTC)
        async with rt.sessions.begin() as session:
            routing = subscriptions.route(
                [o for _, o in found], await subscriptions.all_subscriptions(session), await subscriptions.teams(session),
                now, default_recipient=config.default_recipient, critical=config.critical_severities)
            notes = [notification_for(records[i.occurrence.id], i.occurrence, i.recipient) for i in routing.in_app]
            queued = await _send(session, routing, records, now, ledger.smtp_route(config.smtp_url))
            queued += await webhooks.enqueue_occurrences(session, [o for _, o in found], now,
                                                         keep_messages=config.message_retention_days > 0)
            # last: add_notifications holds the feed's lock until commit
            stored = await add_notifications(session, notes, kinds(notes, routing), config.critical_severities, now)
        if notes:
            await rt.emitter.emit(NOTIFICATIONS, notes)
        if queued:
            state_of(rt).deliveries_due.set()
        metrics.STORED.labels("in_app").inc(stored)
        return []

    return handle


def kinds(notes: list[NotificationCreated], routing: subscriptions.Routing) -> dict[Any, str]:
    return {n.data.notification_id: i.occurrence.type for n, i in zip(notes, routing.in_app, strict=True)}


async def _send(session: Any, routing: subscriptions.Routing, records: dict[Any, Envelope], now: datetime,
                route: str | None) -> int:
    """E-mails now and held for digests; how many deliveries were enqueued."""
    queued = 0
    for m in routing.email_now:
        record = records[m.occurrence.id]
        queued += await mail.enqueue_now(session, address=m.address, recipient=m.recipient, kind=m.occurrence.type,
                                         notification_id=email_id(record, m.occurrence, m.address),
                                         context=_context(record, m.occurrence), now=now, route=route)
    # a subscription on a webhook endpoint: signed and retried like the endpoint's own
    queued += await ledger.enqueue_all(session, (
        webhooks.endpoint_delivery(h.endpoint_id, h.occurrence.type, h.occurrence.id, webhooks.body_of(h.occurrence, now),
                                   h.owner) for h in routing.webhooks), now)
    for h in routing.held:
        record = records[h.occurrence.id]
        title, body = occurrence_text(record, h.occurrence)
        # kept under the id its in-app copy has, so reading that copy drops it (mail.forget)
        in_app_id = notification_for(record, h.occurrence, h.recipient).data.notification_id
        await mail.hold(session, recipient=h.recipient, address=h.address, window=h.window, tz=h.tz,
                        notification_id=in_app_id, kind=h.occurrence.type, title=title, body=body,
                        severity=h.occurrence.severity, now=now)
    return queued


def _context(record: Envelope, occurrence: Occurrence) -> dict[str, Any]:
    title, body = occurrence_text(record, occurrence)
    return {"type": occurrence.type, "title": title, "body": body, "severity": occurrence.severity,
            "exception_type": occurrence.exception_type, "entity": occurrence.entity, "assignee": occurrence.assignee,
            "record_id": str(occurrence.id), "payload": occurrence.payload}
