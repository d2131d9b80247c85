"""From an action to a queued exception and its change record (services/exceptions/logic.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from schemas.actions import CreateException, CreateExceptionData, ExceptionSpec, RuleRef
from schemas.common import EntityType, ExceptionType, Severity
from schemas.envelope import deterministic_id
from schemas.registry import EXCEPTIONS
from services.exceptions.logic import SYSTEM, created_change, exception_from_action

ACTION_ID = uuid.UUID("55555555-5555-4555-8555-555555555555")
EVENT_ID = uuid.UUID("66666666-6666-4666-8666-666666666666")
ROOT_ID = uuid.UUID("77777777-7777-4777-8777-777777777777")
WHEN = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
RULE = RuleRef(rule_id="high-value-order", rule_version=3, mode="DRY_RUN")


def action(id: uuid.UUID = ACTION_ID, correlation_id: uuid.UUID | None = ROOT_ID) -> CreateException:
    spec = ExceptionSpec(type=ExceptionType.VIP, severity=Severity.CRITICAL, title="Big order ord-9",
                         entity_type=EntityType.ORDER, entity_id="ord-9", impact=Decimal("4200.50"), currency="USD")
    return CreateException(id=id, type="CreateException", time=WHEN, subject="ord-9", causation_id=EVENT_ID,
                           correlation_id=correlation_id,
                           data=CreateExceptionData(rule=RULE, exception=spec, evidence=[EVENT_ID]))


def test_exception_maps_every_field_of_the_action():
    state = exception_from_action(action())
    assert state.model_dump() == {
        "id": deterministic_id("exception", ACTION_ID),
        "type": ExceptionType.VIP,
        "severity": Severity.CRITICAL,
        "status": "New",
        "title": "Big order ord-9",
        "entity_type": EntityType.ORDER,
        "entity_id": "ord-9",
        "impact": Decimal("4200.50"),
        "currency": "USD",
        "source": RULE.model_dump(),
        "evidence": [EVENT_ID],
        "assignee": None,
        "created_at": WHEN,
    }


def test_exception_id_is_deterministic_from_the_action_id():
    assert exception_from_action(action()).id == exception_from_action(action()).id
    other = uuid.UUID("88888888-8888-4888-8888-888888888888")
    assert exception_from_action(action(id=other)).id != exception_from_action(action()).id


def test_exception_id_is_not_the_action_id():
    assert exception_from_action(action()).id != ACTION_ID


def test_exception_without_impact():
    base = action()
    spec = base.data.exception.model_copy(update={"impact": None, "currency": None})
    no_impact = base.model_copy(update={"data": base.data.model_copy(update={"exception": spec})})
    state = exception_from_action(no_impact)
    assert state.impact is None and state.currency is None


def test_created_change_envelope():
    act = action()
    state = exception_from_action(act)
    change = created_change(state, act)
    assert change.id == deterministic_id("exception-change", state.id, "created")
    assert change.type == "ExceptionCreated"
    assert change.source == "storeops/exceptions"
    assert change.subject == str(state.id)
    assert change.time == WHEN
    assert change.causation_id == ACTION_ID
    assert change.correlation_id == ROOT_ID


def test_created_change_data():
    act = action()
    state = exception_from_action(act)
    data = created_change(state, act).data
    assert data.exception_id == state.id
    assert data.before is None
    assert data.after == state
    assert data.actor == SYSTEM
    assert data.actor.kind == "system"
    assert data.cause == f"action {ACTION_ID}"


def test_created_change_of_a_root_action_correlates_to_it():
    act = action(correlation_id=None)
    change = created_change(exception_from_action(act), act)
    assert change.correlation_id == ACTION_ID


def test_created_change_is_deterministic_byte_for_byte():
    first = created_change(exception_from_action(action()), action())
    second = created_change(exception_from_action(action()), action())
    assert EXCEPTIONS.encode(first) == EXCEPTIONS.encode(second)


def test_created_change_round_trips_on_the_exceptions_topic():
    change = created_change(exception_from_action(action()), action())
    key, value = EXCEPTIONS.encode(change)
    assert key == str(change.data.exception_id).encode()
    assert EXCEPTIONS.decode(value) == change
