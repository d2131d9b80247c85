"""What to tell whom about an exception change. Pure: no I/O, no clock."""

from __future__ import annotations

from schemas.envelope import deterministic_id
from schemas.exceptions import ExceptionCreated
from schemas.notifications import Channel, NotificationCreated, NotificationData


def in_app_notification(change: ExceptionCreated, recipient: str) -> NotificationCreated:
    """The in-app notification for one change; keyed by (change, channel, recipient)."""
    channel: Channel = "in_app"
    state = change.data.after
    notification_id = deterministic_id("notification", change.id, channel, recipient)
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
                title=f"[{state.severity.value}] {state.title}",
                body=f"New {state.type.value} exception on {state.entity_type.value} {state.entity_id}.",
                severity=state.severity,
                exception_id=state.id,
                created_at=change.time,
            ),
        )
    )
