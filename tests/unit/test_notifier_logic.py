"""What to tell whom about an exception change (services/notifier/logic.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.envelope import deterministic_id
from schemas.exceptions import CHANGE_RECORDS, ChangeKind, ExceptionChange, ExceptionChangeRecord, ExceptionState
from schemas.registry import EXCEPTIONS, NOTIFICATIONS
from services.notifier.logic import in_app_notification, notifications_for, recipients

CHANGE_ID = uuid.UUID("99999999-9999-4999-8999-999999999999")
EXCEPTION_ID = uuid.UUID("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa")
ROOT_ID = uuid.UUID("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb")
CREATED = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
WHEN = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
DEFAULT = "ops"
SILENT: tuple[ChangeKind, ...] = ("updated", "status_changed", "snoozed", "resolved")
BROADCAST: tuple[ChangeKind, ...] = ("created", "escalated", "reopened", "woke")


def state(version: int = 1, **fields: Any) -> ExceptionState:
    values: dict[str, Any] = dict(
        id=EXCEPTION_ID, version=version, type=ExceptionType.INVENTORY, severity=Severity.MEDIUM, status="New",
        title="Low stock for LENS-50MM", entity_type=EntityType.SKU, entity_id="LENS-50MM",
        first_seen=CREATED, last_seen=CREATED, created_at=CREATED, updated_at=WHEN if version > 1 else CREATED)
    return ExceptionState(**{**values, **fields})


def change(
    kind: ChangeKind = "created",
    *,
    id: uuid.UUID = CHANGE_ID,
    before: dict[str, Any] | None = None,
    actor: Actor = Actor(kind="system", name="test"),
    cause: str = "test",
    **after: Any,
) -> ExceptionChangeRecord:
    """A ``kind`` record; ``after`` overrides the new state, ``before`` the old (none for created)."""
    old = None if kind == "created" else state(**(before or {}))
    new = state(1 if old is None else old.version + 1, **after)
    record = CHANGE_RECORDS[kind]
    return record(
        id=id, type=record.__name__, time=WHEN, subject=str(EXCEPTION_ID), correlation_id=ROOT_ID,
        data=ExceptionChange(exception_id=EXCEPTION_ID, kind=kind, before=old, after=new, actor=actor, cause=cause))


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


# --- who hears about which change -------------------------------------------


def test_change_helper_builds_valid_records():
    for kind in CHANGE_RECORDS:
        record = change(kind)
        assert record.data.kind == kind
        assert EXCEPTIONS.decode(EXCEPTIONS.encode(record)[1]) == record


@pytest.mark.parametrize("kind", BROADCAST)
def test_broadcast_kinds_go_to_the_default_recipient(kind: ChangeKind):
    notes = notifications_for(change(kind), DEFAULT)
    assert [n.data.recipient for n in notes] == [DEFAULT]
    assert notes[0] == in_app_notification(change(kind), DEFAULT)


@pytest.mark.parametrize("kind", BROADCAST)
def test_broadcast_kinds_also_go_to_the_assignee(kind: ChangeKind):
    assert recipients(change(kind, assignee="alice", before={"assignee": "alice"}), DEFAULT) == [DEFAULT, "alice"]
    assert recipients(change(kind, assignee=DEFAULT, before={"assignee": DEFAULT}), DEFAULT) == [DEFAULT]  # once, not twice


@pytest.mark.parametrize("kind", SILENT)
def test_other_kinds_notify_nobody(kind: ChangeKind):
    assert notifications_for(change(kind, assignee="alice", before={"assignee": "alice"}), DEFAULT) == []


def test_assigned_goes_to_the_new_assignee_only():
    record = change("assigned", assignee="alice", before={"assignee": "bob"}, actor=Actor(kind="person", name="carol"))
    [note] = notifications_for(record, DEFAULT)
    assert note.data.recipient == "alice"
    assert note.id == deterministic_id("notification", CHANGE_ID, "in_app", "alice")
    assert note.data.title == "[Medium] Assigned to you: Low stock for LENS-50MM"
    assert "carol" in note.data.body


def test_unassigned_notifies_nobody():
    assert notifications_for(change("assigned", assignee=None, before={"assignee": "alice"}), DEFAULT) == []


# --- what they are told -----------------------------------------------------


def test_escalated_says_so_with_its_cause():
    record = change("escalated", severity=Severity.CRITICAL, escalations=1, before={"severity": Severity.HIGH},
                    cause="SLA missed: still New after 30 minutes")
    [note] = notifications_for(record, DEFAULT)
    assert note.data.title == "[Critical] Escalated: Low stock for LENS-50MM"
    assert note.data.severity is Severity.CRITICAL
    assert "SLA missed: still New after 30 minutes" in note.data.body
    assert "was High" in note.data.body
    [same] = notifications_for(change("escalated"), DEFAULT)
    assert "was" not in same.data.body


def test_reopened_counts_flaps():
    [note] = notifications_for(change("reopened", flap_count=2, cause="StockChanged"), DEFAULT)
    assert note.data.title == "[Medium] Reopened (flap 2): Low stock for LENS-50MM"
    assert "StockChanged" in note.data.body
    [by_hand] = notifications_for(change("reopened", cause="request", actor=Actor(kind="person", name="dana")), DEFAULT)
    assert by_hand.data.title == "[Medium] Reopened: Low stock for LENS-50MM"
    assert "by dana" in by_hand.data.body


def test_woke_says_the_snooze_ended():
    [note] = notifications_for(change("woke", cause="snooze until 2026-11-23T10:00:00+00:00"), DEFAULT)
    assert note.data.title == "[Medium] Back from snooze: Low stock for LENS-50MM"
    assert "snooze until" in note.data.body


def test_titles_differ_per_kind():
    titles = {notifications_for(change(k), DEFAULT)[0].data.title for k in BROADCAST}
    assert len(titles) == len(BROADCAST)


def test_title_fits_the_feed_column():
    [note] = notifications_for(change("escalated", title="x" * 1000), DEFAULT)
    assert len(note.data.title) <= 400


def test_ids_are_per_change_channel_and_recipient():
    notes = notifications_for(change("escalated", assignee="alice", before={"assignee": "alice"}), DEFAULT)
    assert [n.id for n in notes] == [deterministic_id("notification", CHANGE_ID, "in_app", r) for r in (DEFAULT, "alice")]
    again = notifications_for(change("escalated", assignee="alice", before={"assignee": "alice"}), DEFAULT)
    assert [NOTIFICATIONS.encode(n) for n in notes] == [NOTIFICATIONS.encode(n) for n in again]
