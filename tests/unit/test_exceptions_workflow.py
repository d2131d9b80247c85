"""The exception queue's state machine (services/exceptions/workflow.py): pure, no I/O.

Example tests walk every function and every failure path; a hypothesis state
machine then drives one exception through random sequences of operations with a
clock that only moves forward, checking the workflow's invariants after every step.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import get_args

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pydantic import ValidationError

from schemas.actions import CallbackCapture, CreateException, CreateExceptionData, ExceptionSpec, HealCondition, RuleRef
from schemas.common import Actor, EntityType, ExceptionType, Severity
from schemas.envelope import deterministic_id
from schemas.events import PriceChanged, PriceChangedData, StockChanged, StockChangedData
from schemas.exceptions import (
    CHANGE_RECORDS,
    ChangeKind,
    ExceptionState,
    ExceptionStatus,
    Resolution,
    ResolutionReason,
    Snooze,
)
from schemas.registry import EXCEPTIONS
from services.exceptions.workflow import (
    ALLOWED,
    EVIDENCE_KEPT,
    OPEN,
    SWEEP,
    SYSTEM,
    Change,
    accept_callback,
    arm_sla,
    assign,
    create_by_person,
    create_from_action,
    dedup_key,
    edit,
    escalate,
    heal,
    occurrence,
    reopenable,
    replay_callback,
    sla_due,
    transition,
    wake_on_event,
    wake_on_time,
)
from storeops.errors import Conflict, Invalid, StoreopsError
from storeops.http import status_of

NEW, IN_PROGRESS, SNOOZED, RESOLVED = (
    ExceptionStatus.NEW, ExceptionStatus.IN_PROGRESS, ExceptionStatus.SNOOZED, ExceptionStatus.RESOLVED,
)
STATUSES = list(ExceptionStatus)
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SLA = {
    Severity.CRITICAL: timedelta(minutes=15),
    Severity.HIGH: timedelta(minutes=60),
    Severity.MEDIUM: timedelta(minutes=240),
    Severity.LOW: timedelta(minutes=1440),
}
ALICE = Actor(kind="person", name="alice")
RULE = RuleRef(rule_id="low-stock", rule_version=2, mode="LIVE")
RULE_ACTOR = Actor(kind="system", name="rule:low-stock@2", role="service")  # the rule and the version that acted
SKU = "sku-1"
HEAL_STOCK = HealCondition(event_type="StockChanged", field="on_hand", at_least=Decimal(5))
CALLBACK = CallbackCapture(gateway="stripe", error="signature mismatch", raw_callback='{"id": "evt_1"}')
FIXED = Resolution(reason=ResolutionReason.FIXED, note="restocked")
UP = {Severity.LOW: Severity.MEDIUM, Severity.MEDIUM: Severity.HIGH, Severity.HIGH: Severity.CRITICAL}


def uid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def make_action(
    severity: Severity = Severity.LOW,
    *,
    evidence: list[uuid.UUID] | None = None,
    time: datetime = T0,
    heal: HealCondition | None = None,
    callback: CallbackCapture | None = None,
    impact: Decimal | None = None,
    action_id: uuid.UUID | None = None,
    correlation_id: uuid.UUID | None = None,
) -> CreateException:
    spec = ExceptionSpec(
        type=ExceptionType.INVENTORY, severity=severity, title=f"Low stock {SKU}", entity_type=EntityType.SKU,
        entity_id=SKU, impact=impact, currency="USD" if impact is not None else None, heal=heal, callback=callback,
    )
    return CreateException(
        id=action_id or uuid.uuid4(), type="CreateException", time=time, subject=SKU, correlation_id=correlation_id,
        data=CreateExceptionData(rule=RULE, exception=spec, evidence=evidence or [uuid.uuid4()]),
    )


def new_state(severity: Severity = Severity.LOW, now: datetime = T0, **kw) -> ExceptionState:
    return create_from_action(make_action(severity, time=now, **kw), now, SLA).after


def state_in(status: ExceptionStatus, severity: Severity = Severity.LOW, **kw) -> ExceptionState:
    """An exception moved to ``status`` through the workflow itself, one minute after T0."""
    state = new_state(severity, **kw)
    now = T0 + timedelta(minutes=1)
    if status is NEW:
        return state
    if status is IN_PROGRESS:
        return transition(state, IN_PROGRESS, ALICE, now, SLA).after
    if status is SNOOZED:
        return transition(state, SNOOZED, ALICE, now, SLA, snooze=Snooze(until=T0 + timedelta(hours=2))).after
    return transition(state, RESOLVED, ALICE, now, SLA, resolution=FIXED).after


def stock_event(on_hand: int = 10, *, sku: str = SKU, time: datetime = T0) -> StockChanged:
    return StockChanged(type="StockChanged", time=time, subject=sku, data=StockChangedData(sku=sku, on_hand=on_hand))


def price_event(*, sku: str = SKU, time: datetime = T0) -> PriceChanged:
    return PriceChanged(
        type="PriceChanged", time=time, subject=sku,
        data=PriceChangedData(sku=sku, new_price=Decimal("9.99"), currency="USD"),
    )


def assert_change(change: Change, before: ExceptionState, now: datetime) -> None:
    assert change.before == before
    assert change.after.version == before.version + 1
    assert change.after.updated_at == now
    assert change.after.id == before.id
    ExceptionState.model_validate(change.after.model_dump())  # still a valid state


def assert_refused(
    exc: pytest.ExceptionInfo[StoreopsError], status_code: int, allowed: list[str] | None = None, field: str | None = None
) -> None:
    """Refused as ``status_code`` would answer it: 409 a Conflict (with ``allowed`` for a move), 422 an Invalid."""
    assert isinstance(exc.value, {409: Conflict, 422: Invalid}[status_code])
    assert status_of(exc.value) == status_code
    assert exc.value.extra.get("allowed") == allowed
    assert len(exc.value.errors) == 1 and exc.value.errors[0]["error"]
    if field is not None:
        assert exc.value.errors[0]["field"] == field


def reason(exc: pytest.ExceptionInfo[StoreopsError]) -> str:
    return exc.value.errors[0]["error"]


# --- creating -------------------------------------------------------------------


def test_create_from_action_maps_the_action():
    evidence = [uid(1), uid(2)]
    act = make_action(Severity.HIGH, evidence=evidence, time=T0 - timedelta(minutes=3), heal=HEAL_STOCK,
                      callback=CALLBACK, impact=Decimal("120.50"))
    change = create_from_action(act, T0, SLA)
    state = change.after
    assert change.kind == "created" and change.before is None and change.actor == RULE_ACTOR
    assert str(act.id) in change.cause and RULE.rule_id in change.cause
    assert state.id == deterministic_id("exception", act.id) != act.id
    assert (state.version, state.status, state.severity, state.occurrences) == (1, NEW, Severity.HIGH, 1)
    assert (state.type, state.entity_type, state.entity_id) == (ExceptionType.INVENTORY, EntityType.SKU, SKU)
    assert state.impact == Decimal("120.50") and state.currency == "USD"
    assert state.source == RULE and state.raised_by is None
    assert state.evidence == evidence
    assert state.first_seen == state.last_seen == act.time
    assert state.created_at == state.updated_at == T0
    assert state.sla_due_at == T0 + SLA[Severity.HIGH]
    assert state.heal == HEAL_STOCK and state.callback == CALLBACK
    assert (state.escalations, state.flap_count, state.snooze, state.resolution) == (0, 0, None, None)
    assert state.replays == []


def test_a_due_date_set_by_the_rule_replaces_the_severity_sla():
    act = make_action(Severity.LOW)
    due = T0 + timedelta(hours=2)
    with_due = act.model_copy(update={"data": act.data.model_copy(update={
        "exception": act.data.exception.model_copy(update={"due_at": due})})})
    assert create_from_action(with_due, T0, SLA).after.sla_due_at == due
    assert create_from_action(act, T0, SLA).after.sla_due_at == T0 + SLA[Severity.LOW]


def test_create_from_action_is_deterministic_per_action():
    act = make_action()
    assert create_from_action(act, T0, SLA).after == create_from_action(act, T0, SLA).after
    assert create_from_action(make_action(), T0, SLA).after.id != create_from_action(act, T0, SLA).after.id


def test_create_from_action_critical_has_its_sla_too():
    assert new_state(Severity.CRITICAL).sla_due_at == T0 + SLA[Severity.CRITICAL]


def test_create_by_person():
    fields = {"type": ExceptionType.VIP, "severity": Severity.MEDIUM, "title": "Call back",
              "entity_type": EntityType.ORDER,
              "entity_id": "ord-1", "impact": None, "currency": None}
    change = create_by_person(fields, ALICE, T0, SLA)
    state = change.after
    assert change.kind == "created" and change.before is None and change.actor == ALICE
    assert state.raised_by == ALICE and state.source is None
    assert (state.version, state.status, state.occurrences) == (1, NEW, 1)
    assert state.first_seen == state.last_seen == state.created_at == state.updated_at == T0
    assert state.sla_due_at == T0 + SLA[Severity.MEDIUM]
    assert create_by_person({**fields, "severity": Severity.CRITICAL}, ALICE, T0, SLA).after.sla_due_at == (
        T0 + SLA[Severity.CRITICAL])


def test_sla_due_and_dedup_key():
    assert sla_due(Severity.LOW, T0, SLA) == T0 + timedelta(days=1)
    assert sla_due(Severity.CRITICAL, T0, SLA) == T0 + timedelta(minutes=15)
    assert dedup_key(ExceptionType.INVENTORY, EntityType.SKU, SKU) == "inventory|sku|sku-1"


# --- transitions ----------------------------------------------------------------


def _inputs_for(to: ExceptionStatus, now: datetime) -> dict:
    if to is SNOOZED:
        return {"snooze": Snooze(until=now + timedelta(hours=1))}
    if to is RESOLVED:
        return {"resolution": FIXED}
    return {}


ALLOWED_MOVES = [(a, b) for a in STATUSES for b in STATUSES if b in ALLOWED[a]]
REFUSED_MOVES = [(a, b) for a in STATUSES for b in STATUSES if b not in ALLOWED[a]]


def test_allowed_table_is_as_documented():
    assert ALLOWED == {
        NEW: {IN_PROGRESS, SNOOZED, RESOLVED},
        IN_PROGRESS: {NEW, SNOOZED, RESOLVED},
        SNOOZED: {NEW, IN_PROGRESS, RESOLVED},
        RESOLVED: {NEW},
    }
    assert set(ALLOWED) == set(STATUSES)


@pytest.mark.parametrize(("frm", "to"), ALLOWED_MOVES, ids=[f"{a}->{b}" for a, b in ALLOWED_MOVES])
def test_every_allowed_transition(frm, to):
    state = state_in(frm, Severity.MEDIUM)
    now = T0 + timedelta(minutes=5)
    change = transition(state, to, ALICE, now, SLA, **_inputs_for(to, now))
    assert_change(change, state, now)
    after = change.after
    assert after.status is to
    assert change.actor == ALICE and change.cause == "request"
    expected_kind = {SNOOZED: "snoozed", RESOLVED: "resolved"}.get(to) or (
        "reopened" if frm is RESOLVED else "status_changed"
    )
    assert change.kind == expected_kind
    assert (after.snooze is not None) == (to is SNOOZED)
    assert (after.resolution is not None) == (to is RESOLVED)
    assert after.sla_due_at == (now + SLA[Severity.MEDIUM] if to is NEW else None)
    if to is RESOLVED:
        assert after.resolution == FIXED
    if to is SNOOZED:
        assert after.snooze == Snooze(until=now + timedelta(hours=1))


@pytest.mark.parametrize(("frm", "to"), REFUSED_MOVES, ids=[f"{a}->{b}" for a, b in REFUSED_MOVES])
def test_every_refused_transition(frm, to):
    state = state_in(frm)
    now = T0 + timedelta(minutes=5)
    with pytest.raises(Conflict) as exc:
        transition(state, to, ALICE, now, SLA, **_inputs_for(to, now))
    assert_refused(exc, 409, sorted(s.value for s in ALLOWED[frm]), field="status")
    assert exc.value.body() == {"errors": [{"field": "status", "error": reason(exc)}],
                                "allowed": sorted(s.value for s in ALLOWED[frm])}
    assert to.value in reason(exc)


def test_snooze_without_snooze_is_422():
    with pytest.raises(Invalid) as exc:
        transition(new_state(), SNOOZED, ALICE, T0, SLA)
    assert_refused(exc, 422, field="snooze")
    assert exc.value.body() == {"errors": [{"field": "snooze", "error": reason(exc)}]}


@pytest.mark.parametrize("until", [T0 - timedelta(seconds=1), T0], ids=["past", "now"])
def test_snooze_until_not_in_the_future_is_422(until):
    with pytest.raises(Invalid) as exc:
        transition(new_state(), SNOOZED, ALICE, T0, SLA, snooze=Snooze(until=until, until_event="StockChanged"))
    assert_refused(exc, 422, field="snooze.until")
    assert until.isoformat() in reason(exc)


def test_snooze_until_event_only_needs_no_time():
    state = new_state()
    change = transition(state, SNOOZED, ALICE, T0, SLA, snooze=Snooze(until_event="StockChanged"))
    assert change.after.status is SNOOZED and change.after.sla_due_at is None


def test_resolve_without_resolution_is_422():
    with pytest.raises(Invalid) as exc:
        transition(new_state(), RESOLVED, ALICE, T0, SLA)
    assert_refused(exc, 422, field="resolution")


def test_a_person_may_not_resolve_automatically():
    automatic = Resolution(reason=ResolutionReason.FIXED, automatic=True, evidence=uid(9))
    with pytest.raises(Invalid) as exc:
        transition(new_state(), RESOLVED, ALICE, T0, SLA, resolution=automatic)
    assert_refused(exc, 422, field="resolution.automatic")
    # the system may
    change = transition(new_state(), RESOLVED, SYSTEM, T0, SLA, resolution=automatic)
    assert change.after.resolution == automatic


def test_other_without_a_note_is_refused_by_the_resolution_model():
    for note in (None, "", "   "):
        with pytest.raises(ValidationError, match="note"):
            Resolution(reason=ResolutionReason.OTHER, note=note)
    assert Resolution(reason=ResolutionReason.OTHER, note="customer asked").note == "customer asked"


def test_automatic_resolution_needs_evidence_at_the_model():
    with pytest.raises(ValidationError, match="evidence"):
        Resolution(reason=ResolutionReason.FIXED, automatic=True)


def test_transition_to_the_same_status_is_409_with_allowed():
    for status in STATUSES:
        with pytest.raises(Conflict) as exc:
            transition(state_in(status), status, ALICE, T0 + timedelta(minutes=5), SLA, **_inputs_for(status, T0))
        assert_refused(exc, 409, sorted(s.value for s in ALLOWED[status]), field="status")


def test_refused_transition_is_checked_before_its_inputs():
    """Resolved -> Snoozed with no snooze: the move itself is wrong (409), not the missing snooze (422)."""
    with pytest.raises(Conflict) as exc:
        transition(state_in(RESOLVED), SNOOZED, ALICE, T0 + timedelta(minutes=5), SLA)
    assert_refused(exc, 409, [NEW.value], field="status")


def test_transition_cause_is_passed_through():
    change = transition(new_state(), IN_PROGRESS, ALICE, T0, SLA, cause="bulk request")
    assert change.cause == "bulk request"


# --- assign and edit ------------------------------------------------------------


def test_assign_reassign_and_unassign():
    state = new_state()
    first = assign(state, "bob", ALICE, T0, cause="bulk request")
    assert_change(first, state, T0)
    assert (first.kind, first.after.assignee, first.actor, first.cause) == ("assigned", "bob", ALICE, "bulk request")
    second = assign(first.after, "carol", ALICE, T0 + timedelta(minutes=1))
    assert second.after.assignee == "carol" and second.after.version == 3
    third = assign(second.after, None, ALICE, T0 + timedelta(minutes=2))
    assert third.after.assignee is None and third.after.status is NEW


def test_assign_on_resolved_is_409():
    with pytest.raises(Conflict) as exc:
        assign(state_in(RESOLVED), "bob", ALICE, T0)
    assert_refused(exc, 409, [NEW.value], field="status")


@pytest.mark.parametrize("assignee", ["bob", None])
def test_assign_to_the_same_assignee_is_409(assignee):
    state = new_state().model_copy(update={"assignee": assignee})
    with pytest.raises(Conflict) as exc:
        assign(state, assignee, ALICE, T0)
    assert_refused(exc, 409, field="assignee")


def test_edit_title_and_impact():
    state = state_in(IN_PROGRESS)
    now = T0 + timedelta(minutes=3)
    change = edit(state, {"title": "Renamed", "impact": Decimal("5")}, ALICE, now, SLA)
    assert_change(change, state, now)
    assert (change.kind, change.after.title, change.after.impact, change.actor) == (
        "updated", "Renamed", Decimal("5"), ALICE,
    )
    assert change.after.sla_due_at is None


def test_edit_severity_of_a_new_one_restarts_its_sla():
    state = new_state(Severity.LOW)
    now = T0 + timedelta(minutes=30)
    up = edit(state, {"severity": Severity.HIGH}, ALICE, now, SLA)
    assert up.after.severity is Severity.HIGH and up.after.sla_due_at == now + SLA[Severity.HIGH]
    critical = edit(state, {"severity": Severity.CRITICAL}, ALICE, now, SLA)
    assert critical.after.sla_due_at == now + SLA[Severity.CRITICAL]
    # a person may lower the severity too
    down = edit(new_state(Severity.CRITICAL), {"severity": Severity.LOW}, ALICE, now, SLA)
    assert down.after.severity is Severity.LOW and down.after.sla_due_at == now + SLA[Severity.LOW]


def test_edit_severity_of_an_in_progress_one_sets_no_sla():
    change = edit(state_in(IN_PROGRESS), {"severity": Severity.HIGH}, ALICE, T0 + timedelta(minutes=3), SLA)
    assert change.after.severity is Severity.HIGH and change.after.sla_due_at is None


def test_edit_only_changes_what_differs():
    state = new_state(Severity.LOW)
    change = edit(state, {"severity": Severity.LOW, "title": "Other"}, ALICE, T0 + timedelta(minutes=1), SLA)
    assert change.after.sla_due_at == state.sla_due_at  # severity unchanged: SLA unchanged


def test_edit_with_nothing_changed_is_422():
    state = new_state()
    with pytest.raises(Invalid) as exc:
        edit(state, {"title": state.title, "severity": state.severity}, ALICE, T0, SLA)
    assert_refused(exc, 422, field="(body)")
    with pytest.raises(Invalid) as exc:
        edit(state, {}, ALICE, T0, SLA)
    assert_refused(exc, 422, field="(body)")


@pytest.mark.parametrize("name", ["severity", "title"])
def test_edit_refuses_null_severity_or_title_naming_the_field(name):
    with pytest.raises(Invalid) as exc:
        edit(new_state(), {name: None}, ALICE, T0, SLA)
    assert_refused(exc, 422, field=name)


def test_edit_on_resolved_is_409():
    with pytest.raises(Conflict) as exc:
        edit(state_in(RESOLVED), {"title": "x"}, ALICE, T0, SLA)
    assert_refused(exc, 409, [NEW.value], field="status")


# --- escalation -----------------------------------------------------------------


def test_escalate_only_past_the_sla():
    state = new_state(Severity.LOW)
    assert escalate(state, state.sla_due_at - timedelta(seconds=1), SLA) is None
    change = escalate(state, state.sla_due_at, SLA)
    assert change is not None
    assert_change(change, state, state.sla_due_at)


def test_escalate_one_level_at_a_time_up_to_critical():
    state = new_state(Severity.LOW)
    now = T0
    seen = [state.severity]
    for n in range(1, 4):
        now = state.sla_due_at + timedelta(minutes=1)
        change = escalate(state, now, SLA)
        assert change is not None
        assert_change(change, state, now)
        assert change.kind == "escalated" and change.actor == SWEEP
        assert change.after.severity is UP[state.severity]
        assert change.after.escalations == n
        assert change.after.status is NEW
        assert change.after.sla_due_at == sla_due(change.after.severity, now, SLA)
        minutes = int(SLA[state.severity].total_seconds() // 60)
        assert "SLA" in change.cause and f"{minutes} min" in change.cause
        assert state.severity.value in change.cause and change.after.severity.value in change.cause
        state = change.after
        seen.append(state.severity)
    assert seen == [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
    assert state.sla_due_at == now + SLA[Severity.CRITICAL]


def test_a_critical_past_its_sla_is_recorded_as_breached_and_raised_again_each_period():
    """Critical cannot go higher: the breach is an escalation at Critical, counted, and the SLA starts over."""
    state = new_state(Severity.CRITICAL)
    assert state.sla_due_at == T0 + SLA[Severity.CRITICAL]
    assert escalate(state, state.sla_due_at - timedelta(seconds=1), SLA) is None
    now = state.sla_due_at + timedelta(seconds=5)
    change = escalate(state, now, SLA)
    assert change is not None
    assert_change(change, state, now)
    assert (change.kind, change.actor, change.after.status) == ("escalated", SWEEP, NEW)
    assert change.after.severity is Severity.CRITICAL and change.after.escalations == 1
    assert change.after.sla_due_at == now + SLA[Severity.CRITICAL]
    assert "SLA breached" in change.cause and "15 min" in change.cause and "Critical" in change.cause
    assert change.record().type == "ExceptionEscalated"
    assert escalate(change.after, now + timedelta(minutes=14), SLA) is None  # raised once per period
    again = escalate(change.after, now + timedelta(minutes=15), SLA)
    assert again is not None and again.after.escalations == 2 and again.after.severity is Severity.CRITICAL


def test_a_critical_picked_up_is_no_longer_raised():
    state = new_state(Severity.CRITICAL)
    started = transition(state, IN_PROGRESS, ALICE, T0 + timedelta(minutes=1), SLA).after
    assert started.sla_due_at is None
    assert escalate(started, T0 + timedelta(days=1), SLA) is None


def test_a_new_exception_without_a_due_time_gets_one_from_its_last_change():
    """Critical ones raised before Critical had an SLA: the sweep gives them one."""
    legacy = new_state(Severity.CRITICAL).model_copy(update={"sla_due_at": None})
    now = T0 + timedelta(hours=3)
    change = arm_sla(legacy, now, SLA)
    assert change is not None
    assert_change(change, legacy, now)
    assert (change.kind, change.actor) == ("updated", SWEEP)
    assert change.after.sla_due_at == legacy.updated_at + SLA[Severity.CRITICAL]
    assert escalate(change.after, now, SLA) is not None  # long past it: the next sweep raises it
    assert arm_sla(change.after, now, SLA) is None
    for status in (IN_PROGRESS, SNOOZED, RESOLVED):
        assert arm_sla(state_in(status), now, SLA) is None


@pytest.mark.parametrize("status", [IN_PROGRESS, SNOOZED, RESOLVED])
def test_only_new_escalates(status):
    state = state_in(status, Severity.LOW)
    assert escalate(state, T0 + timedelta(days=30), SLA) is None
    # even if a due date were left on it
    assert escalate(state.model_copy(update={"sla_due_at": T0}), T0 + timedelta(days=30), SLA) is None


# --- waking ---------------------------------------------------------------------


def test_wake_on_time_only_after_until():
    state = new_state(Severity.MEDIUM)
    until = T0 + timedelta(hours=2)
    snoozed = transition(state, SNOOZED, ALICE, T0, SLA, snooze=Snooze(until=until)).after
    assert wake_on_time(snoozed, until - timedelta(seconds=1), SLA) is None
    now = until + timedelta(minutes=7)
    change = wake_on_time(snoozed, now, SLA)
    assert change is not None
    assert_change(change, snoozed, now)
    assert (change.kind, change.actor, change.after.status, change.after.snooze) == ("woke", SWEEP, NEW, None)
    assert change.after.sla_due_at == now + SLA[Severity.MEDIUM]
    assert until.isoformat() in change.cause
    assert wake_on_time(snoozed, until, SLA) is not None  # at exactly until


def test_wake_on_time_ignores_a_snooze_without_a_time_and_other_statuses():
    snoozed = transition(new_state(), SNOOZED, ALICE, T0, SLA, snooze=Snooze(until_event="StockChanged")).after
    assert wake_on_time(snoozed, T0 + timedelta(days=100), SLA) is None
    for status in (NEW, IN_PROGRESS, RESOLVED):
        assert wake_on_time(state_in(status), T0 + timedelta(days=100), SLA) is None


def test_wake_on_event_only_for_the_named_type_and_the_same_entity():
    snoozed = transition(new_state(), SNOOZED, ALICE, T0, SLA, snooze=Snooze(until_event="StockChanged")).after
    now = T0 + timedelta(minutes=10)
    assert wake_on_event(snoozed, price_event(), now, SLA) is None
    assert wake_on_event(snoozed, stock_event(sku="sku-2"), now, SLA) is None
    event = stock_event(0)
    change = wake_on_event(snoozed, event, now, SLA)
    assert change is not None
    assert_change(change, snoozed, now)
    assert (change.kind, change.actor, change.after.status, change.after.snooze) == ("woke", SYSTEM, NEW, None)
    assert change.after.sla_due_at == now + SLA[Severity.LOW]
    assert str(event.id) in change.cause and "StockChanged" in change.cause


def test_wake_on_event_ignores_time_only_snoozes_and_open_ones():
    timed = transition(new_state(), SNOOZED, ALICE, T0, SLA, snooze=Snooze(until=T0 + timedelta(hours=1))).after
    assert wake_on_event(timed, stock_event(), T0, SLA) is None
    for status in (NEW, IN_PROGRESS, RESOLVED):
        assert wake_on_event(state_in(status), stock_event(), T0, SLA) is None


# --- healing --------------------------------------------------------------------


def test_heal_resolves_automatically_with_the_event_as_evidence():
    state = new_state(heal=HEAL_STOCK)
    now = T0 + timedelta(minutes=2)
    event = stock_event(7, time=T0 + timedelta(minutes=1))
    change = heal(state, event, now)
    assert change is not None
    assert_change(change, state, now)
    assert (change.kind, change.actor, change.after.status) == ("resolved", SYSTEM, RESOLVED)
    resolution = change.after.resolution
    assert resolution is not None and resolution.automatic and resolution.evidence == event.id
    assert resolution.reason is ResolutionReason.FIXED
    assert str(event.id) in resolution.note and "on_hand" in resolution.note
    assert change.after.sla_due_at is None and change.after.snooze is None
    assert reopenable(change.after)


def test_heal_only_for_the_named_event_type_and_the_same_entity():
    state = new_state(heal=HEAL_STOCK)
    assert heal(state, price_event(), T0) is None
    assert heal(state, stock_event(50, sku="sku-2"), T0) is None
    assert heal(new_state(), stock_event(50), T0) is None  # no heal condition


def test_heal_only_from_an_event_no_older_than_the_last_occurrence():
    state = new_state(heal=HEAL_STOCK, now=T0)
    assert heal(state, stock_event(50, time=T0 - timedelta(seconds=1)), T0) is None
    assert heal(state, stock_event(50, time=T0), T0) is not None  # same instant counts


def test_heal_only_when_the_value_is_at_least_the_bound():
    state = new_state(heal=HEAL_STOCK)
    assert heal(state, stock_event(4), T0) is None
    assert heal(state, stock_event(5), T0) is not None
    assert heal(state, stock_event(500), T0) is not None


def test_heal_without_a_field_needs_only_the_event():
    state = new_state(heal=HealCondition(event_type="StockChanged"))
    assert heal(state, stock_event(0), T0) is not None


def test_heal_on_a_missing_field_does_nothing():
    state = new_state(heal=HealCondition(event_type="StockChanged", field="reorder_point", at_least=Decimal(1)))
    assert heal(state, stock_event(10), T0) is None  # reorder_point absent


@pytest.mark.parametrize("status", [IN_PROGRESS, SNOOZED])
def test_heal_works_from_any_open_status(status):
    state = state_in(status, heal=HEAL_STOCK)
    change = heal(state, stock_event(10, time=T0 + timedelta(minutes=1)), T0 + timedelta(minutes=2))
    assert change is not None and change.after.status is RESOLVED and change.after.snooze is None


def test_heal_ignores_a_resolved_one():
    assert heal(state_in(RESOLVED, heal=HEAL_STOCK), stock_event(10), T0 + timedelta(minutes=5)) is None


# --- occurrences ----------------------------------------------------------------


def test_occurrence_on_an_open_one_counts_and_keeps_its_status():
    for status in (NEW, IN_PROGRESS, SNOOZED):
        state = state_in(status, Severity.LOW)
        now = T0 + timedelta(minutes=9)
        act = make_action(Severity.LOW, time=T0 + timedelta(minutes=8))
        change = occurrence(state, act, now, SLA)
        assert_change(change, state, now)
        assert (change.kind, change.actor) == ("updated", RULE_ACTOR)
        assert str(act.id) in change.cause
        assert change.after.status is status
        assert change.after.occurrences == state.occurrences + 1
        assert change.after.last_seen == act.time
        assert change.after.evidence == [*state.evidence, *act.data.evidence]
        assert change.after.sla_due_at == state.sla_due_at  # same severity: same SLA
        assert change.after.flap_count == 0


def test_occurrence_keeps_the_latest_evidence():
    state = new_state(evidence=[uid(i) for i in range(15)])
    act = make_action(evidence=[uid(i) for i in range(10, 30)])  # 10..14 already held
    after = occurrence(state, act, T0, SLA).after
    assert after.evidence == [uid(i) for i in range(30)][-EVIDENCE_KEPT:]
    assert len(after.evidence) == EVIDENCE_KEPT


def test_occurrence_last_seen_never_goes_back():
    state = new_state(now=T0)
    after = occurrence(state, make_action(time=T0 - timedelta(hours=1)), T0, SLA).after
    assert after.last_seen == T0


def test_occurrence_raises_severity_to_the_higher():
    state = new_state(Severity.LOW)
    now = T0 + timedelta(minutes=10)
    change = occurrence(state, make_action(Severity.HIGH), now, SLA)
    assert change.after.severity is Severity.HIGH
    assert change.after.sla_due_at == now + SLA[Severity.HIGH]
    critical = occurrence(state, make_action(Severity.CRITICAL), now, SLA).after
    assert critical.severity is Severity.CRITICAL and critical.sla_due_at == now + SLA[Severity.CRITICAL]


def test_occurrence_never_lowers_severity():
    state = new_state(Severity.HIGH)
    after = occurrence(state, make_action(Severity.LOW), T0 + timedelta(minutes=10), SLA).after
    assert after.severity is Severity.HIGH
    assert after.sla_due_at == state.sla_due_at


def test_occurrence_keeps_the_larger_impact_and_the_latest_callback():
    state = new_state(impact=Decimal("10"))
    assert occurrence(state, make_action(impact=Decimal("3")), T0, SLA).after.impact == Decimal("10")
    assert occurrence(state, make_action(impact=Decimal("30")), T0, SLA).after.impact == Decimal("30")
    assert occurrence(state, make_action(callback=CALLBACK), T0, SLA).after.callback == CALLBACK
    with_cb = new_state(callback=CALLBACK)
    assert occurrence(with_cb, make_action(), T0, SLA).after.callback == CALLBACK


def test_occurrence_on_an_automatically_resolved_one_reopens_it():
    state = new_state(Severity.MEDIUM, heal=HEAL_STOCK)
    healed = heal(state, stock_event(10, time=T0), T0 + timedelta(minutes=1)).after
    assert reopenable(healed)
    now = T0 + timedelta(hours=1)
    act = make_action(Severity.MEDIUM, time=now)
    change = occurrence(healed, act, now, SLA)
    assert_change(change, healed, now)
    after = change.after
    assert (change.kind, change.actor) == ("reopened", RULE_ACTOR)
    assert "came back" in change.cause and str(act.id) in change.cause
    assert (after.status, after.resolution, after.snooze) == (NEW, None, None)
    assert after.flap_count == healed.flap_count + 1 == 1
    assert after.occurrences == healed.occurrences + 1
    assert after.sla_due_at == now + SLA[Severity.MEDIUM]
    # and again
    again = heal(after, stock_event(10, time=now), now).after
    assert occurrence(again, make_action(time=now), now, SLA).after.flap_count == 2


def test_reopenable_only_for_an_automatic_resolution():
    assert not reopenable(state_in(RESOLVED))  # a person's verdict stands
    for status in (NEW, IN_PROGRESS, SNOOZED):
        assert not reopenable(state_in(status))
    automatic = Resolution(reason=ResolutionReason.FIXED, automatic=True, evidence=uid(3))
    assert reopenable(transition(new_state(), RESOLVED, SYSTEM, T0, SLA, resolution=automatic).after)


# --- payment callbacks ----------------------------------------------------------


def test_replay_without_a_callback_is_422():
    with pytest.raises(Invalid) as exc:
        replay_callback(new_state(), ALICE, T0)
    assert_refused(exc, 422, field="exception_id")


def test_replay_on_resolved_is_409():
    with pytest.raises(Conflict) as exc:
        replay_callback(state_in(RESOLVED, callback=CALLBACK), ALICE, T0 + timedelta(minutes=5))
    assert_refused(exc, 409, [NEW.value], field="status")


@pytest.mark.parametrize("status", [NEW, IN_PROGRESS, SNOOZED])
def test_replay_moves_to_in_progress_and_appends_a_replay(status):
    state = state_in(status, callback=CALLBACK)
    now = T0 + timedelta(minutes=5)
    change, replay = replay_callback(state, ALICE, now)
    assert_change(change, state, now)
    assert change.after.status is IN_PROGRESS
    assert change.kind == ("updated" if status is IN_PROGRESS else "status_changed")
    assert change.after.snooze is None and change.after.sla_due_at is None
    assert change.after.replays == [*state.replays, replay]
    assert replay.replay_id == deterministic_id("callback-replay", state.id, state.version)
    assert (replay.requested_by, replay.requested_at) == (ALICE, now)
    assert str(replay.replay_id) in change.cause
    second, replay2 = replay_callback(change.after, ALICE, now + timedelta(minutes=1))
    assert second.after.replays == [replay, replay2] and replay2.replay_id != replay.replay_id


def test_accept_callback_resolves_marking_it_accepted():
    state = state_in(IN_PROGRESS, callback=CALLBACK)
    now = T0 + timedelta(minutes=5)
    change = accept_callback(state, FIXED, ALICE, now, SLA)
    assert_change(change, state, now)
    assert change.kind == "resolved" and change.after.status is RESOLVED
    assert change.after.resolution == FIXED.model_copy(update={"callback": "accepted"})
    assert change.cause == "callback accepted as it is"
    assert not reopenable(change.after)


def test_accept_callback_failure_paths():
    with pytest.raises(Invalid) as exc:
        accept_callback(new_state(), FIXED, ALICE, T0, SLA)
    assert_refused(exc, 422, field="exception_id")
    with pytest.raises(Conflict) as exc:
        accept_callback(state_in(RESOLVED, callback=CALLBACK), FIXED, ALICE, T0 + timedelta(minutes=5), SLA)
    assert_refused(exc, 409, [NEW.value], field="status")
    automatic = Resolution(reason=ResolutionReason.FIXED, automatic=True, evidence=uid(3))
    with pytest.raises(Invalid) as exc:
        accept_callback(new_state(callback=CALLBACK), automatic, ALICE, T0, SLA)
    assert_refused(exc, 422, field="resolution.automatic")


# --- change records -------------------------------------------------------------


@pytest.mark.parametrize("kind", get_args(ChangeKind))
def test_record_one_type_per_kind(kind):
    state = new_state()
    after = state.model_copy(update={"version": 2, "updated_at": T0 + timedelta(minutes=1)})
    record = Change(kind, state, after, SYSTEM, "because").record()
    assert type(record) is CHANGE_RECORDS[kind]
    assert record.type == CHANGE_RECORDS[kind].__name__
    assert record.data.kind == kind
    assert EXCEPTIONS.decode(EXCEPTIONS.encode(record)[1]) == record


def test_record_kinds_map_to_distinct_types():
    assert set(CHANGE_RECORDS) == set(get_args(ChangeKind))
    assert len(set(CHANGE_RECORDS.values())) == len(CHANGE_RECORDS)


def test_record_envelope_and_data():
    change = transition(new_state(), IN_PROGRESS, ALICE, T0 + timedelta(minutes=1), SLA)
    record = change.record()
    after = change.after
    assert record.id == deterministic_id("exception-change", after.id, after.version)
    assert record.subject == str(after.id)
    assert record.source == "storeops/exceptions"
    assert record.time == after.updated_at
    assert record.causation_id is None and record.correlation_id is None
    assert record.data.exception_id == after.id
    assert (record.data.before, record.data.after) == (change.before, after)
    assert (record.data.actor, record.data.cause) == (ALICE, "request")
    key, _ = EXCEPTIONS.encode(record)
    assert key == str(after.id).encode()


def test_record_id_is_deterministic_per_exception_and_version():
    state = new_state()
    a = Change("updated", state, state.model_copy(update={"version": 2}), SYSTEM, "x").record()
    b = Change("assigned", state, state.model_copy(update={"version": 2, "assignee": "z"}), ALICE, "y").record()
    c = Change("updated", state, state.model_copy(update={"version": 3}), SYSTEM, "x").record()
    assert a.id == b.id != c.id
    other = new_state()
    d = Change("updated", other, other.model_copy(update={"version": 2}), SYSTEM, "x").record()
    assert d.id != a.id


def test_record_chains_causation():
    root = make_action(correlation_id=None)
    change = create_from_action(root, T0, SLA)
    record = change.record(caused_by=root)
    assert (record.causation_id, record.correlation_id) == (root.id, root.id)
    assert record.data.before is None and record.type == "ExceptionCreated"
    chained = make_action(correlation_id=uid(77))
    record = create_from_action(chained, T0, SLA).record(caused_by=chained)
    assert (record.causation_id, record.correlation_id) == (chained.id, uid(77))
    event = stock_event(10)
    record = heal(new_state(heal=HEAL_STOCK), event, T0).record(caused_by=event)
    assert (record.causation_id, record.correlation_id, record.type) == (event.id, event.id, "ExceptionResolved")


def test_refusals_are_platform_errors_in_the_one_shape():
    with pytest.raises(Conflict) as exc:
        assign(state_in(RESOLVED), "bob", ALICE, T0)
    assert exc.value.body() == {"errors": [{"field": "status", "error": reason(exc)}], "allowed": ["New"]}
    assert status_of(exc.value) == 409
    with pytest.raises(Invalid) as invalid:
        edit(new_state(), {"title": None}, ALICE, T0, SLA)
    assert invalid.value.body() == {"errors": [{"field": "title", "error": reason(invalid)}]}
    assert status_of(invalid.value) == 422


# --- property-based: random walks through the workflow ---------------------------

PEOPLE = st.sampled_from([ALICE, Actor(kind="person", name="bob")])
ACTORS = st.one_of(PEOPLE, st.just(SYSTEM))
SEVERITIES = st.sampled_from(list(Severity))
EVENT_TYPES = st.sampled_from(["StockChanged", "PriceChanged"])
SUBJECTS = st.sampled_from([SKU, SKU, "sku-2"])
REASONS = st.sampled_from([r for r in ResolutionReason if r is not ResolutionReason.OTHER])


@st.composite
def snoozes(draw) -> tuple[str, timedelta, str]:
    """(shape, offset of until from now, until_event): built against the clock when the step runs."""
    shape = draw(st.sampled_from(["none", "future", "past", "event", "both"]))
    offset = draw(st.integers(min_value=1, max_value=3 * 24 * 60).map(lambda m: timedelta(minutes=m)))
    event = draw(EVENT_TYPES)
    return shape, offset, event


@st.composite
def resolutions(draw) -> Resolution | None:
    kind = draw(st.sampled_from(["none", "person", "other", "automatic"]))
    if kind == "none":
        return None
    if kind == "other":
        return Resolution(reason=ResolutionReason.OTHER, note="see ticket")
    if kind == "automatic":
        return Resolution(reason=ResolutionReason.FIXED, automatic=True, evidence=uuid.uuid4())
    return Resolution(reason=draw(REASONS))


def _snooze(spec: tuple[str, timedelta, str], now: datetime) -> Snooze | None:
    shape, offset, event = spec
    if shape == "none":
        return None
    if shape == "future":
        return Snooze(until=now + offset)
    if shape == "past":
        return Snooze(until=now - offset)
    if shape == "event":
        return Snooze(until_event=event)
    return Snooze(until=now + offset, until_event=event)


class Workflow(RuleBasedStateMachine):
    """One exception, its clock, and every operation the queue may apply to it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.state: ExceptionState | None = None
        self.ops = 0

    @initialize(
        severity=SEVERITIES,
        healable=st.booleans(),
        with_callback=st.booleans(),
        by_person=st.booleans(),
    )
    def create(self, severity, healable, with_callback, by_person):
        if by_person:
            fields = {"type": ExceptionType.INVENTORY, "severity": severity, "title": "by hand",
                      "entity_type": EntityType.SKU, "entity_id": SKU, "heal": HEAL_STOCK if healable else None,
                      "callback": CALLBACK if with_callback else None}
            change = create_by_person(fields, ALICE, self.now, SLA)
        else:
            act = make_action(severity, heal=HEAL_STOCK if healable else None,
                              callback=CALLBACK if with_callback else None)
            change = create_from_action(act, self.now, SLA)
        assert change.before is None and change.after.version == 1
        self.state = change.after

    # -- the harness: every operation goes through here --

    def apply(self, op, *, must_succeed: bool = False, person_edit: bool = False) -> Change | None:
        before = self.state
        try:
            result = op(before)
        except StoreopsError as exc:
            assert not must_succeed, f"refused a valid move: {exc} (from {before.status.value})"
            assert isinstance(exc, (Conflict, Invalid)), f"the workflow refuses with Conflict or Invalid, not {exc!r}"
            event(f"refused {status_of(exc)}")
            assert status_of(exc) in (409, 422)
            assert exc.errors and all(e["field"] and e["error"] for e in exc.errors), "every refusal names its field"
            allowed = exc.extra.get("allowed")
            if allowed is not None:
                assert isinstance(exc, Conflict) and allowed == sorted(allowed)
                assert set(allowed) == {s.value for s in ALLOWED[before.status]} or allowed == [NEW.value]
            assert self.state is before  # nothing changed
            return None
        change = result[0] if isinstance(result, tuple) else result
        if change is None:
            assert not must_succeed
            return None
        self.check_change(change, before, person_edit)
        event(f"{change.kind} by {change.actor.kind}: {before.status.value} -> {change.after.status.value}")
        self.state = change.after
        self.ops += 1
        return change

    def check_change(self, change: Change, before: ExceptionState, person_edit: bool) -> None:
        after = change.after
        assert change.before == before
        assert after.id == before.id
        assert after.version == before.version + 1
        assert after.updated_at == self.now
        assert after.created_at == before.created_at and after.first_seen == before.first_seen
        assert after.occurrences >= before.occurrences
        assert after.flap_count >= before.flap_count
        assert after.escalations >= before.escalations
        assert after.last_seen >= before.last_seen
        if not person_edit:
            assert after.severity.rank <= before.severity.rank, "severity went down"
        # the kind tells the truth
        kind = change.kind
        if kind == "snoozed":
            assert after.status is SNOOZED
        if kind == "resolved":
            assert after.status is RESOLVED and before.status is not RESOLVED
        if kind == "reopened":
            assert before.status is RESOLVED and after.status is NEW
        if kind == "woke":
            assert before.status is SNOOZED and after.status is NEW and change.actor in (SYSTEM, SWEEP)
        if kind == "escalated":
            assert after.severity is UP.get(before.severity, Severity.CRITICAL)
            assert after.escalations == before.escalations + 1
            assert after.sla_due_at == self.now + SLA[after.severity]
        if kind == "assigned":
            assert after.assignee != before.assignee
        if kind == "status_changed":
            assert after.status is not before.status
        if after.status is not before.status:
            assert after.status in ALLOWED[before.status], f"{before.status} -> {after.status} is not allowed"
        # still a valid state and a valid record
        ExceptionState.model_validate(after.model_dump())
        record = change.record()
        assert type(record) is CHANGE_RECORDS[kind]
        assert record.id == deterministic_id("exception-change", after.id, after.version)

    # -- the clock --

    @rule(minutes=st.integers(min_value=0, max_value=3 * 24 * 60))
    def tick(self, minutes):
        self.now += timedelta(minutes=minutes)

    @rule(minutes=st.integers(min_value=1, max_value=3 * 24 * 60))
    def tick_and_sweep(self, minutes):
        """Time passes, then the sweep runs as the queue's does: escalate, else wake."""
        self.now += timedelta(minutes=minutes)
        s = self.state
        due = (s.status is NEW and s.sla_due_at is not None and s.sla_due_at <= self.now) or (
            s.status is SNOOZED and s.snooze.until is not None and s.snooze.until <= self.now
        )
        change = self.apply(
            lambda s: escalate(s, self.now, SLA) or wake_on_time(s, self.now, SLA), must_succeed=due
        )
        assert (change is not None) == due

    # -- people --

    @rule(to=st.sampled_from(STATUSES), snooze=snoozes(), resolution=resolutions(), actor=ACTORS)
    def move(self, to, snooze, resolution, actor):
        sn = _snooze(snooze, self.now)
        status = self.state.status
        snooze_ok = sn is not None and (sn.until is None or sn.until > self.now)
        resolution_ok = resolution is not None and (not resolution.automatic or actor.kind == "system")
        valid = to in ALLOWED[status] and (to is not SNOOZED or snooze_ok) and (to is not RESOLVED or resolution_ok)
        change = self.apply(
            lambda s: transition(s, to, actor, self.now, SLA, snooze=sn, resolution=resolution), must_succeed=valid
        )
        if change is not None:
            assert change.after.status is to
            assert valid

    @rule(
        to=st.sampled_from(STATUSES),
        snooze=st.tuples(
            st.sampled_from(["future", "event", "both"]),
            st.integers(min_value=1, max_value=3 * 24 * 60).map(lambda m: timedelta(minutes=m)),
            EVENT_TYPES,
        ),
        reason=REASONS,
        actor=PEOPLE,
    )
    def move_with_valid_inputs(self, to, snooze, reason, actor):
        """The same move with the inputs it needs, so walks reach every status often."""
        sn = _snooze(snooze, self.now)
        valid = to in ALLOWED[self.state.status]
        change = self.apply(
            lambda s: transition(s, to, actor, self.now, SLA, snooze=sn, resolution=Resolution(reason=reason)),
            must_succeed=valid,
        )
        assert (change is not None) == valid

    @rule(assignee=st.sampled_from(["ann", "bob", None]), actor=PEOPLE)
    def assign_to(self, assignee, actor):
        valid = self.state.status is not RESOLVED and assignee != self.state.assignee
        change = self.apply(lambda s: assign(s, assignee, actor, self.now), must_succeed=valid)
        assert (change is not None) == valid

    @rule(
        severity=st.none() | SEVERITIES,
        title=st.none() | st.sampled_from(["one", "two"]),
        impact=st.none() | st.sampled_from([Decimal("1"), Decimal("250.5")]),
    )
    def edit_fields(self, severity, title, impact):
        fields = {k: v for k, v in {"severity": severity, "title": title, "impact": impact}.items() if v is not None}
        valid = self.state.status is not RESOLVED and any(getattr(self.state, k) != v for k, v in fields.items())
        change = self.apply(lambda s: edit(s, fields, ALICE, self.now, SLA), must_succeed=valid, person_edit=True)
        assert (change is not None) == valid

    @rule(actor=PEOPLE)
    def replay(self, actor):
        valid = self.state.callback is not None and self.state.status is not RESOLVED
        change = self.apply(lambda s: replay_callback(s, actor, self.now), must_succeed=valid)
        assert (change is not None) == valid
        if change is not None:
            assert change.after.status is IN_PROGRESS and len(change.after.replays) == len(change.before.replays) + 1

    @rule(resolution=resolutions(), actor=PEOPLE)
    def accept(self, resolution, actor):
        if resolution is None:
            return
        valid = self.state.callback is not None and self.state.status is not RESOLVED and not resolution.automatic
        change = self.apply(lambda s: accept_callback(s, resolution, actor, self.now, SLA), must_succeed=valid)
        assert (change is not None) == valid

    # -- the system --

    @rule()
    def sweep(self):
        s = self.state
        due = s.status is NEW and s.sla_due_at is not None and s.sla_due_at <= self.now
        change = self.apply(lambda s: escalate(s, self.now, SLA), must_succeed=due)
        assert (change is not None) == due

    @rule()
    def wake_by_time(self):
        s = self.state
        due = s.status is SNOOZED and s.snooze.until is not None and s.snooze.until <= self.now
        change = self.apply(lambda s: wake_on_time(s, self.now, SLA), must_succeed=due)
        assert (change is not None) == due

    @rule(event_type=EVENT_TYPES, subject=SUBJECTS)
    def event_arrives(self, event_type, subject):
        event = stock_event(3, sku=subject, time=self.now) if event_type == "StockChanged" else price_event(
            sku=subject, time=self.now
        )
        s = self.state
        due = s.status is SNOOZED and s.snooze.until_event == event_type and subject == SKU
        change = self.apply(lambda s: wake_on_event(s, event, self.now, SLA), must_succeed=due)
        assert (change is not None) == due

    @rule(on_hand=st.integers(min_value=0, max_value=10), subject=SUBJECTS, late=st.integers(0, 120), old=st.booleans())
    def stock_arrives(self, on_hand, subject, late, old):
        time = self.state.last_seen - timedelta(minutes=late) if old else self.now
        event = stock_event(on_hand, sku=subject, time=time)
        s = self.state
        heals = (
            s.heal is not None and s.status is not RESOLVED and subject == SKU and time >= s.last_seen
            and on_hand >= 5
        )
        change = self.apply(lambda s: heal(s, event, self.now), must_succeed=heals)
        assert (change is not None) == heals
        if change is not None:
            assert change.after.resolution.automatic and change.after.resolution.evidence == event.id

    @rule(on_hand=st.integers(min_value=5, max_value=10))
    def stock_restored(self, on_hand):
        event = stock_event(on_hand, time=self.now)
        s = self.state
        heals = s.heal is not None and s.status is not RESOLVED and event.time >= s.last_seen
        change = self.apply(lambda s: heal(s, event, self.now), must_succeed=heals)
        assert (change is not None) == heals

    @precondition(lambda self: self.state is not None and (self.state.status in OPEN or reopenable(self.state)))
    @rule(severity=SEVERITIES, n=st.integers(min_value=1, max_value=25), late=st.integers(-60, 60))
    def occurs_again(self, severity, n, late):
        """As the queue does: only an open exception or an automatically resolved one gets the occurrence."""
        act = make_action(severity, evidence=[uuid.uuid4() for _ in range(n)], time=self.now + timedelta(minutes=late))
        before = self.state
        change = self.apply(lambda s: occurrence(s, act, self.now, SLA), must_succeed=True)
        after = change.after
        assert after.occurrences == before.occurrences + 1
        assert after.severity.rank == min(before.severity.rank, severity.rank)
        assert after.evidence == [*before.evidence, *act.data.evidence][-EVIDENCE_KEPT:]
        if before.status is RESOLVED:
            assert change.kind == "reopened" and after.flap_count == before.flap_count + 1
        else:
            assert after.status is before.status and after.flap_count == before.flap_count

    # -- invariants, after every step --

    @invariant()
    def consistent(self):
        s = self.state
        if s is None:
            return
        assert s.status in STATUSES
        assert s.version == 1 + self.ops
        assert (s.status is RESOLVED) == (s.resolution is not None)
        assert (s.status is SNOOZED) == (s.snooze is not None)
        if s.sla_due_at is not None:
            assert s.status is NEW
        if s.status is NEW:
            assert s.sla_due_at is not None, "a New exception with no SLA would never escalate"
            assert arm_sla(s, self.now, SLA) is None
        if s.resolution is not None and s.resolution.automatic:
            assert s.resolution.evidence is not None
        assert s.occurrences >= 1 and s.flap_count >= 0 and s.escalations >= 0
        assert len(s.evidence) <= EVIDENCE_KEPT


Workflow.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestWorkflow = Workflow.TestCase
