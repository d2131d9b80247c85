"""The exception API's request bodies (services/exceptions/api.py) refuse bad input and
name the field at fault, before any workflow runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.common import Severity
from schemas.events import EVENT_CLASSES
from schemas.exceptions import ExceptionStatus, Resolution, ResolutionReason, Snooze
from services.exceptions.api import (
    AssignBody,
    BulkBody,
    ExceptionCreate,
    ExceptionEdit,
    ResolutionBody,
    ResolveRequest,
    SnoozeBody,
    SnoozeRequest,
    StatusBody,
)
from services.exceptions.settings import ExceptionsConfig
from storeops.errors import field_errors

LATER = datetime(2030, 1, 1, tzinfo=UTC)
EVENT_TYPES = sorted(cls.__name__ for cls in EVENT_CLASSES)


def errors(model: type[BaseModel], data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as exc:
        model.model_validate(data)
    return exc.value.errors()


def only_error(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    errs = errors(model, data)
    assert len(errs) == 1, errs
    return errs[0]


def items(n: int) -> list[dict[str, Any]]:
    return [{"id": str(uuid.UUID(int=i + 1)), "version": 1} for i in range(n)]


def bulk(**kw: Any) -> dict[str, Any]:
    return {"action": "reassign", "items": items(2), "assignee": "bob", **kw}


# --- snooze -----------------------------------------------------------------------


def test_snooze_unknown_until_event_names_the_field_and_lists_the_known_types():
    err = only_error(SnoozeBody, {"until_event": "StockExploded"})
    assert err["loc"] == ("until_event",)
    assert "StockExploded" in err["msg"]
    for name in EVENT_TYPES:
        assert name in err["msg"]
    assert ", ".join(EVENT_TYPES) in err["msg"]


def test_snooze_unknown_event_inside_a_status_body_names_the_nested_field():
    err = only_error(
        StatusBody, {"version": 3, "status": "Snoozed", "snooze": {"until_event": "Nope"}}
    )
    assert err["loc"] == ("snooze", "until_event")


def test_snooze_with_neither_field():
    for model, data in ((SnoozeBody, {}), (SnoozeRequest, {"version": 1})):
        err = only_error(model, data)
        assert err["loc"] == ()
        assert "until" in err["msg"] and "until_event" in err["msg"]
    # and null for both is the same as neither
    assert only_error(SnoozeBody, {"until": None, "until_event": None})["loc"] == ()


def test_snooze_until_must_carry_a_timezone():
    err = only_error(SnoozeBody, {"until": "2030-01-01T00:00:00"})
    assert err["loc"] == ("until",) and err["type"] == "timezone_aware"


def test_snooze_bodies_that_are_fine():
    for event_type in EVENT_TYPES:
        assert SnoozeBody(until_event=event_type).model() == Snooze(until_event=event_type)
    assert SnoozeBody(until=LATER).model() == Snooze(until=LATER)
    request = SnoozeRequest(version=2, until=LATER, until_event="StockChanged")
    assert request.model() == Snooze(until=LATER, until_event="StockChanged")


# --- resolution -------------------------------------------------------------------


@pytest.mark.parametrize("note", [None, "", "   "], ids=["missing", "empty", "blank"])
def test_resolution_other_without_a_note(note):
    data = {"reason": "other"} if note is None else {"reason": "other", "note": note}
    for model, extra in ((ResolutionBody, {}), (ResolveRequest, {"version": 1})):
        err = only_error(model, {**data, **extra})
        assert err["loc"] == ()
        assert "note" in err["msg"] and "other" in err["msg"]


def test_resolution_unknown_reason_names_the_field():
    err = only_error(ResolutionBody, {"reason": "bored"})
    assert err["loc"] == ("reason",) and err["type"] == "enum"


def test_a_person_cannot_send_an_automatic_resolution():
    err = only_error(ResolutionBody, {"reason": "fixed", "automatic": True})
    assert err["loc"] == ("automatic",) and err["type"] == "extra_forbidden"


def test_resolution_bodies_that_are_fine():
    assert ResolutionBody(reason="other", note="asked by phone").model() == Resolution(
        reason=ResolutionReason.OTHER, note="asked by phone"
    )
    model = ResolveRequest(version=4, reason="fixed").model()
    assert model == Resolution(reason=ResolutionReason.FIXED) and not model.automatic


# --- bulk ---------------------------------------------------------------------------


def test_bulk_needs_at_least_one_item():
    err = only_error(BulkBody, bulk(items=items(0)))
    assert err["loc"] == ("items",) and err["type"] == "too_short"


def test_bulk_accepts_1_and_1000_items_and_leaves_the_upper_bound_to_the_setting():
    """How many ids one request may carry is exceptions.bulk_max (default 1,000), checked by the
    route against the service's settings (tests/integration/test_queue.py), not fixed in the model."""
    assert len(BulkBody.model_validate(bulk(items=items(1))).items) == 1
    assert len(BulkBody.model_validate(bulk(items=items(1000))).items) == 1000
    assert len(BulkBody.model_validate(bulk(items=items(1001))).items) == 1001
    assert ExceptionsConfig().bulk_max == 1000


@pytest.mark.parametrize("bulk_max", [0, 10_001])
def test_bulk_max_setting_is_bounded(bulk_max):
    with pytest.raises(ValidationError) as exc:
        ExceptionsConfig(bulk_max=bulk_max)
    assert exc.value.errors()[0]["loc"] == ("bulk_max",)


def test_sla_minutes_cover_every_severity_critical_included():
    assert ExceptionsConfig().sla == {
        Severity.CRITICAL: timedelta(minutes=15), Severity.HIGH: timedelta(minutes=60),
        Severity.MEDIUM: timedelta(minutes=240), Severity.LOW: timedelta(minutes=1440),
    }
    # naming some severities keeps the defaults for the others
    partial = ExceptionsConfig.model_validate({"sla_minutes": {"Critical": 5}}).sla
    assert partial[Severity.CRITICAL] == timedelta(minutes=5) and partial[Severity.LOW] == timedelta(minutes=1440)
    with pytest.raises(ValidationError):
        ExceptionsConfig.model_validate({"sla_minutes": {"Critical": 0}})


def test_severity_order_has_one_source():
    assert [s.higher for s in (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)] == [
        Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL, None]


def test_bulk_refuses_duplicate_ids():
    dup = items(3)
    dup[2] = {**dup[0], "version": 7}
    err = only_error(BulkBody, bulk(items=dup))
    assert err["loc"] == ()
    assert err["msg"].startswith("Value error, items:") and "once" in err["msg"]


def test_bulk_resolve_without_resolution():
    err = only_error(BulkBody, bulk(action="resolve"))
    assert err["loc"] == ()
    assert "resolution: required for action 'resolve'" in err["msg"]


def test_bulk_snooze_without_snooze():
    err = only_error(BulkBody, bulk(action="snooze"))
    assert "snooze: required for action 'snooze'" in err["msg"]


def test_bulk_status_without_status():
    err = only_error(BulkBody, bulk(action="status"))
    assert "status: required for action 'status'" in err["msg"]


def test_bulk_status_to_snoozed_without_snooze():
    err = only_error(BulkBody, bulk(action="status", status="Snoozed"))
    assert err["loc"] == ()
    assert "snooze: required to set status Snoozed" in err["msg"]


def test_bulk_status_to_resolved_without_resolution():
    err = only_error(BulkBody, bulk(action="status", status="Resolved"))
    assert "resolution: required to set status Resolved" in err["msg"]


def test_bulk_nested_bodies_name_their_fields():
    err = only_error(BulkBody, bulk(action="resolve", resolution={"reason": "other"}))
    assert err["loc"] == ("resolution",) and "note" in err["msg"]
    err = only_error(BulkBody, bulk(action="snooze", snooze={"until_event": "Nope"}))
    assert err["loc"] == ("snooze", "until_event")


def test_bulk_item_fields():
    err = only_error(BulkBody, bulk(items=[{"id": "not-a-uuid", "version": 1}]))
    assert err["loc"] == ("items", 0, "id")
    err = only_error(BulkBody, bulk(items=[{"id": str(uuid.uuid4()), "version": 0}]))
    assert err["loc"] == ("items", 0, "version")
    err = only_error(BulkBody, bulk(items=[{"id": str(uuid.uuid4()), "version": 2**63}]))
    assert err["loc"] == ("items", 0, "version") and err["type"] == "less_than_equal"
    err = only_error(BulkBody, bulk(items=[{"id": str(uuid.uuid4()), "version": 1, "extra": 1}]))
    assert err["loc"] == ("items", 0, "extra") and err["type"] == "extra_forbidden"


def test_bulk_unknown_action():
    err = only_error(BulkBody, bulk(action="delete"))
    assert err["loc"] == ("action",)


def test_bulk_bodies_that_are_fine():
    body = BulkBody.model_validate(bulk(action="status", status="Snoozed", snooze={"until": LATER.isoformat()}))
    assert body.status is ExceptionStatus.SNOOZED and body.snooze.model() == Snooze(until=LATER)
    body = BulkBody.model_validate(bulk(action="status", status="In Progress"))
    assert body.status is ExceptionStatus.IN_PROGRESS
    body = BulkBody.model_validate(bulk(action="resolve", resolution={"reason": "duplicate"}))
    assert body.resolution.model() == Resolution(reason=ResolutionReason.DUPLICATE)


# --- unknown fields and the rest ---------------------------------------------------


BODIES = [
    (SnoozeBody, {"until_event": "StockChanged"}),
    (ResolutionBody, {"reason": "fixed"}),
    (SnoozeRequest, {"version": 1, "until_event": "StockChanged"}),
    (ResolveRequest, {"version": 1, "reason": "fixed"}),
    (StatusBody, {"version": 1, "status": "New"}),
    (AssignBody, {"version": 1, "assignee": "bob"}),
    (ExceptionEdit, {"version": 1, "title": "t"}),
    (BulkBody, bulk()),
    (ExceptionCreate, {"type": "vip", "severity": "High", "title": "t", "entity_type": "order", "entity_id": "ord-1"}),
]
# the bodies of changes: each is made by the authenticated principal, which a body cannot name
CHANGES = [(model, data) for model, data in BODIES if model not in (SnoozeBody, ResolutionBody)]


@pytest.mark.parametrize(("model", "data"), BODIES, ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_unknown_extra_field_is_refused_by_name(model, data):
    model.model_validate(data)  # fine without it
    err = only_error(model, {**data, "colour": "blue"})
    assert err["loc"] == ("colour",)
    assert err["type"] == "extra_forbidden"


@pytest.mark.parametrize(("model", "data"), CHANGES, ids=lambda v: v.__name__ if isinstance(v, type) else "")
@pytest.mark.parametrize("actor", ["dana", "", {"kind": "person", "name": "dana", "role": "admin"}],
                         ids=["name", "empty", "actor-object"])
def test_a_change_body_that_names_its_actor_is_refused_naming_actor(model, data, actor):
    """Who makes a change is the token's principal; a body claiming someone is refused, not ignored."""
    model.model_validate(data)  # fine without it
    claimed = {**data, "actor": actor}
    with pytest.raises(ValidationError) as exc:
        model.model_validate(claimed)
    [err] = exc.value.errors()
    assert err["loc"] == ("actor",) and err["type"] == "extra_forbidden"
    assert [e["field"] for e in field_errors(exc.value, claimed)] == ["actor"]  # as the API names it


def test_versioned_bodies_need_a_version():
    err = only_error(StatusBody, {"status": "New"})
    assert err["loc"] == ("version",) and err["type"] == "missing"
    err = only_error(StatusBody, {"version": 0, "status": "New"})
    assert err["loc"] == ("version",)
    err = only_error(StatusBody, {"version": 99999999999999999999999, "status": "New"})
    assert err["loc"] == ("version",) and err["type"] == "less_than_equal"
    assert StatusBody(version=2**63 - 1, status="New").version == 2**63 - 1


def test_status_body_unknown_status():
    err = only_error(StatusBody, {"version": 1, "status": "Done"})
    assert err["loc"] == ("status",) and err["type"] == "enum"


def test_assign_body_needs_the_assignee_key_but_takes_null_to_unassign():
    err = only_error(AssignBody, {"version": 1})
    assert err["loc"] == ("assignee",) and err["type"] == "missing"
    assert AssignBody(version=1, assignee=None).assignee is None
    err = only_error(AssignBody, {"version": 1, "assignee": ""})
    assert err["loc"] == ("assignee",)


def test_edit_body_refuses_null_severity_and_title():
    """severity and title may be left out of an edit but not set to null: the exception
    would lose its severity or title (workflow.edit copies the value in unchecked)."""
    for field in ("severity", "title"):
        err = only_error(ExceptionEdit, {"version": 1, field: None})
        assert err["loc"] == (field,)


def test_bulk_reassign_needs_the_assignee_key_and_takes_null_to_unassign():
    data = {k: v for k, v in bulk(action="reassign").items() if k != "assignee"}
    err = only_error(BulkBody, data)
    assert "assignee: required for action 'reassign'" in err["msg"]
    assert BulkBody.model_validate({**data, "assignee": None}).assignee is None


# --- as the API answers them: the platform's one translator of locations ---------------


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (StatusBody, {"version": 1, "status": "Resolved", "resolution": {"reason": "other"}},
         "resolution.note"),
        (ResolveRequest, {"version": 1, "reason": "other"}, "note"),
        (StatusBody, {"version": 1, "status": "Snoozed", "snooze": {}}, "snooze"),
        (StatusBody, {"version": 1, "status": "Snoozed", "snooze": {"until_event": "Nope"}},
         "snooze.until_event"),
        (BulkBody, bulk(items=[items(1)[0], items(1)[0]]), "items"),
        (BulkBody, bulk(action="resolve"), "resolution"),
        (BulkBody, bulk(action="resolve", resolution={"reason": "other"}), "resolution.note"),
        (BulkBody, bulk(items=[{"id": "x", "version": 1}]), "items[0].id"),
        (StatusBody, {"version": 10**30, "status": "New"}, "version"),
    ],
    ids=["status-other", "resolve-other", "status-snooze", "status-snooze-event", "bulk-dup", "bulk-needs",
         "bulk-other", "bulk-item-id", "huge-version"],
)
def test_each_problem_names_the_field_the_client_sent(model, data, field):
    with pytest.raises(ValidationError) as exc:
        model.model_validate(data)
    assert [e["field"] for e in field_errors(exc.value, data)] == [field]
