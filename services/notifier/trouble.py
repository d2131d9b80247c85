"""Delivery trouble reaches people: when an endpoint is disabled or a delivery dies, the
endpoint's owner (who created it) and every admin hear it in-app as ``delivery.failed``.

The admins' feed is ``role:admin``: every admin's inbox includes it (api.audience_of), so
nobody has to be listed anywhere to be told. Registered on ``ledger.on_trouble``; runs in
the transaction that disabled the endpoint or gave the delivery up (``install``, at start).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.common import Severity
from schemas.envelope import deterministic_id
from schemas.notifications import NotificationCreated, NotificationData
from services.notifier import ledger
from services.notifier.store import add_notifications
from services.notifier.webhooks import EndpointRow
from storeops.auth import Role

KIND = "delivery.failed"
TITLE_LIMIT = 400


def role_feed(role: Role) -> str:
    """The feed every principal of ``role`` reads in their inbox."""
    return f"role:{role.value}"


def headline(trouble: ledger.Trouble) -> tuple[str, str]:
    if trouble.kind == "endpoint_disabled":
        return (f"[High] Webhook endpoint disabled: {trouble.route}"[:TITLE_LIMIT],
                f"{trouble.route} was disabled: {trouble.reason}. Its waiting deliveries were cancelled; "
                "fix the receiver, enable the endpoint again (PATCH enabled=true) and recover what it missed.")
    return (f"[High] Delivery failed for good: {trouble.route}"[:TITLE_LIMIT],
            f"Delivery {trouble.delivery_id} to {trouble.route} gave up: {trouble.reason}. "
            "Replay it once the receiver is back (POST /v1/deliveries/{id}/replay).")


async def tell_people(session: AsyncSession, trouble: ledger.Trouble) -> None:
    owner = trouble.owner
    if owner is None and trouble.endpoint_id is not None:
        endpoint = await session.get(EndpointRow, trouble.endpoint_id)
        owner = endpoint.created_by if endpoint is not None else None
    cause = trouble.delivery_id or trouble.endpoint_id or deterministic_id("trouble", trouble.route)
    event_id = deterministic_id("trouble", trouble.kind, cause, trouble.at.isoformat())
    title, body = headline(trouble)
    notes = []
    for recipient in dict.fromkeys([role_feed(Role.admin), *([owner] if owner else [])]):
        notification_id = deterministic_id("notification", event_id, "in_app", recipient)
        notes.append(NotificationCreated(
            id=notification_id, type="NotificationCreated", source="storeops/notifier", time=trouble.at,
            subject=recipient, causation_id=event_id, correlation_id=cause,
            data=NotificationData(notification_id=notification_id, recipient=recipient, channel="in_app", title=title,
                                  body=body, severity=Severity.HIGH, created_at=trouble.at)))
    await add_notifications(session, notes, {n.data.notification_id: KIND for n in notes}, now=trouble.at)


def install() -> None:
    """Tell people of every trouble of this process's delivery loop (once, however often called)."""
    if tell_people not in ledger.on_trouble:
        ledger.on_trouble.append(tell_people)
