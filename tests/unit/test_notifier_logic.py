"""What to tell whom about an exception change (services/notifier/logic.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.envelope import deterministic_id
from schemas.exceptions import ExceptionChange, ExceptionCreated, ExceptionState
from schemas.registry import NOTIFICATIONS
from services.notifier.logic import in_app_notification

CHANGE_ID = uuid.UUID("99999999-9999-4999-8999-999999999999")
EXCEPTION_ID = uuid.UUID("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa")
ROOT_ID = uuid.UUID("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb")
WHEN = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


def change(id: uuid.UUID = CHANGE_ID, severity: Severity = Severity.MEDIUM) -> ExceptionCreated:
    state = ExceptionState(id=EXCEPTION_ID, type=ExceptionType.INVENTORY, severity=severity, status="New",
                           title="Low stock for LENS-50MM", entity_type=EntityType.SKU, entity_id="LENS-50MM",
                           created_at=WHEN)
    return ExceptionCreated(id=id, type="ExceptionCreated", time=WHEN, subject=str(EXCEPTION_ID), correlation_id=ROOT_ID,
                            data=ExceptionChange(exception_id=EXCEPTION_ID, before=None, after=state,
                                                 actor=Actor(kind="system", name="test"), cause="test"))


def test_notification_envelope():
    note = in_app_notification(change(), "ops")
    assert note.id == deterministic_id("notification", CHANGE_ID, "in_app", "ops")
    assert note.type == "NotificationCreated"
    assert note.source == "storeops/notifier"
    assert note.subject == "ops"
    assert note.time == WHEN
    assert note.causation_id == CHANGE_ID
    assert note.correlation_id == ROOT_ID


def test_notification_data():
    data = in_app_notification(change(), "ops").data
    assert data.notification_id == deterministic_id("notification", CHANGE_ID, "in_app", "ops")
    assert data.recipient == "ops"
    assert data.channel == "in_app"
    assert data.severity is Severity.MEDIUM
    assert data.exception_id == EXCEPTION_ID
    assert data.created_at == WHEN
    assert data.body == "New inventory exception on sku LENS-50MM."


def test_title_carries_severity_and_exception_title():
    assert in_app_notification(change(), "ops").data.title == "[Medium] Low stock for LENS-50MM"
    assert in_app_notification(change(severity=Severity.CRITICAL), "ops").data.title.startswith("[Critical] ")


def test_deterministic_per_change_and_recipient():
    assert NOTIFICATIONS.encode(in_app_notification(change(), "ops")) == NOTIFICATIONS.encode(in_app_notification(change(), "ops"))


def test_differs_per_recipient():
    a, b = in_app_notification(change(), "ops"), in_app_notification(change(), "alice")
    assert a.id != b.id
    assert a.data.notification_id != b.data.notification_id
    assert (a.subject, b.subject) == ("ops", "alice")


def test_differs_per_change():
    other = uuid.UUID("cccccccc-cccc-4ccc-8ccc-cccccccccccc")
    assert in_app_notification(change(), "ops").id != in_app_notification(change(id=other), "ops").id


def test_round_trips_on_the_notifications_topic():
    note = in_app_notification(change(), "ops")
    key, value = NOTIFICATIONS.encode(note)
    assert key == b"ops"
    assert NOTIFICATIONS.decode(value) == note
